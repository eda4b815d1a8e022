"""The deployment files: docker-compose.yml and the Dockerfile, checked without Docker.

No Docker engine runs here, so these tests read the files: the compose file
parses, names real settings with values they accept, publishes the port the
server listens on and mounts the volume where the data directory is; and
``docker-compose config -q`` (the compose CLI's own validation) accepts it.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from resumable.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SETTING_VARIABLES = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def environment(services: dict) -> dict[str, str]:
    return as_mapping(services["resumable"].get("environment", {}))


def as_mapping(environment: dict | list) -> dict[str, str]:
    """Compose allows ``{NAME: value}`` and ``["NAME=value"]``; values become text."""
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {name: value for name, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def published_ports(service: dict) -> list[tuple[int, int]]:
    """(host port, container port) of each short-syntax ``ports`` entry."""
    result = []
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"port {entry!r} must publish host:container"
        result.append((int(parts[-2]), int(parts[-1])))
    return result


def volume_mounts(service: dict) -> dict[str, str]:
    """Container path → source of each short-syntax volume."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        mounts[target] = source
    return mounts


# --------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------


def test_compose_has_redis_and_server(services: dict) -> None:
    assert {"redis", "resumable"} <= set(services)


def test_redis_keeps_an_append_only_file_on_its_own_volume(compose: dict, services: dict) -> None:
    redis = services["redis"]
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].startswith("7")
    command = redis["command"]
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    assert "--appendonly" in words
    assert words[words.index("--appendonly") + 1] == "yes"
    mounts = volume_mounts(redis)
    assert "/data" in mounts, "redis:7 writes its append-only file to /data"
    assert mounts["/data"] in compose.get("volumes", {}), "redis data needs a named volume"
    assert mounts["/data"] not in volume_mounts(services["resumable"]).values()


def test_server_is_built_here_and_starts_after_redis(services: dict) -> None:
    server = services["resumable"]
    build = server["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context / "Dockerfile").is_file()
    depends_on = server["depends_on"]
    assert "redis" in (depends_on if isinstance(depends_on, list) else list(depends_on))


def test_every_variable_is_a_real_setting(environment: dict[str, str]) -> None:
    assert environment, "the server service sets no environment"
    named = {name for name in environment if name.startswith(ENV_PREFIX)}
    assert named, "no RESUMABLE_* variable in the compose file"
    unknown = named - SETTING_VARIABLES
    assert not unknown, f"not settings: {sorted(unknown)}; real ones: {sorted(SETTING_VARIABLES)}"


def test_variables_have_values_settings_accept(environment: dict[str, str]) -> None:
    settings = Settings.load(environ=environment)
    assert settings.host == "0.0.0.0", "inside a container the server must listen on all addresses"
    assert settings.redis_url, "the compose deployment shares state through Redis"


def test_redis_url_points_at_the_redis_service(environment: dict[str, str]) -> None:
    url = environment[ENV_PREFIX + "REDIS_URL"]
    assert url.startswith("redis://redis:6379"), url


def test_published_port_is_the_port_the_server_listens_on(
    services: dict, environment: dict[str, str]
) -> None:
    port = Settings.load(environ=environment).port
    ports = published_ports(services["resumable"])
    assert (1080, 1080) in ports
    assert port in [container for _host, container in ports]


def test_data_dir_is_the_mounted_volume(
    compose: dict, services: dict, environment: dict[str, str]
) -> None:
    data_dir = Settings.load(environ=environment).data_dir
    mounts = volume_mounts(services["resumable"])
    assert mounts.get(data_dir) == "uploads", f"{data_dir} is not where uploads is mounted"
    assert "uploads" in compose.get("volumes", {}), "uploads must be a declared named volume"


def test_docker_compose_accepts_the_file() -> None:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.skip("docker-compose is not installed (scripts/test installs it)")
    result = subprocess.run(
        [executable, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_env() -> dict[str, str]:
    environment: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                environment[name] = value
    return environment


def test_dockerfile_base_image_user_and_command() -> None:
    instructions = dockerfile_instructions()
    values = {keyword: arguments for keyword, arguments in instructions}
    assert values["FROM"] == "python:3.11-slim"
    assert values["USER"] not in ("root", "0")
    assert values["EXPOSE"] == "1080"
    command = yaml.safe_load(values["CMD"])  # the exec form is a JSON (so YAML) list
    assert command[:2] == ["resumable", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert any(k == "RUN" and "pip install ." in a for k, a in instructions)


def test_dockerfile_copies_what_pip_install_needs() -> None:
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            for source in shlex.split(arguments)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"


def test_dockerfile_variables_are_settings_and_match_the_volume() -> None:
    environment = dockerfile_env()
    named = {name for name in environment if name.startswith(ENV_PREFIX)}
    assert named <= SETTING_VARIABLES, sorted(named - SETTING_VARIABLES)
    settings = Settings.load(environ={name: environment[name] for name in named})
    volumes = [a for k, a in dockerfile_instructions() if k == "VOLUME"]
    assert volumes and settings.data_dir in yaml.safe_load(volumes[0])
    assert str(settings.port) == dict(dockerfile_instructions())["EXPOSE"]
