"""The README's curl walk-through, run as a newcomer runs it.

``resumable serve`` starts with no flags and no ``RESUMABLE_*`` variables, in
a fresh working directory (so the data lives in the default, relative
``./data``), and every command of the README's walk-through runs as written
with the system's ``curl``. Each answer must match the README: the status
line, the header lines (in order; those the README says it leaves out are
dropped, and values that differ on every run, such as ids and dates, are
checked by their form), and the body.

Server and curl run inside a private network namespace (``unshare``), so the
server listens on the README's own address, 127.0.0.1:1080, whatever else
runs on this machine. Where namespaces are not available, the server gets a
free port and the commands and answers are rewritten to it.

The one change to the commands: ``U=<the README's example URL>`` takes the
``Location`` the creation answered, since ids are random.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from resumable.settings import ENV_PREFIX, Settings

from ..support import ROOT, free_port

README = ROOT / "README.md"
README_ADDRESS = "127.0.0.1:1080"
LEFT_OUT = {"server", "date", "connection", "x-request-id"}
HTTP_DATE = r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT"


def volatile_forms(port: int) -> dict[str, str]:
    """Header values that change on every run, checked by their form instead."""
    return {
        "location": rf"http://127\.0\.0\.1:{port}/files/[0-9a-f]{{32}}",
        "upload-expires": HTTP_DATE,
        "last-modified": HTTP_DATE,
        "expires": HTTP_DATE,
        "etag": r'"[0-9.]+-\d+-\d+"',
    }




@dataclass
class Step:
    command: str  # as the README writes it, continuation lines joined
    expected: list[str]  # the README's output lines


def walkthrough_steps(text: str) -> list[Step]:
    """The ``console`` blocks of the README's "A walk through with curl" section."""
    section = text.split("## A walk through with curl", 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        lines = block.rstrip("\n").split("\n")
        index = 0
        while index < len(lines):
            line = lines[index]
            if not line.startswith("$ "):
                if steps:
                    steps[-1].expected.append(line)
                index += 1
                continue
            command = line[2:]
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + " " + lines[index].strip()
            steps.append(Step(command, []))
            index += 1
    for step in steps:
        while step.expected and not step.expected[-1]:
            step.expected.pop()
    return steps


def namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "--map-root-user", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


def shell_script(steps: list[Step], workdir: Path, port: int, isolated: bool) -> str:
    """One bash script: start the server, run every step, keep each answer in a file."""
    port_flag = [] if isolated else ["--port", str(port)]
    serve = shlex.join([sys.executable, "-m", "resumable", "serve", *port_flag])
    base = f"http://127.0.0.1:{port}/files/"
    lines = [
        "set -u",
        f"cd {shlex.quote(str(workdir))}",
        "ip link set lo up" if isolated else ":",
        f"{serve} > server.log 2>&1 &",
        "server=$!",
        "trap 'kill $server; wait $server || true' EXIT",
        "for _ in $(seq 200); do",
        f"  curl -s -o /dev/null -X OPTIONS {base} && break",
        "  sleep 0.1",
        "done",
    ]
    for number, step in enumerate(steps):
        command = step.command.replace(README_ADDRESS, f"127.0.0.1:{port}")
        if command.startswith("U="):
            # The only change: the id the server really answered.
            command = f"U=$(grep -i '^location:' out-{number - 1} | tr -d '\\r' | cut -d' ' -f2)"
        lines.append(f"{{ {command} ; }} > out-{number} 2> err-{number}")
    lines.append("test -n \"$U\"")
    return "\n".join(lines) + "\n"


def answer_lines(raw: bytes) -> list[str]:
    """curl's output as lines, without CRs, and without the headers the README leaves out."""
    text = raw.decode("utf-8").replace("\r\n", "\n")
    head, separator, body = text.partition("\n\n")
    kept = [
        line
        for line in head.split("\n")
        if line.split(":", 1)[0].strip().lower() not in LEFT_OUT
    ]
    lines = kept
    if separator:
        lines = kept + [""] + (body.split("\n") if body else [])
    while lines and not lines[-1]:
        lines.pop()
    return lines


def differences(expected: list[str], actual: list[str], forms: dict[str, str]) -> list[str]:
    problems = []
    if len(expected) != len(actual):
        problems.append(f"{len(actual)} lines, the README shows {len(expected)}")
    for want, got in zip(expected, actual, strict=False):
        name = want.split(":", 1)[0].lower() if ":" in want and not want.startswith(" ") else ""
        if name in forms and got.lower().startswith(name + ":"):
            value = got.split(":", 1)[1].strip()
            if not re.fullmatch(forms[name], value):
                problems.append(f"{got!r} does not have the form of {want!r}")
        elif want != got:
            problems.append(f"README {want!r}, got {got!r}")
    return problems


@pytest.fixture(scope="module")
def isolated() -> bool:
    return namespaces_work()


def test_walkthrough_matches_the_readme(tmp_path: Path, isolated: bool) -> None:
    steps = walkthrough_steps(README.read_text())
    commands = [step.command for step in steps]
    # The walk-through the README promises: discover, create, patch, head, patch, get, delete.
    assert len(steps) == 8, commands
    assert commands[2].startswith("U="), commands
    assert all(c.startswith("curl ") for i, c in enumerate(commands) if i != 2), commands
    # The README's address is the default one.
    defaults = Settings()
    assert f"{defaults.host}:{defaults.port}" == README_ADDRESS
    assert defaults.base_path == "/files/"

    workdir = tmp_path / "fresh"
    workdir.mkdir()
    port = 1080 if isolated else free_port()
    script = workdir.parent / "walkthrough.sh"
    script.write_text(shell_script(steps, workdir, port, isolated))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    runner = ["unshare", "--net", "--map-root-user"] if isolated else []
    finished = subprocess.run(
        [*runner, "bash", str(script)], env=environment, capture_output=True, timeout=120
    )
    server_log = (workdir / "server.log").read_text(errors="replace")
    assert finished.returncode == 0, (finished.stderr.decode(), server_log)
    where = "private network namespace" if isolated else "free port, commands rewritten"
    print(f"walk-through: {len(steps)} commands, server on 127.0.0.1:{port} ({where})")

    problems = []
    for number, step in enumerate(steps):
        actual = answer_lines((workdir / f"out-{number}").read_bytes())
        expected = [line.replace(README_ADDRESS, f"127.0.0.1:{port}") for line in step.expected]
        for problem in differences(expected, actual, volatile_forms(port)):
            problems.append(f"$ {step.command}\n    {problem}")
    assert not problems, "\n".join(problems)

    # The data went to ./data of the working directory, as the server said at start.
    assert (workdir / "data" / "uploads").is_dir()
    assert f"data: {workdir / 'data'}" in server_log, server_log
    assert "Traceback" not in server_log, server_log
