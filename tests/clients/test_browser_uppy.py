"""Uppy (@uppy/tus) in headless Chromium uploads to the server from another origin.

The page (tests/browser/index.html + the esbuild bundle of src/uppy-test.js)
is served by a small static server on its own port, so every tus request is
cross-origin and the browser enforces CORS for real: the preflights, the
exposed Location / Upload-Offset headers that tus-js-client reads. The page
generates 8 MiB where byte i is (i * 31 + 7) & 255, uploads it with a 3 MiB
chunkSize, and reports the upload URL; the test downloads it and compares
SHA-256 with the same bytes made here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from ..support import TusClient, assert_no_traceback
from ..support.browser import BROWSER_DIR, BrowserKit, browser_kit, run_driver, static_server

#: Both registries on local disk, uploads kept in S3 (moto) on one instance, and two
#: replicas behind nginx with their own data dirs sharing Redis and the bucket.
BACKENDS = ("embedded", "redis", "redis-s3", "proxied-redis-s3")

MiB = 1024 * 1024
SIZE = 8 * MiB
CHUNK = 3 * MiB


def page_bytes(size: int = SIZE) -> bytes:
    """What the page generates: byte i is (i * 31 + 7) & 255 (period 256)."""
    period = bytes((i * 31 + 7) & 255 for i in range(256))
    whole, rest = divmod(size, 256)
    return period * whole + period[:rest]


@pytest.fixture(scope="session")
def kit() -> BrowserKit:
    return browser_kit()


@pytest.fixture(autouse=True)
def _report_client_version(kit: BrowserKit, request: pytest.FixtureRequest) -> None:
    """Name the client under test in the run's summary (tests/conftest.py prints it)."""
    versions = kit.versions
    request.node.user_properties.append(
        ("client under test", f"@uppy/tus {versions['@uppy/tus']} (@uppy/core "
         f"{versions['@uppy/core']}) in {versions['chromium']}")
    )


@pytest.fixture(scope="module")
def page_origin(kit: BrowserKit) -> Iterator[str]:
    with static_server(BROWSER_DIR) as origin:
        yield origin


def upload_in_browser(kit: BrowserKit, page_origin: str, endpoint: str) -> dict:
    return run_driver(
        kit,
        "driver.mjs",
        "--page",
        f"{page_origin}/index.html",
        "--endpoint",
        endpoint,
        "--chunk-size",
        str(CHUNK),
    )


def test_uppy_uploads_8_mib_across_origins(
    backend: str, start_server, kit: BrowserKit, page_origin: str
) -> None:
    server = start_server(backend)
    assert urlsplit(page_origin).netloc != urlsplit(server.url).netloc  # really cross-origin

    outcome = upload_in_browser(kit, page_origin, server.endpoint)
    result = outcome["result"]
    assert result["status"] == "done", (result, outcome["log"], server.log())
    assert result["origin"] == page_origin
    assert result["retries"] == 0, result
    upload_url = result["uploadURL"]
    assert upload_url.startswith(server.endpoint), upload_url

    # tus-js-client saw one creation and three PATCHes (3 + 3 + 2 MiB), reading
    # Location and Upload-Offset through CORS (Access-Control-Expose-Headers).
    requests_seen = [(r["method"], r["status"], r["offset"]) for r in result["requests"]]
    assert requests_seen == [
        ("POST", 201, None),
        ("PATCH", 204, str(CHUNK)),
        ("PATCH", 204, str(2 * CHUNK)),
        ("PATCH", 204, str(SIZE)),
    ], result["requests"]
    assert result["requests"][0]["location"] == upload_url

    # Chromium sent every request with the page's Origin and got it echoed back.
    for request in outcome["seen"]:
        assert request["origin"] == page_origin, request
        assert request["allowOrigin"] == page_origin, request
    assert [r["method"] for r in outcome["seen"]] == ["POST", "PATCH", "PATCH", "PATCH"]

    tus = TusClient(server.endpoint)
    head = tus.head(upload_url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(SIZE)
    download = tus.get(upload_url)
    assert download.status_code == 200
    assert len(download.content) == SIZE
    expected = hashlib.sha256(page_bytes()).hexdigest()
    assert hashlib.sha256(download.content).hexdigest() == expected
    assert_no_traceback(server)


def test_uppy_is_refused_by_a_server_that_lists_other_origins(
    start_server, kit: BrowserKit, page_origin: str
) -> None:
    """The same page against --cors-origins https://example.org: the browser blocks it."""
    server = start_server("embedded", cors_origins="https://example.org")
    result = upload_in_browser(kit, page_origin, server.endpoint)["result"]
    assert result["status"] == "error", result
    assert result["uploadURL"] is None
    assert result["requests"] == []  # no response ever reached the page
