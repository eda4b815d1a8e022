"""scripts/serve, scripts/test and scripts/bootstrap: what each installs, and when.

The scripts run for real, in a copy of the repository's scripts and the files
they read, with stand-ins for the interpreter and the programs around it: a
``python`` that records its arguments and, asked for ``-m venv DIR``, makes
DIR a venv of such stand-ins (python, resumable, ruff), and stand-ins for the
system programs scripts/test checks for. So the tests see which ``pip
install`` each run asks for, without the minutes a real install takes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ..support import ROOT

PINS = "deploy/requirements.txt"

STAND_IN = """#!/usr/bin/env bash
# Records how it was called; "-m venv DIR" makes DIR a venv of stand-ins.
{ printf '%q ' "$(basename "$0")" "$@"; echo; } >>"$STAND_IN_LOG"
if [ "${1-}" = -m ] && [ "${2-}" = venv ]; then
  mkdir -p "$3/bin"
  for tool in python resumable ruff; do cp "$0" "$3/bin/$tool"; done
fi
"""

REFUSE_APT = """#!/usr/bin/env bash
echo "apt-get $* was called: a program scripts/test checks for has no stand-in" >&2
exit 1
"""


def system_programs() -> set[str]:
    """What scripts/test looks for (``command -v NAME``) and installs when it is missing."""
    text = (ROOT / "scripts" / "test").read_text()
    return set(re.findall(r"command -v ([\w.+-]+)", text)) - {"apt-get"}


class Checkout:
    """A copy of the scripts and their inputs, with stand-ins on PATH."""

    def __init__(self, root: Path):
        self.root = root / "repo"
        self.log = root / "calls.log"
        tools = root / "bin"
        tools.mkdir()
        for name in ["scripts/bootstrap", "scripts/serve", "scripts/test", "pyproject.toml", PINS]:
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, self.root / name)
        self.python = root / "python3"
        self.python.write_text(STAND_IN)
        self.python.chmod(0o755)
        # scripts/check-package builds and installs for real: a stand-in records the call.
        shutil.copy2(self.python, self.root / "scripts" / "check-package")
        for name in system_programs():
            shutil.copy2(self.python, tools / name)
        (tools / "apt-get").write_text(REFUSE_APT)
        (tools / "apt-get").chmod(0o755)
        self.environment = {
            name: value
            for name, value in os.environ.items()
            if name not in ("EXTRAS", "PYTHON", "VIRTUAL_ENV")
        }
        self.environment.update(
            PATH=f"{tools}{os.pathsep}{os.environ['PATH']}",
            PYTHON=str(self.python),
            STAND_IN_LOG=str(self.log),
        )

    def run(self, script: str, *arguments: str) -> list[list[str]]:
        """Run scripts/<script>; the calls it made, each as [program, arguments...]."""
        self.log.write_text("")
        result = subprocess.run(
            [str(self.root / "scripts" / script), *arguments],
            cwd=self.root,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [shlex.split(line) for line in self.log.read_text().splitlines()]

    def edit(self, name: str, addition: str) -> None:
        with open(self.root / name, "a") as file:
            file.write(addition)


def package_installs(calls: list[list[str]]) -> list[str]:
    """What each ``pip install -e`` installed: ``.`` or ``.[extras]``."""
    return [
        call[call.index("-e") + 1]
        for call in calls
        if call[:4] == ["python", "-m", "pip", "install"] and "-e" in call
    ]


def constraints(call: list[str]) -> str:
    assert "-c" in call, f"not constrained: {shlex.join(call)}"
    return call[call.index("-c") + 1]


def pins() -> list[str]:
    """``name==version`` of each pin in the repository's deploy/requirements.txt."""
    text = (ROOT / PINS).read_text().replace("\\\n", " ")
    lines = (line.split("#", 1)[0].split() for line in text.splitlines())
    return [words[0] for words in lines if words]


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    return Checkout(tmp_path)


def test_serve_installs_the_package_without_the_test_extras(checkout: Checkout) -> None:
    calls = checkout.run("serve", "--port", "8080")
    assert ["python3", "-m", "venv", ".venv"] in calls
    assert package_installs(calls) == ["."]
    assert calls[-1] == ["resumable", "serve", "--port", "8080"]


def test_test_adds_the_test_extras_and_second_runs_install_nothing(checkout: Checkout) -> None:
    assert package_installs(checkout.run("serve")) == ["."]
    calls = checkout.run("test", "-x")
    assert package_installs(calls) == [".[test]"], "a serve-only venv lacks the test extras"
    suite = ["python", "-m", "pytest", "-n", "2", "--dist", "loadfile", "-x"]
    assert suite in calls
    # The package is checked after the lint, before the suite.
    programs = [call[0] for call in calls]
    assert programs.index("ruff") < programs.index("check-package") < calls.index(suite)
    # The test extras include what serving needs: nothing to install for either.
    for script in ("serve", "test", "serve"):
        calls = checkout.run(script)
        assert package_installs(calls) == [], f"scripts/{script} reinstalled"
        assert not any(call[:3] == ["python", "-m", "pip"] for call in calls), calls


@pytest.mark.parametrize("changed", ["pyproject.toml", PINS])
def test_a_changed_input_reinstalls_keeping_the_extras(checkout: Checkout, changed: str) -> None:
    checkout.run("test")
    assert package_installs(checkout.run("serve")) == []
    checkout.edit(changed, "\n# changed\n")
    # The test extras installed earlier are reinstalled under the new inputs too,
    # so a later scripts/test does not install again.
    assert package_installs(checkout.run("serve")) == [".[test]"]
    assert package_installs(checkout.run("test")) == []


def test_a_venv_from_before_extras_were_recorded_is_reinstalled(checkout: Checkout) -> None:
    """An older bootstrap left an empty stamp: what it installed is unknown."""
    checkout.run("serve")
    (checkout.root / ".venv" / ".installed").write_text("")
    assert package_installs(checkout.run("serve")) == ["."]


def test_installs_are_constrained_to_the_pins_the_image_ships(checkout: Checkout) -> None:
    """pip treats a constraint with a hash as a demand for hashes everywhere, which an
    editable install cannot meet: the constraints are the pins without their hashes."""
    calls = checkout.run("test")
    (install,) = [call for call in calls if "-e" in call]
    constraints_file = checkout.root / constraints(install)
    assert constraints_file.read_text().split() == pins()
    assert len(pins()) >= 4, "flask, werkzeug, redis and gunicorn at least"
