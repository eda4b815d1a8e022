"""The demo page of ``resumable serve --demo`` in headless Chromium.

A person's path through it: pick two files through the Dashboard's file
input, click Upload, see the status table (HEAD polled every second) show the
big one midway, pause, resume, and end with every upload complete with
offset == length. The uploaded bytes are checked by GET; a screenshot goes
under the test's tmp dir and to bench-results/demo-page.png.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import requests

from ..support import ROOT, Server, TusClient, assert_no_traceback, pattern_bytes
from ..support.browser import BrowserKit, browser_kit, run_driver

MiB = 1024 * 1024
SCREENSHOT_COPY = ROOT / "bench-results" / "demo-page.png"
THROTTLE = 2_500_000  # bytes per second, so the upload lasts long enough to watch and pause


@pytest.fixture(scope="session")
def kit() -> BrowserKit:
    return browser_kit()


@pytest.fixture(scope="module")
def demo_server(start_server) -> Server:
    """As a user starts it: from a fresh directory, with the default relative data dir."""
    return start_server("embedded", demo=True, default_data_dir=True)


def test_demo_page_uploads_pauses_resumes_and_shows_status(
    demo_server: Server, kit: BrowserKit, tmp_path: Path
) -> None:
    contents = {
        "holiday-video.bin": pattern_bytes(6 * MiB, seed=3),
        "notes.txt": b"uploaded from the demo page\n" * 200,
    }
    paths = []
    for name, data in contents.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
    screenshot = tmp_path / "demo-page.png"

    outcome = run_driver(
        kit,
        "demo-driver.mjs",
        "--url",
        demo_server.url + "/",
        "--files",
        ",".join(paths),
        "--screenshot",
        str(screenshot),
        "--throttle",
        str(THROTTLE),
        "--pause",
        "1",
    )
    log = "\n".join(outcome["log"])
    assert "pageerror" not in log, log
    assert "Content Security Policy" not in log, log

    # The table polled a PATCH in progress: HEAD answered a fresh partial offset.
    before_pause = {row["name"]: row for row in outcome["midway"]["beforePause"]}
    big = before_pause["holiday-video.bin"]
    assert big["state"] == "uploading"
    assert 0 < int(big["offset"]) < int(big["length"]) == 6 * MiB
    while_paused = {row["name"]: row for row in outcome["midway"]["whilePaused"]}
    assert while_paused["holiday-video.bin"]["detail"] == "paused", while_paused

    # In the end every row is complete with offset == length, from HEAD.
    rows = {row["name"]: row for row in outcome["table"]}
    assert set(rows) == set(contents)
    tus = TusClient(demo_server.endpoint)
    for name, data in contents.items():
        row = rows[name]
        assert row["state"] == "complete", row
        assert int(row["offset"]) == int(row["length"]) == len(data), row
        assert row["url"].startswith(demo_server.endpoint), row
        download = tus.get(row["url"])
        assert download.status_code == 200
        assert download.content == data, name
    assert outcome["headStatuses"] == [200], outcome["headStatuses"]

    # Each row's link, followed from the page, downloads the file.
    links = {link["name"]: link for link in outcome["links"]}
    assert set(links) == set(contents)
    for name, data in contents.items():
        link = links[name]
        assert link["href"] == rows[name]["url"], link
        assert link["status"] == 200, link
        assert link["size"] == len(data), link
        assert link["sha256"] == hashlib.sha256(data).hexdigest(), link
    assert links["notes.txt"]["type"] == "text/plain; charset=utf-8"
    assert links["holiday-video.bin"]["type"] == "application/octet-stream"
    assert (demo_server.data_dir / "uploads").is_dir()  # ./data of its working directory

    # The page remembers the uploads in localStorage.
    assert {item["url"] for item in outcome["stored"]} == {row["url"] for row in rows.values()}

    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    assert_no_traceback(demo_server)


def test_demo_page_loads_only_local_assets(demo_server: Server) -> None:
    page = requests.get(demo_server.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert 'data-endpoint="/files/"' in page.text
    references = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert references, page.text
    for reference in references:
        assert reference.startswith(("/demo/static/", "data:")), reference
    for asset, mimetype in (("demo.js", "text/javascript"), ("demo.css", "text/css")):
        response = requests.get(f"{demo_server.url}/demo/static/{asset}", timeout=10)
        assert response.status_code == 200, asset
        assert response.headers["Content-Type"].startswith(mimetype), response.headers
        assert len(response.content) > 10_000
    assert "uppy-Dashboard" in requests.get(demo_server.url + "/demo/static/demo.css").text
    missing = requests.get(demo_server.url + "/demo/static/../__init__.py", timeout=10)
    assert missing.status_code == 404


def test_demo_page_is_off_by_default(start_server) -> None:
    server = start_server("embedded")
    assert requests.get(server.url + "/", timeout=10).status_code == 404
    assert requests.get(server.url + "/demo/static/demo.js", timeout=10).status_code == 404
