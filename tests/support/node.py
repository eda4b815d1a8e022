"""Node.js for the client tests: pinned npm packages, and scripts that answer in JSON.

The JavaScript clients (tests/js for tus-js-client, tests/browser for Uppy in
Chromium) are node projects with lock files. A missing or failing node, npm
or ``npm ci`` fails the tests with the reason: they are never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from .paths import ROOT

NPM_CI = ("ci", "--no-audit", "--no-fund")


def node_and_npm(why: str) -> tuple[str, str]:
    """The paths of node and npm; the tests fail, saying ``why`` they need them, without."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        pytest.fail(f"{why} need {missing} on PATH (Node.js 20+ with npm)", pytrace=False)
    return node, npm


def run_setup(command: list[str], cwd: Path, what: str, timeout: float) -> str:
    """A set-up step's stdout; its failure fails the test with the step's output."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.fail(f"test set-up: {what} failed: {error}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"test set-up: {what} failed (exit {done.returncode}):\n"
            f"$ {' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    return done.stdout.strip()


def npm_ci(npm: str, project: Path) -> None:
    """Install the project's pinned packages from its lock file."""
    run_setup([npm, *NPM_CI], project, f"npm ci in {project.relative_to(ROOT)}", 600)


def run_json_script(
    command: list[str],
    cwd: Path,
    timeout: float,
    details: Callable[[dict], str],
    env: Mapping[str, str] | None = None,
) -> dict:
    """Run a script whose last stdout line is a JSON result with ``ok``; that result.

    A timeout, no result, a failing exit or ``ok`` false fails the test, with
    ``details(result)`` (what the script recorded of its exchange) in the message.
    """
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{command[1]} timed out after {timeout} s:\n{error.stdout}\n{error.stderr}")
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(
            f"{command[1]} printed no result (exit {done.returncode}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    if done.returncode != 0 or not result.get("ok"):
        pytest.fail(f"{command[1]} failed: {result.get('error')}\n{details(result)}\n"
                    f"{done.stderr}")
    return result
