"""tus extensions against the real server, on both registry backends.

* Table rows 21 and 29 of spec/tus-1.0.md section 4 (expired upload: 410 while
  its record remains, 404 once ``resumable gc`` has run) and rows 51-64
  (concatenation; row 56 is replaced by "OPTIONS offers
  concatenation-unfinished", as this server offers it, and row 57 holds).
* Acceptance of expiration (Upload-Expires, ``resumable gc``, the server's own
  periodic collector), checksum (every algorithm, 64 MiB bodies, interrupted
  bodies, creation-with-upload), creation-defer-length and concatenation
  (8 partials uploaded in parallel, finals made before their partials finish,
  reuse, relative and absolute URLs, PATCH and DELETE around finals).

Servers, one set per backend:

* ``server`` (conftest): Tus-Max-Size 1e9, default expiry; big bodies.
* ``table_server``: Tus-Max-Size 1000 (the table's fixture), default expiry.
* ``expiry_server``: Tus-Max-Size 1000, expiry 2 s, no periodic collector.
* ``collector_server``: expiry 2 s and the periodic collector every 1 s.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

import pytest
import requests

from ..support import (
    OFFSET_STREAM,
    TUS,
    MiB,
    Server,
    TusClient,
    assert_content,
    assert_state,
    b64,
    checksum_header,
    download_sha256,
    guarded,
    iter_chunks,
    make_upload,
    offered_extensions,
    path_of,
    pattern_bytes,
    request_head,
    upload_count,
    upload_id,
    wait_until,
)

#: The registries and stores the extension tests run on: uploads kept in S3 too. (The
#: registry contract and the protocol tests prove a Redis Cluster's hash slots.)
BACKENDS = ("embedded", "redis", "redis-s3", "proxied-redis-s3", "hosted-redis")

MAX_SIZE = 1000
EXPIRY = 2
ALGORITHMS = ("sha1", "md5", "sha256", "sha512", "crc32")
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


# --------------------------------------------------------------------------
# Servers and guarded clients
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table_server(backend: str, start_server) -> Server:
    return start_server(backend, max_size=MAX_SIZE)


@pytest.fixture(scope="module")
def expiry_server(backend: str, start_server) -> Server:
    return start_server(backend, max_size=MAX_SIZE, expiry=EXPIRY, gc_interval=0)


@pytest.fixture(scope="module")
def collector_server(backend: str, start_server) -> Server:
    return start_server(backend, max_size=MAX_SIZE, expiry=EXPIRY, gc_interval=1)


@pytest.fixture
def big(server: Server, guarded_client: Callable[[Server], TusClient]) -> TusClient:
    return guarded_client(server)


@pytest.fixture
def table(table_server: Server, guarded_client: Callable[[Server], TusClient]) -> TusClient:
    return guarded_client(table_server)


@pytest.fixture
def exp(expiry_server: Server, guarded_client: Callable[[Server], TusClient]) -> TusClient:
    return guarded_client(expiry_server)


@pytest.fixture
def collector(collector_server: Server, guarded_client: Callable[[Server], TusClient]) -> TusClient:
    return guarded_client(collector_server)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def stored(server: Server, url: str) -> bool:
    """Whether the store still holds the upload: its record and its bytes."""
    names = server.stored_names(upload_id(url))
    return any(n.endswith((".json", ".info")) for n in names) and server.stored_bytes(
        upload_id(url)) is not None


def make_partial(tus: TusClient, length: int, data: bytes = b"") -> str:
    return make_upload(tus, length, data, headers={"Upload-Concat": "partial"})


def post_final(
    tus: TusClient, urls: list[str], data: bytes | None = None, **headers: str
) -> requests.Response:
    return tus.create(headers={"Upload-Concat": "final;" + " ".join(urls), **headers}, data=data)


def head_ok(tus: TusClient, url: str) -> requests.Response:
    response = tus.head(url)
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0"
    return response


def assert_gone(response: requests.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0"
    assert "Upload-Offset" not in response.headers


def run_gc(server: Server) -> str:
    """``resumable gc`` once, against the server's data dir and registry."""
    command = [sys.executable, "-m", "resumable", "gc", "--data-dir", str(server.data_dir)]
    if server.redis_url:
        command += ["--redis-url", server.redis_url, "--redis-prefix", server.redis_prefix]
    for name in ("s3_bucket", "s3_endpoint", "s3_prefix"):
        if name in server.settings:
            command += ["--" + name.replace("_", "-"), str(server.settings[name])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    print(f"resumable gc: {result.stdout.strip()}")
    return result.stdout


def wait_expired(tus: TusClient, url: str, timeout: float = EXPIRY + 6) -> float:
    """Poll HEAD (which does not slide the expiry) until 410; seconds waited."""
    start = time.monotonic()
    assert wait_until(lambda: tus.head(url).status_code == 410, timeout, 0.1), (
        f"{url} did not expire within {timeout} s: {tus.head(url).status_code}"
    )
    return time.monotonic() - start


def expires_of(response: requests.Response) -> float:
    """Upload-Expires as a timestamp, after checking it is an IMF-fixdate in GMT."""
    value = response.headers.get("Upload-Expires")
    assert value is not None, (response.status_code, dict(response.headers))
    assert IMF_FIXDATE.fullmatch(value), value
    moment = parsedate_to_datetime(value)
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0, value
    return moment.timestamp()


# --------------------------------------------------------------------------
# Rows 21 and 29: expired uploads
# --------------------------------------------------------------------------


def test_row21_head_expired_upload(exp: TusClient, expiry_server: Server) -> None:
    """Row 21: HEAD of an expired upload → 410 while its record remains, 404 after gc."""
    url = make_upload(exp, 100, b"x" * 10)
    assert_state(exp, url, 10, 100)
    waited = wait_expired(exp, url)
    print(f"expired after {waited:.2f} s of idling (expiry {EXPIRY} s)")
    assert_gone(exp.head(url), 410)
    assert stored(expiry_server, url)
    assert_gone(exp.head(url), 410)  # still remembered: no implicit deletion by HEAD
    run_gc(expiry_server)
    assert_gone(exp.head(url), 404)


def test_row29_patch_expired_upload(exp: TusClient, expiry_server: Server) -> None:
    """Row 29: PATCH of an expired upload → 410 while its record remains, 404 after gc."""
    url = make_upload(exp, 100, b"x" * 10)
    wait_expired(exp, url)
    response = exp.patch(url, 10, b"y" * 5)
    assert_gone(response, 410)
    assert_gone(exp.patch(url, 3, b"y" * 5), 410)  # existence is checked before the offset
    assert stored(expiry_server, url) and expiry_server.stored_bytes(upload_id(url)) == 10
    run_gc(expiry_server)
    assert_gone(exp.patch(url, 10, b"y" * 5), 404)
    assert expiry_server.stored_names(upload_id(url)) == []


# --------------------------------------------------------------------------
# Expiration acceptance
# --------------------------------------------------------------------------


def test_options_advertise_expiration(exp: TusClient) -> None:
    response = exp.options()
    assert response.status_code in (200, 204)
    assert "expiration" in offered_extensions(response)


def test_expired_unfinished_collected_finished_kept(exp: TusClient, expiry_server: Server) -> None:
    """Idle unfinished → 410 (HEAD, PATCH, DELETE), gc → 404 and files gone; finished kept."""
    unfinished = make_upload(exp, 100, b"u" * 40)
    finished_data = pattern_bytes(50, seed=9)
    finished = make_upload(exp, 50, finished_data)
    wait_expired(exp, unfinished)
    assert_gone(exp.head(unfinished), 410)
    assert_gone(exp.patch(unfinished, 40, b"u"), 410)
    assert_gone(exp.delete(unfinished), 410)
    assert stored(expiry_server, unfinished)
    assert_state(exp, finished, 50, 50)

    output = run_gc(expiry_server)
    assert re.search(r"deleted [1-9][0-9]* expired", output), output
    assert_gone(exp.head(unfinished), 404)
    assert_gone(exp.patch(unfinished, 40, b"u"), 404)
    assert_gone(exp.delete(unfinished), 404)
    assert expiry_server.stored_names(upload_id(unfinished)) == []

    assert_state(exp, finished, 50, 50)
    assert stored(expiry_server, finished)
    assert_content(exp, finished, finished_data)


def test_upload_expires_header_slides(exp: TusClient) -> None:
    """Upload-Expires on POST 201, PATCH 204 and HEAD; IMF-fixdate GMT, ~2 s ahead, sliding."""
    before = time.time()
    created = exp.create(100)
    after = time.time()
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    expires = expires_of(created)
    # IMF-fixdate has whole seconds: the value may be up to 1 s before the real expiry.
    assert before + EXPIRY - 1.1 <= expires <= after + EXPIRY + 0.1, (before, expires, after)
    head = head_ok(exp, url)
    assert before + EXPIRY - 1.1 <= expires_of(head) <= time.time() + EXPIRY + 0.1

    previous = expires
    for step in range(3):
        time.sleep(1.05)
        before = time.time()
        response = exp.patch(url, step * 10, b"s" * 10)
        after = time.time()
        # The last of these PATCHes comes > 3 s after creation: only sliding kept it alive.
        assert response.status_code == 204, (step, response.status_code, response.text)
        expires = expires_of(response)
        assert before + EXPIRY - 1.1 <= expires <= after + EXPIRY + 0.1, (before, expires, after)
        assert expires >= previous + 1, (step, previous, expires)
        head = head_ok(exp, url)
        assert expires_of(head) >= expires
        previous = expires
    print(f"Upload-Expires slid to {head.headers['Upload-Expires']}")

    before = time.time()
    with_body = exp.create(100, data=b"w" * 10)  # creation-with-upload
    after = time.time()
    assert with_body.status_code == 201, with_body.text
    assert with_body.headers.get("Upload-Offset") == "10"
    assert before + EXPIRY - 1.1 <= expires_of(with_body) <= after + EXPIRY + 0.1


def test_periodic_collector_deletes_expired_upload(
    collector: TusClient, collector_server: Server
) -> None:
    """With gc_interval=1 the server's own collector deletes an expired upload in seconds."""
    finished_data = pattern_bytes(30, seed=4)
    finished = make_upload(collector, 30, finished_data)
    unfinished = make_upload(collector, 100, b"z" * 10)
    start = time.monotonic()
    gone = wait_until(lambda: collector.head(unfinished).status_code == 404, EXPIRY + 6, 0.1)
    elapsed = time.monotonic() - start
    print(f"periodic collector deleted the expired upload {elapsed:.2f} s after its last PATCH")
    assert gone, collector.head(unfinished).status_code
    assert_gone(collector.head(unfinished), 404)
    assert collector_server.stored_names(upload_id(unfinished)) == []
    assert_state(collector, finished, 30, 30)
    assert_content(collector, finished, finished_data)


# --------------------------------------------------------------------------
# Checksum acceptance
# --------------------------------------------------------------------------


def test_checksum_64mib_wrong_then_right(big: TusClient) -> None:
    """64 MiB PATCH: wrong sha256 → 460 and offset unmoved; right digest → 204."""
    head_bytes = pattern_bytes(1024, seed=1)
    body = pattern_bytes(64 * MiB, seed=2)
    url = make_upload(big, len(head_bytes) + len(body), head_bytes)
    wrong = hashlib.sha256(memoryview(body)[:-1])
    wrong.update(bytes([body[-1] ^ 1]))
    wrong_header = "sha256 " + b64(wrong.digest())

    start = time.monotonic()
    response = big.patch(url, 1024, body, {"Upload-Checksum": wrong_header})
    took = time.monotonic() - start
    assert response.status_code == 460, (response.status_code, response.text)
    assert response.reason == "Checksum Mismatch"
    assert_state(big, url, 1024, 1024 + len(body))

    start = time.monotonic()
    response = big.patch(url, 1024, body, {"Upload-Checksum": checksum_header("sha256", body)})
    took_right = time.monotonic() - start
    assert response.status_code == 204, (response.status_code, response.text)
    assert response.headers["Upload-Offset"] == str(1024 + len(body))
    print(f"64 MiB checksummed PATCH: 460 in {took:.2f} s, 204 in {took_right:.2f} s")
    digest, size = download_sha256(big, url)
    assert size == 1024 + len(body)
    assert digest == hashlib.sha256(head_bytes + body).hexdigest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checksum_algorithm(table: TusClient, algorithm: str) -> None:
    """Each advertised algorithm: right digest → 204, wrong digest → 460 and no progress."""
    advertised = table.options().headers["Tus-Checksum-Algorithm"].split(",")
    assert algorithm in [a.strip() for a in advertised]
    data = pattern_bytes(40, seed=7)
    url = make_upload(table, 40)
    for offset in (0, 20):
        chunk = data[offset : offset + 20]
        wrong = checksum_header(algorithm, chunk[::-1] + b"!")
        response = table.patch(url, offset, chunk, {"Upload-Checksum": wrong})
        assert response.status_code == 460, (offset, response.status_code, response.text)
        assert_state(table, url, offset, 40)
        right = checksum_header(algorithm, chunk)
        response = table.patch(url, offset, chunk, {"Upload-Checksum": right})
        assert response.status_code == 204, (offset, response.status_code, response.text)
        assert response.headers["Upload-Offset"] == str(offset + 20)
    assert_content(table, url, data)


def test_checksum_interrupted_body_keeps_offset(big: TusClient, server: Server) -> None:
    """A checksummed PATCH cut mid-body leaves the offset where it was."""
    first = pattern_bytes(1024, seed=11)
    body = pattern_bytes(2 * MiB, seed=12)
    url = make_upload(big, len(first) + len(body), first)
    headers = {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": "1024",
               "Upload-Checksum": checksum_header("sha256", body),
               "Content-Length": str(len(body))}
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_head(server, "PATCH", url, headers) + body[: len(body) // 2])
        time.sleep(0.5)  # let the server read the half it got
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert_state(big, url, 1024, len(first) + len(body))
        time.sleep(0.1)
    response = big.patch(url, 1024, body, {"Upload-Checksum": checksum_header("sha256", body)})
    assert response.status_code == 204, (response.status_code, response.text)
    assert_content(big, url, first + body)


def test_checksum_mismatch_on_creation_with_upload(table: TusClient) -> None:
    """POST with a body and a wrong checksum → 460 with Location; the upload is at offset 0."""
    data = pattern_bytes(100, seed=13)
    response = table.create(
        100, data=data, headers={"Upload-Checksum": checksum_header("sha1", data[:-1] + b"?")}
    )
    assert response.status_code == 460, (response.status_code, response.text)
    assert "Location" in response.headers, dict(response.headers)
    url = response.headers["Location"]
    assert_state(table, url, 0, 100)
    response = table.patch(url, 0, data, {"Upload-Checksum": checksum_header("sha1", data)})
    assert response.status_code == 204, (response.status_code, response.text)
    assert_content(table, url, data)


# --------------------------------------------------------------------------
# creation-defer-length
# --------------------------------------------------------------------------


@pytest.mark.parametrize("declaring_body", [0, 5], ids=["empty-body", "with-body"])
def test_defer_length_declared_later_and_immutable(table: TusClient, declaring_body: int) -> None:
    """Upload-Defer-Length: 1 on HEAD until a PATCH sets Upload-Length; then it is fixed."""
    data = pattern_bytes(30, seed=17)
    url = make_upload(table, None)
    assert_state(table, url, 0, None)
    assert table.patch(url, 0, data[:10]).status_code == 204
    assert_state(table, url, 10, None)

    end = 10 + declaring_body
    response = table.patch(url, 10, data[10:end], {"Upload-Length": "30"})
    assert response.status_code == 204, (response.status_code, response.text)
    assert response.headers["Upload-Offset"] == str(end)
    assert_state(table, url, end, 30)

    for other in ("31", "25", "1000"):
        response = table.patch(url, end, b"", {"Upload-Length": other})
        assert response.status_code == 400, (other, response.status_code, response.text)
        assert_state(table, url, end, 30)
    response = table.patch(url, end, data[end:])
    assert response.status_code == 204, (response.status_code, response.text)
    assert_state(table, url, 30, 30)
    assert_content(table, url, data)


def test_defer_length_chunked_body_cut_at_max_size(table: TusClient) -> None:
    """Deferred length, Tus-Max-Size 1000: a chunked 1500-byte PATCH → 413, offset ≤ 1000."""
    data = pattern_bytes(1500, seed=19)
    url = make_upload(table, None)
    response = table.patch(url, 0, iter_chunks(data, 100))
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413, (response.status_code, response.text)
    head = head_ok(table, url)
    offset = int(head.headers["Upload-Offset"])
    assert head.headers.get("Upload-Defer-Length") == "1", dict(head.headers)
    print(f"chunked 1500 bytes on a deferred upload: 413, kept {offset} bytes")
    assert offset <= MAX_SIZE
    # What was kept is the body's prefix.
    response = table.patch(url, offset, b"", {"Upload-Length": str(offset)})
    assert response.status_code == 204, (response.status_code, response.text)
    if offset:
        assert_content(table, url, data[:offset])


# --------------------------------------------------------------------------
# Rows 51-64: concatenation (Tus-Max-Size 1000)
# --------------------------------------------------------------------------


def test_row51_create_partial(table: TusClient) -> None:
    """Row 51: POST Upload-Concat: partial, Upload-Length: 5 → 201 with Location."""
    response = table.create(5, headers={"Upload-Concat": "partial"})
    assert response.status_code == 201, (response.status_code, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0"
    url = response.headers["Location"]
    head = assert_state(table, url, 0, 5)
    assert head.headers.get("Upload-Concat") == "partial"


def test_row52_head_partial(table: TusClient) -> None:
    """Row 52: HEAD of complete partial P1 → 200, offset 5, length 5, Upload-Concat: partial."""
    p1 = make_partial(table, 5, b"hello")
    head = assert_state(table, p1, 5, 5)
    assert head.headers.get("Upload-Concat") == "partial"
    assert head.headers.get("Cache-Control") == "no-store"


def test_row53_create_final(table: TusClient) -> None:
    """Row 53: POST final;/files/P1 /files/P2 → 201 with Location; content 'hello world'."""
    p1 = make_partial(table, 5, b"hello")
    p2 = make_partial(table, 6, b" world")
    response = post_final(table, [path_of(p1), path_of(p2)])
    assert response.status_code == 201, (response.status_code, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0"
    final = response.headers["Location"]
    assert upload_id(final) not in (upload_id(p1), upload_id(p2))
    assert_content(table, final, b"hello world")


def test_row54_head_final(table: TusClient) -> None:
    """Row 54: HEAD F → 200, Upload-Concat as sent, Upload-Length 11, Upload-Offset 11."""
    p1 = make_partial(table, 5, b"hello")
    p2 = make_partial(table, 6, b" world")
    concat = f"final;{path_of(p1)} {path_of(p2)}"
    final = table.new_upload(None, headers={"Upload-Concat": concat})
    head = assert_state(table, final, 11, 11)
    assert head.headers.get("Upload-Concat") == concat


def test_row55_patch_final_forbidden(table: TusClient) -> None:
    """Row 55: PATCH F (CT, offset 11) → 403; neither F nor its partials change."""
    p1 = make_partial(table, 5, b"hello")
    p2 = make_partial(table, 6, b" world")
    final = post_final(table, [path_of(p1), path_of(p2)]).headers["Location"]
    before = {url: dict(head_ok(table, url).headers) for url in (final, p1, p2)}
    for offset, body in ((11, b""), (11, b"!"), (0, b"HELLO")):
        response = table.patch(final, offset, body)
        assert response.status_code == 403, (offset, body, response.status_code, response.text)
        assert response.headers.get("Tus-Resumable") == "1.0.0"
    for url, headers in before.items():
        after = head_ok(table, url).headers
        for name in ("Upload-Offset", "Upload-Length", "Upload-Concat"):
            assert after.get(name) == headers.get(name), (url, name)
    assert_content(table, final, b"hello world")


def test_row56_concatenation_unfinished_offered(table: TusClient) -> None:
    """Row 56 does not apply: OPTIONS offers concatenation and concatenation-unfinished."""
    response = table.options()
    assert response.status_code in (200, 204)
    assert {"concatenation", "concatenation-unfinished"} <= offered_extensions(response)


def test_row57_final_with_unfinished_partial(table: TusClient) -> None:
    """Row 57: final;/files/P1 /files/P3 (P3 at 3/10) → 201; HEAD: no offset, length 15."""
    p1 = make_partial(table, 5, b"hello")
    p3_data = b"0123456789"
    p3 = make_partial(table, 10, p3_data[:3])
    concat = f"final;{path_of(p1)} {path_of(p3)}"
    response = table.create(headers={"Upload-Concat": concat})
    assert response.status_code == 201, (response.status_code, response.text)
    final = response.headers["Location"]
    head = head_ok(table, final)
    assert "Upload-Offset" not in head.headers, dict(head.headers)
    assert head.headers.get("Upload-Length") == "15"
    assert head.headers.get("Upload-Concat") == concat
    # Completing P3 completes the final.
    assert table.patch(p3, 3, p3_data[3:]).status_code == 204
    assert_state(table, final, 15, 15)
    assert_content(table, final, b"hello" + p3_data)


def test_row58_final_with_unknown_partial(table: TusClient, table_server: Server) -> None:
    """Row 58: POST final;/files/N → 404, nothing created."""
    before = upload_count(table_server)
    missing = path_of(table.endpoint) + "0" * 32
    response = post_final(table, [missing])
    assert response.status_code == 404, (response.status_code, response.text)
    assert "Location" not in response.headers
    assert upload_count(table_server) == before


def test_row59_final_with_non_partial(table: TusClient, table_server: Server) -> None:
    """Row 59: POST final;/files/U1 (a plain upload) → 400, nothing created."""
    u1 = make_upload(table, 100, b"u" * 70)
    p1 = make_partial(table, 5, b"hello")
    before = upload_count(table_server)
    for urls in ([path_of(u1)], [path_of(p1), path_of(u1)]):
        response = post_final(table, urls)
        assert response.status_code == 400, (urls, response.status_code, response.text)
    assert upload_count(table_server) == before
    assert_state(table, u1, 70, 100)


@pytest.mark.parametrize("value", ["final;", "bogus", "final", "final; "])
def test_row60_malformed_upload_concat(table: TusClient, table_server: Server, value: str) -> None:
    """Row 60: Upload-Concat 'final;' or 'bogus' (or 'final') → 400, nothing created."""
    before = upload_count(table_server)
    response = table.create(headers={"Upload-Concat": value})
    assert response.status_code == 400, (response.status_code, response.text)
    assert upload_count(table_server) == before


#: Rows 61 and 62: what a final must not carry, as (headers, body, status).
FINAL_REFUSALS = {
    "row61-upload-length": ({"Upload-Length": "11"}, None, 400),
    "row62-body": ({}, b"hello world", 403),
}


@pytest.mark.parametrize("row", list(FINAL_REFUSALS))
def test_rows_61_62_final_with_length_or_body(
    table: TusClient, table_server: Server, row: str
) -> None:
    """Row 61: POST final + Upload-Length: 11 → 400. Row 62: POST final with CT and a
    body → 403. Nothing is created."""
    headers, body, status = FINAL_REFUSALS[row]
    p1 = make_partial(table, 5, b"hello")
    p2 = make_partial(table, 6, b" world")
    before = upload_count(table_server)
    response = post_final(table, [path_of(p1), path_of(p2)], data=body, **headers)
    assert response.status_code == status, (response.status_code, response.text)
    assert upload_count(table_server) == before


def test_row63_final_repeats_partial(table: TusClient, table_server: Server) -> None:
    """Row 63: POST final;/files/P1 /files/P1 → 400 here, nothing created.

    The spec lets a server accept a repeated part (tusd does, copying it once
    per listing); this server refuses it, since a small part listed many
    times made one request write many copies (protocol.md, Concatenation).
    Reusing a part in several finals still works.
    """
    p1 = make_partial(table, 5, b"hello")
    before = upload_count(table_server)
    response = post_final(table, [path_of(p1), path_of(p1)])
    assert response.status_code == 400, (response.status_code, response.text)
    assert "more than once" in response.text
    assert upload_count(table_server) == before
    for _ in range(2):
        reused = post_final(table, [path_of(p1)])
        assert reused.status_code == 201, (reused.status_code, reused.text)
        assert_content(table, reused.headers["Location"], b"hello")


def test_row64_final_above_max_size(table: TusClient, table_server: Server) -> None:
    """Row 64: POST final whose partials add up to more than 1000 bytes → 413."""
    a = make_partial(table, 600, pattern_bytes(600, seed=1))
    b = make_partial(table, 500, pattern_bytes(500, seed=2))
    before = upload_count(table_server)
    response = post_final(table, [path_of(a), path_of(b)])
    assert response.status_code == 413, (response.status_code, response.text)
    assert "Location" not in response.headers
    assert upload_count(table_server) == before
    # Sum of exactly 1000 is fine.
    c = make_partial(table, 400, pattern_bytes(400, seed=3))
    assert post_final(table, [path_of(a), path_of(c)]).status_code == 201


# --------------------------------------------------------------------------
# Concatenation acceptance (big bodies)
# --------------------------------------------------------------------------

#: Eight uneven partial sizes, 1 MiB to 9 MiB plus odd bytes.
PART_SIZES = [m * MiB + 4099 * i for i, m in enumerate((3, 9, 1, 6, 2, 8, 5, 4))]


def upload_part(server: Server, url: str, data: bytes, start: int = 0) -> float:
    """PATCH ``data[start:]`` in 4 MiB requests from a thread's own client."""
    client = guarded(server)
    began = time.monotonic()
    offset = start
    for chunk in iter_chunks(data[start:], 4 * MiB):
        response = client.patch(url, offset, chunk)
        assert response.status_code == 204, (url, offset, response.status_code, response.text)
        offset += len(chunk)
    client.session.close()
    return time.monotonic() - began


def test_concat_eight_parallel_partials(big: TusClient, server: Server) -> None:
    """8 partials uploaded by 8 threads, joined with absolute URLs; GET = concatenation."""
    parts = [pattern_bytes(size, seed=20 + i) for i, size in enumerate(PART_SIZES)]
    urls = [make_partial(big, len(data)) for data in parts]
    total = sum(PART_SIZES)
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        times = list(pool.map(upload_part, [server] * 8, urls, parts))
    upload_time = time.monotonic() - start
    for url, data in zip(urls, parts, strict=True):
        assert_state(big, url, len(data), len(data))

    concat = "final;" + " ".join(urls)
    start = time.monotonic()
    response = big.create(headers={"Upload-Concat": concat})
    join_time = time.monotonic() - start
    assert response.status_code == 201, (response.status_code, response.text)
    final = response.headers["Location"]
    print(
        f"8 partials {[round(s / MiB, 2) for s in PART_SIZES]} MiB = {total / MiB:.1f} MiB "
        f"uploaded in {upload_time:.2f} s (slowest thread {max(times):.2f} s); "
        f"final joined in {join_time * 1000:.0f} ms"
    )
    head = assert_state(big, final, total, total)
    assert head.headers.get("Upload-Concat") == concat
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    assert download_sha256(big, final) == (expected, total)


def test_concat_final_before_partials_finish(big: TusClient, server: Server) -> None:
    """A final made while its partials are half uploaded completes when they finish."""
    parts = [pattern_bytes(size // 2, seed=40 + i) for i, size in enumerate(PART_SIZES)]
    halves = [len(data) // 2 for data in parts]
    urls = [
        make_partial(big, len(data), data[:half]) for data, half in zip(parts, halves, strict=True)
    ]
    total = sum(len(data) for data in parts)
    concat = "final;" + " ".join(path_of(url) if i % 2 else url for i, url in enumerate(urls))
    response = big.create(headers={"Upload-Concat": concat})
    assert response.status_code == 201, (response.status_code, response.text)
    final = response.headers["Location"]
    head = head_ok(big, final)
    assert "Upload-Offset" not in head.headers, dict(head.headers)
    assert head.headers.get("Upload-Concat") == concat
    assert head.headers.get("Upload-Length") == str(total)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload_part, [server] * 8, urls, parts, halves))
    finished = time.monotonic()

    def complete() -> bool:
        headers = head_ok(big, final).headers
        return headers.get("Upload-Offset") is not None and (
            headers.get("Upload-Offset") == headers.get("Upload-Length")
        )

    assert wait_until(complete, 20, 0.05), dict(head_ok(big, final).headers)
    print(
        f"final of {total / MiB:.1f} MiB complete {time.monotonic() - finished:.3f} s "
        "after its last partial"
    )
    head = assert_state(big, final, total, total)
    assert head.headers.get("Upload-Concat") == concat
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    assert download_sha256(big, final) == (expected, total)


def test_concat_partials_reused_in_two_finals(big: TusClient) -> None:
    """The same partials in two finals, in other orders: both correct, parts untouched."""
    a = make_partial(big, 5, b"hello")
    b = make_partial(big, 6, b" world")
    first = post_final(big, [a, b])
    second = post_final(big, [path_of(b), path_of(a)])
    assert first.status_code == 201, (first.status_code, first.text)
    assert second.status_code == 201, (second.status_code, second.text)
    assert_state(big, first.headers["Location"], 11, 11)
    assert_state(big, second.headers["Location"], 11, 11)
    assert_content(big, first.headers["Location"], b"hello world")
    assert_content(big, second.headers["Location"], b" worldhello")
    assert_state(big, a, 5, 5)
    assert_state(big, b, 6, 6)


@pytest.mark.parametrize("style", ["relative", "absolute", "mixed"])
def test_concat_relative_and_absolute_urls(big: TusClient, style: str) -> None:
    """Final lists with /files/<id> paths, absolute URLs, or both."""
    a = make_partial(big, 5, b"hello")
    b = make_partial(big, 6, b" world")
    urls = {
        "relative": [path_of(a), path_of(b)],
        "absolute": [a, b],
        "mixed": [path_of(a), b],
    }[style]
    assert urls[1].startswith("http://") == (style != "relative")
    response = post_final(big, urls)
    assert response.status_code == 201, (response.status_code, response.text)
    assert_content(big, response.headers["Location"], b"hello world")


def test_concat_patch_to_final_forbidden(big: TusClient) -> None:
    """PATCH to a final (complete or still waiting) → 403, nothing changes."""
    a_data = pattern_bytes(3000, seed=51)
    b_data = pattern_bytes(2000, seed=52)
    a = make_partial(big, len(a_data), a_data)
    b = make_partial(big, len(b_data), b_data[:500])
    a2_data = pattern_bytes(3000, seed=53)
    a2 = make_partial(big, len(a2_data), a2_data)
    done = post_final(big, [a, a2]).headers["Location"]
    waiting = post_final(big, [a, b]).headers["Location"]
    for final, length in ((done, 6000), (waiting, 5000)):
        before = dict(head_ok(big, final).headers)
        for offset in (0, 500, length):
            response = big.patch(final, offset, b"X" * 100)
            assert response.status_code == 403, (offset, response.status_code, response.text)
        after = dict(head_ok(big, final).headers)
        for name in ("Upload-Offset", "Upload-Length", "Upload-Concat"):
            assert after.get(name) == before.get(name), (final, name, before, after)
    assert_state(big, a, 3000, 3000)
    assert_state(big, b, 500, 2000)
    assert_content(big, done, a_data + a2_data)
    assert big.patch(b, 500, b_data[500:]).status_code == 204
    assert wait_until(lambda: head_ok(big, waiting).headers.get("Upload-Offset") == "5000", 10)
    assert_content(big, waiting, a_data + b_data)


def test_concat_delete_partial_after_join(big: TusClient) -> None:
    """DELETE of the partials after the final was joined leaves the final intact."""
    a_data = pattern_bytes(MiB + 7, seed=61)
    b_data = pattern_bytes(MiB // 2 + 3, seed=62)
    a = make_partial(big, len(a_data), a_data)
    b = make_partial(big, len(b_data), b_data)
    final = post_final(big, [a, b]).headers["Location"]
    assert_state(big, final, len(a_data) + len(b_data), len(a_data) + len(b_data))
    for part in (a, b):
        response = big.delete(part)
        assert response.status_code == 204, (response.status_code, response.text)
        assert big.head(part).status_code in (404, 410)
    assert_state(big, final, len(a_data) + len(b_data), len(a_data) + len(b_data))
    expected = hashlib.sha256(a_data + b_data).hexdigest()
    assert download_sha256(big, final) == (expected, len(a_data) + len(b_data))


def test_concat_final_metadata_not_inherited(big: TusClient) -> None:
    """A final has its own Upload-Metadata, never its partials'."""
    a = make_partial(big, 5, b"hello")
    b = make_upload(
        big,
        6,
        b" world",
        headers={
            "Upload-Concat": "partial",
            "Upload-Metadata": "filename cGFydC5iaW4=",
        },
    )
    own = post_final(big, [a, b], **{"Upload-Metadata": "filename ZmluYWwudHh0,kind"})
    bare = post_final(big, [b, a])
    assert own.status_code == 201 and bare.status_code == 201, (own.text, bare.text)
    head = head_ok(big, own.headers["Location"])
    assert head.headers.get("Upload-Metadata") == "filename ZmluYWwudHh0,kind"
    head = head_ok(big, bare.headers["Location"])
    assert "Upload-Metadata" not in head.headers, dict(head.headers)
    assert_content(big, bare.headers["Location"], b" worldhello")


def test_concat_with_deferred_length_partial(table: TusClient) -> None:
    """A final over a deferred-length partial: no Upload-Offset/-Length until it is known."""
    a = make_partial(table, 5, b"hello")
    b = make_upload(table, None, b" wo", headers={"Upload-Concat": "partial"})
    response = post_final(table, [path_of(a), path_of(b)])
    assert response.status_code == 201, (response.status_code, response.text)
    final = response.headers["Location"]
    head = head_ok(table, final)
    assert "Upload-Offset" not in head.headers, dict(head.headers)
    assert "Upload-Length" not in head.headers, dict(head.headers)
    response = table.patch(b, 3, b"rld", {"Upload-Length": "6"})
    assert response.status_code == 204, (response.status_code, response.text)
    assert_state(table, final, 11, 11)
    assert_content(table, final, b"hello world")


# 1,001 creations and a join of 1,000 four-byte parts: some 5,000 requests to S3,
# which moto serves in about 100 s; S3 joins of short parts are covered by the
# other concatenation tests and tests/storage/test_s3_store.py.
@pytest.mark.parametrize("backend", ["embedded", "redis"], scope="module")
def test_concat_max_parts(big: TusClient, server: Server) -> None:
    """max_concat_parts (default 1000): 1000 listed parts join, 1001 are refused."""
    parts = [path_of(make_partial(big, 4, b"%04d" % i)) for i in range(1001)]
    before = upload_count(server)
    response = post_final(big, parts)
    assert response.status_code == 400, (response.status_code, response.text)
    assert upload_count(server) == before
    start = time.monotonic()
    response = post_final(big, parts[:1000])
    assert response.status_code == 201, (response.status_code, response.text)
    print(f"final of 1000 parts joined in {(time.monotonic() - start) * 1000:.0f} ms")
    assert_state(big, response.headers["Location"], 4000, 4000)
    assert_content(big, response.headers["Location"], b"".join(b"%04d" % i for i in range(1000)))


# --------------------------------------------------------------------------
# Finals whose partials change after the final was created
# --------------------------------------------------------------------------


def test_partial_length_cannot_push_a_waiting_final_past_max_size(
    table_server: Server,
) -> None:
    """A deferred partial declaring a length that makes its final exceed Tus-Max-Size → 413."""
    tus = TusClient(table_server.endpoint)
    done = tus.new_upload(600, headers={"Upload-Concat": "partial"})
    assert tus.patch(done, 0, b"a" * 600).status_code == 204
    deferred = tus.new_upload(
        None, headers={"Upload-Concat": "partial", "Upload-Defer-Length": "1"}
    )
    final = tus.create(headers={"Upload-Concat": f"final;{done} {deferred}"})
    assert final.status_code == 201, final.text
    too_long = tus.patch(deferred, 0, b"b" * 600, headers={"Upload-Length": "600"})
    assert too_long.status_code == 413, too_long.text
    assert tus.head(deferred).headers.get("Upload-Defer-Length") == "1"
    fits = tus.patch(deferred, 0, b"b" * 400, headers={"Upload-Length": "400"})
    assert fits.status_code == 204, fits.text
    assert wait_until(
        lambda: tus.head(final.headers["Location"]).headers.get("Upload-Offset") == "1000", 5
    )


def test_waiting_final_lives_as_long_as_its_partials(expiry_server: Server) -> None:
    """A final waiting for a partial that keeps receiving bytes does not expire (expiry 2 s)."""
    tus = TusClient(expiry_server.endpoint)
    part = tus.new_upload(40, headers={"Upload-Concat": "partial"})
    final = tus.create(headers={"Upload-Concat": f"final;{part}"})
    assert final.status_code == 201
    final_url = final.headers["Location"]
    for step in range(4):
        assert tus.patch(part, step * 10, b"x" * 10).status_code == 204
        assert tus.head(final_url).status_code == 200
        time.sleep(1)
    assert tus.head(final_url).headers["Upload-Offset"] == "40"
    assert tus.get(final_url).content == b"x" * 40


def test_gc_removes_a_final_whose_partial_expired(expiry_server: Server) -> None:
    """Once a waiting final's partial expired, gc deletes both."""
    tus = TusClient(expiry_server.endpoint)
    part = tus.new_upload(40, headers={"Upload-Concat": "partial"})
    final = tus.create(headers={"Upload-Concat": f"final;{part}"}).headers["Location"]
    time.sleep(2.3)
    run_gc(expiry_server)
    assert tus.head(part).status_code == 404
    assert tus.head(final).status_code == 404


# --------------------------------------------------------------------------
# Refusals that must change nothing, and joins that must still happen
# --------------------------------------------------------------------------


def test_refused_length_declaration_is_not_stored(table_server: Server) -> None:
    """PATCH declaring Upload-Length 5 with a 10-byte body → 413; the length stays deferred."""
    tus = TusClient(table_server.endpoint)
    url = tus.new_upload(None, headers={"Upload-Defer-Length": "1"})
    response = tus.patch(url, 0, b"0123456789", headers={"Upload-Length": "5"})
    assert response.status_code == 413, response.text
    head = tus.head(url)
    assert head.headers.get("Upload-Defer-Length") == "1"
    assert "Upload-Length" not in head.headers
    assert head.headers["Upload-Offset"] == "0"


def test_deferred_creation_with_too_large_body_creates_nothing(table_server: Server) -> None:
    """POST with Upload-Defer-Length and a body above Tus-Max-Size → 413, no upload made."""
    tus = TusClient(table_server.endpoint)
    before = table_server.stored_names()
    response = tus.create(headers={"Upload-Defer-Length": "1"}, data=b"x" * (MAX_SIZE + 1))
    assert response.status_code == 413, response.text
    assert "Location" not in response.headers
    assert table_server.stored_names() == before


def trickled(pieces: list[bytes], pause: float = 0.2) -> Iterator[bytes]:
    """A chunked body in pieces apart in time: a proxy cannot have it whole at once.

    nginx sends a body it already holds whole with a Content-Length instead of
    chunked, and a declared length above what is left is refused before any
    byte is read; the pause keeps the body streaming, as a real client's is.
    """
    for index, piece in enumerate(pieces):
        if index:
            time.sleep(pause)
        yield piece


def test_final_joins_even_when_the_completing_patch_ends_in_413(table_server: Server) -> None:
    """A chunked PATCH that overruns the last partial completes it (413) and joins the final."""
    tus = TusClient(table_server.endpoint)
    part = tus.new_upload(5, headers={"Upload-Concat": "partial"})
    final = tus.create(headers={"Upload-Concat": f"final;{part}"}).headers["Location"]
    response = tus.patch(part, 0, trickled([b"hel", b"lo!!"]))  # chunked: 7 bytes for 5
    assert response.status_code == 413, response.text
    assert tus.offset(part) == 5
    final_id = upload_id(final)
    # Joined because of the PATCH (just after it answered), not by a later HEAD.
    assert wait_until(lambda: table_server.stored_content(final_id) == b"hello", 10), (
        table_server.stored_content(final_id))
    assert tus.head(final).headers["Upload-Offset"] == "5"


def test_final_with_a_deleted_partial_is_not_a_server_error(table_server: Server) -> None:
    """A partial deleted before its final was joined: HEAD and GET of the final answer, no 5xx."""
    tus = TusClient(table_server.endpoint)
    done = tus.new_upload(3, headers={"Upload-Concat": "partial"})
    assert tus.patch(done, 0, b"abc").status_code == 204
    open_part = tus.new_upload(3, headers={"Upload-Concat": "partial"})
    final = tus.create(headers={"Upload-Concat": f"final;{done} {open_part}"}).headers["Location"]
    assert tus.delete(open_part).status_code == 204
    head = tus.head(final)
    assert head.status_code == 200 and "Upload-Offset" not in head.headers
    assert tus.get(final).status_code == 404
