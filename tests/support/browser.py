"""Headless Chromium for the browser tests: set-up, page server and Node drivers.

Everything browser-side lives in ``tests/browser/``: a pinned ``package.json``
and ``package-lock.json`` (playwright-core, Uppy, esbuild), the test page
(``index.html`` + ``src/uppy-test.js``, bundled by ``build.mjs`` into
``dist/uppy-test.js``) and the drivers (``driver.mjs``, ``demo-driver.mjs``)
that run Debian's Chromium through playwright-core. No browser is ever
downloaded: ``CHROMIUM`` (default ``/usr/bin/chromium``) must be installed.

Set-up, run once per session by :func:`browser_kit`:

* ``npm ci --no-audit --no-fund`` in ``tests/browser`` when ``node_modules``
  is missing or older than ``package-lock.json``;
* ``node build.mjs`` when ``dist/uppy-test.js`` is missing or older than its
  sources.

A missing or failing node, npm or Chromium fails the tests with the reason;
they are never skipped.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .node import node_and_npm, npm_ci, run_json_script, run_setup
from .paths import TESTS

BROWSER_DIR = TESTS / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BUNDLE = BROWSER_DIR / "dist" / "uppy-test.js"
BUNDLE_SOURCES = ("src/uppy-test.js", "build.mjs", "package-lock.json")


@dataclass(frozen=True)
class BrowserKit:
    node: str
    chromium: str
    versions: dict[str, str]


def _run(command: list[str], what: str, timeout: float) -> str:
    return run_setup(command, BROWSER_DIR, what, timeout)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


_setup_failure: list[str] = []


def browser_kit() -> BrowserKit:
    """The set-up, once per session; a failure fails every browser test with its reason."""
    if _setup_failure:
        pytest.fail(_setup_failure[0], pytrace=False)
    try:
        return _set_up()
    except pytest.fail.Exception as failure:
        _setup_failure.append(str(failure))
        raise


@functools.cache
def _set_up() -> BrowserKit:
    """Check the tools, install the pinned packages and build the page when needed."""
    node, npm = node_and_npm("browser tests")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium, or set "
            "CHROMIUM=/path/to/chrome); no browser is downloaded",
            pytrace=False,
        )
    chromium_version = _run([CHROMIUM, "--version"], f"{CHROMIUM} --version", 60)
    installed = BROWSER_DIR / "node_modules" / ".package-lock.json"
    if _mtime(installed) < _mtime(BROWSER_DIR / "package-lock.json"):
        npm_ci(npm, BROWSER_DIR)
    if _mtime(BUNDLE) < max(_mtime(BROWSER_DIR / name) for name in BUNDLE_SOURCES):
        _run([node, "build.mjs"], "esbuild bundle (node build.mjs)", 120)
    versions = {"node": _run([node, "--version"], "node --version", 60)}
    for package in ("playwright-core", "@uppy/core", "@uppy/tus", "@uppy/dashboard", "esbuild"):
        manifest = BROWSER_DIR / "node_modules" / package / "package.json"
        versions[package] = json.loads(manifest.read_text())["version"]
    versions["chromium"] = chromium_version.splitlines()[-1]
    return BrowserKit(node=node, chromium=CHROMIUM, versions=versions)


def run_driver(kit: BrowserKit, script: str, *args: str, timeout: float = 60) -> dict:
    """Run a Node driver in tests/browser; its last stdout line is a JSON result."""
    return run_json_script(
        [kit.node, script, *args], BROWSER_DIR, timeout,
        lambda result: "browser log:\n" + "\n".join(result.get("log", [])),
        env={"CHROMIUM": kit.chromium},
    )


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass


@contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a free port of 127.0.0.1 from a thread; yields the origin."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="static-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
