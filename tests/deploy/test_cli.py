"""The command line and its settings: help, environment, flags, bad values, README.

Flags and environment variables are both generated from the fields of
:class:`resumable.settings.Settings`; these tests hold the CLI and the
README to that one list.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from resumable.cli import build_parser, settings_environment, settings_from_args
from resumable.filestore import FileStore
from resumable.protocol import new_upload_id
from resumable.records import UploadRecord
from resumable.settings import ENV_PREFIX, Settings

from ..support import ROOT, free_port

README = ROOT / "README.md"

FIELDS = dataclasses.fields(Settings)
DOCUMENTED_FLAGS = (
    "--host",
    "--port",
    "--data-dir",
    "--redis-url",
    "--base-path",
    "--workers",
    "--max-size",
    "--lock-ttl",
    "--trust-proxy",
)


def flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def variable(f: dataclasses.Field) -> str:
    return ENV_PREFIX + f.name.upper()


def clean_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any RESUMABLE_* variable, plus ``variables``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    environment.update(variables)
    return environment


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m resumable ARGS``; a server started by mistake is killed with its children."""
    command = [sys.executable, "-m", "resumable", *args]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=clean_environment() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command} was still running after 30 s:\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


# --------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------


def test_top_level_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout


def test_serve_help_documents_every_flag_and_variable() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    for name in DOCUMENTED_FLAGS:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name
    for f in FIELDS:
        assert flag(f) in text, flag(f)
        assert variable(f) in text.replace(" ", ""), variable(f)


# --------------------------------------------------------------------------
# Environment and flags
# --------------------------------------------------------------------------


def parse(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_without_environment_or_flags(no_settings_env: pytest.MonkeyPatch) -> None:
    assert parse() == Settings()


def test_environment_is_read(no_settings_env: pytest.MonkeyPatch) -> None:
    no_settings_env.setenv("RESUMABLE_PORT", "8081")
    no_settings_env.setenv("RESUMABLE_DATA_DIR", "/srv/uploads")
    no_settings_env.setenv("RESUMABLE_REDIS_URL", "redis://cache:6379/2")
    no_settings_env.setenv("RESUMABLE_LOCK_TTL", "12.5")
    no_settings_env.setenv("RESUMABLE_TRUST_PROXY", "yes")
    no_settings_env.setenv("RESUMABLE_BASE_PATH", "uploads")
    settings = parse()
    assert settings.port == 8081
    assert settings.data_dir == "/srv/uploads"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.lock_ttl == 12.5
    assert settings.trust_proxy is True
    assert settings.base_path == "/uploads/"


def test_load_reads_a_given_environment() -> None:
    settings = Settings.load(environ={"RESUMABLE_WORKERS": "4", "RESUMABLE_MAX_SIZE": "1000"})
    assert (settings.workers, settings.max_size) == (4, 1000)


def test_flags_override_environment(no_settings_env: pytest.MonkeyPatch) -> None:
    no_settings_env.setenv("RESUMABLE_PORT", "8081")
    no_settings_env.setenv("RESUMABLE_HOST", "0.0.0.0")
    no_settings_env.setenv("RESUMABLE_TRUST_PROXY", "true")
    settings = parse("--port", "9090", "--no-trust-proxy")
    assert settings.port == 9090
    assert settings.trust_proxy is False
    assert settings.host == "0.0.0.0", "a setting without a flag still comes from the environment"


def test_boolean_flag_turns_on(no_settings_env: pytest.MonkeyPatch) -> None:
    no_settings_env.setenv("RESUMABLE_TRUST_PROXY", "false")
    assert parse("--trust-proxy").trust_proxy is True


def test_empty_redis_url_means_the_embedded_registry(no_settings_env: pytest.MonkeyPatch) -> None:
    no_settings_env.setenv("RESUMABLE_REDIS_URL", "")
    assert parse().redis_url is None


# --------------------------------------------------------------------------
# Bad values: a usage error, never a traceback
# --------------------------------------------------------------------------


def assert_usage_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "name, value",
    [
        ("RESUMABLE_PORT", "abc"),
        ("RESUMABLE_WORKERS", "two"),
        ("RESUMABLE_LOCK_TTL", "soon"),
        ("RESUMABLE_TRUST_PROXY", "maybe"),
        ("RESUMABLE_CHUNK_SIZE", "100"),
        ("RESUMABLE_LOCK_TTL", "0"),
        ("RESUMABLE_REDIS_URL", "http://cache:6379"),
        ("RESUMABLE_REDIS_URL", "redis+sentinel://cache:26379"),
        ("RESUMABLE_REDIS_URL", "redis+cluster://cache:7000/1"),
        ("RESUMABLE_REDIS_PREFIX", "app{1}:"),
        ("RESUMABLE_CHECKSUM_TRAILER", "sometimes"),
    ],
)
def test_bad_environment_value_is_a_clean_error(name: str, value: str, tmp_path: Path) -> None:
    env = clean_environment(RESUMABLE_PORT=str(free_port()), RESUMABLE_DATA_DIR=str(tmp_path))
    env[name] = value
    assert_usage_error(run_cli("serve", env=env))


@pytest.mark.parametrize("argv", [["--port", "abc"], ["--max-size", "1.5"], ["--lock-ttl", "x"]])
def test_bad_flag_value_is_a_clean_error(argv: list[str]) -> None:
    assert_usage_error(run_cli("serve", *argv))


def test_bad_environment_value_names_the_variable() -> None:
    result = run_cli("serve", env=clean_environment(RESUMABLE_PORT="abc"))
    assert_usage_error(result)
    assert re.search(r"RESUMABLE_PORT|\bport\b", result.stderr.splitlines()[-1]), result.stderr


def test_port_out_of_range_is_a_clean_error(tmp_path: Path) -> None:
    env = clean_environment(RESUMABLE_PORT="99999", RESUMABLE_DATA_DIR=str(tmp_path))
    assert_usage_error(run_cli("serve", env=env))


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def code_lines(markdown: str) -> list[str]:
    """Non-blank, non-comment lines of the fenced code blocks."""
    lines: list[str] = []
    for block in re.findall(r"^```[\w-]*\n(.*?)^```", markdown, re.M | re.S):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip() and ln[:1] != "#"]
    return lines


def test_quick_start_is_two_executable_commands() -> None:
    commands = code_lines(readme_section("Quick start"))
    assert commands == ["scripts/serve", "scripts/test"], commands
    for command in commands:
        path = ROOT / command
        assert path.is_file(), command
        assert os.access(path, os.X_OK), f"{command} is not executable"


def test_ci_runs_the_quick_start_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def format_default(f: dataclasses.Field) -> str:
    """A default as the README's configuration table shows it."""
    value = f.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def test_readme_documents_every_setting() -> None:
    """One table row per setting: | `--flag` … | `RESUMABLE_…` | default | meaning |."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in readme_section("Configuration").splitlines()
        if line.startswith("| `--")
    ]
    by_variable = {row[1].strip("`"): row for row in rows}
    assert len(rows) == len(FIELDS), "the table and Settings have different sizes"
    for f in FIELDS:
        row = by_variable.get(variable(f))
        assert row is not None, f"{variable(f)} is not in the README's configuration table"
        assert f"`{flag(f)}`" in row[0], (flag(f), row)
        assert row[2] == format_default(f), (f.name, row[2], format_default(f))


def test_readme_lists_the_offered_extensions() -> None:
    from resumable.views import EXTENSIONS

    section = readme_section("Supported extensions")
    offered = set(re.findall(r"^[-*] `([a-z-]+)`", section, re.M))
    assert offered == set(EXTENSIONS), (sorted(offered), EXTENSIONS)


# --------------------------------------------------------------------------
# Paths, and what serve and gc say at start
# --------------------------------------------------------------------------


def test_relative_data_dir_is_resolved_once(
    no_settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every layer (and the gc child) must see one absolute path, not a relative one."""
    no_settings_env.chdir(tmp_path)
    assert parse().data_dir == str(tmp_path / "data")
    assert parse("--data-dir", "uploads/../store").data_dir == str(tmp_path / "store")
    no_settings_env.setenv("RESUMABLE_DATA_DIR", "elsewhere")
    settings = parse()
    assert settings.data_dir == str(tmp_path / "elsewhere")
    no_settings_env.chdir(ROOT)  # what a child process started later would see
    child = Settings.load(environ=settings_environment(settings))
    assert child.data_dir == str(tmp_path / "elsewhere")


def test_data_dir_mode_must_be_octal() -> None:
    assert Settings(data_dir_mode="0750").data_dir_permissions == 0o750
    assert Settings(data_dir_mode="750").data_dir_permissions == 0o750
    for bad in ("0800", "rwx", "07777", ""):
        with pytest.raises(ValueError, match="data_dir_mode"):
            Settings(data_dir_mode=bad)


def serve_until_ready(
    *args: str, env: dict[str, str], cwd: Path, preexec_fn: Callable[[], None] | None = None
) -> tuple[str, int]:
    """Start ``resumable serve``, wait until it answers, stop it: its log and port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "resumable", "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        preexec_fn=preexec_fn,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    statuses = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                options = requests.options(f"http://127.0.0.1:{port}/files/", timeout=1)
                create = requests.post(
                    f"http://127.0.0.1:{port}/files/",
                    headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1"},
                    timeout=10,
                )
                statuses = [options.status_code, create.status_code, create.text]
                break
            except requests.RequestException:
                time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert statuses, output
    return output, statuses


def test_serve_says_where_it_listens_what_registry_and_where_the_data_is(tmp_path: Path) -> None:
    output, statuses = serve_until_ready(env=clean_environment(), cwd=tmp_path)
    assert statuses[:2] == [204, 201], (statuses, output)
    assert re.search(r"tus endpoint http://127\.0\.0\.1:\d+/files/", output), output
    assert "registry: embedded" in output, output
    assert f"data: {tmp_path / 'data'}" in output, output


def test_serve_raises_its_open_files_limit_and_says_when_it_is_short(tmp_path: Path) -> None:
    """Started with a soft limit of 256 under a hard one of 1024 (as many systems start
    services, with 1024 over a far higher hard limit), it takes the hard limit and says
    how many streaming uploads that holds."""

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))

    output, statuses = serve_until_ready(
        "--threads", "400", env=clean_environment(), cwd=tmp_path, preexec_fn=low_limit
    )
    assert statuses[:2] == [204, 201], (statuses, output)
    assert "the open files limit (1024) holds about 149 streaming uploads per worker" in output
    assert "fewer than --threads 400" in output, output


def test_serve_with_redis_down_warns_once_and_answers_503(tmp_path: Path) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    output, statuses = serve_until_ready("--redis-url", url, env=clean_environment(), cwd=tmp_path)
    warnings = [line for line in output.splitlines() if "unreachable" in line]
    assert len(warnings) == 1, output
    assert "503" in warnings[0], warnings
    assert "registry: Redis at redis://:***@127.0.0.1" in output, output
    assert "secret" not in output
    assert "Traceback" not in output, output
    assert statuses[0] == 204 and statuses[1] == 503, (statuses, output)


def test_gc_with_redis_down_is_one_line(tmp_path: Path) -> None:
    """With an upload to look at (its record would be read from Redis) and with none."""
    store = FileStore(tmp_path / "with-upload")
    record = UploadRecord(id=new_upload_id(), length=10, created=1.0)
    store.create(record.id).close()
    store.write_record(record)
    url = f"redis://127.0.0.1:{free_port()}/0"
    for data_dir in (store.root, tmp_path / "empty"):
        result = run_cli("gc", "--redis-url", url, "--data-dir", str(data_dir))
        assert_one_line_failure(result)


def assert_one_line_failure(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resumable gc: the registry is unreachable"), (
        result.stderr
    )


def test_checksum_trailer_is_offered_unless_a_proxy_is_trusted() -> None:
    """Proxies such as nginx drop request trailers: auto offers it only to direct clients."""
    assert Settings().offers_checksum_trailer
    assert not Settings(trust_proxy=True).offers_checksum_trailer
    assert Settings(trust_proxy=True, checksum_trailer="on").offers_checksum_trailer
    assert not Settings(checksum_trailer="off").offers_checksum_trailer
