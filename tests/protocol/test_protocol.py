"""tus 1.0 conformance, one test case per row of the table in spec/tus-1.0.md section 4.

Rows covered: OPTIONS (1-2), creation (3-14), creation-with-upload (15-17),
HEAD (18-22, without 21), PATCH (23-40, without 29), checksum (41-45),
method override (46-47) and termination (48-50). Rows 21 and 29 (an expired
upload) are left out: they need an upload past its expiry.

Every test talks to a real gunicorn server with ``Tus-Max-Size: 1000``, once
per registry backend. The uploads of the table are made fresh per test:

* **U1** length 100, offset 70
* **UC** length 100, offset 100 (complete)
* **UD** deferred length, offset 10
* **N**  an id that never existed
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable

import pytest
import requests

from ..support import (
    OFFSET_STREAM,
    PROXIED,
    TUS,
    Server,
    TusClient,
    assert_content,
    assert_state,
    b64_digest,
    make_upload,
    offered_extensions,
    pattern_bytes,
    raw_request,
    request_head,
    upload_count,
    wait_until,
)

#: The registries and stores the protocol tests run on: a Redis Cluster too, where
#: every script must stay within one upload's hash slot, uploads kept in S3,
#: two replicas behind nginx with their own data dirs sharing Redis and a bucket,
#: and the endpoint mounted under /api/uploads in a host app (tests/apps/host.py).
BACKENDS = ("embedded", "redis", "redis-cluster", "redis-s3", "proxied-redis-s3", "hosted-redis")

MAX_SIZE = 1000
#: The table's fixture: all nine extensions of spec section 2.
OFFERED_EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "checksum-trailer",
    "termination",
    "concatenation",
    "concatenation-unfinished",
}
#: RFC 9110 IMF-fixdate, as Upload-Expires must be.
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT"
)
HELLO_WORLD_SHA1 = "Kq5sNclPz7QV2+lfQIuc6R7oRu0="  # sha1(b"hello world"), base64
DATA = pattern_bytes(100, seed=3)


# --------------------------------------------------------------------------
# Fixtures: one small server per backend, a guarded client, the table's uploads
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(backend: str, start_server) -> Server:
    """The table's fixture server: Tus-Max-Size 1000."""
    return start_server(backend, max_size=MAX_SIZE)


@pytest.fixture
def tus(small_server: Server, guarded_client: Callable[[Server], TusClient]) -> TusClient:
    """A guarded client of the table's server."""
    return guarded_client(small_server)


@pytest.fixture
def u1(tus: TusClient) -> str:
    """Length 100, offset 70."""
    return make_upload(tus, 100, DATA[:70])


@pytest.fixture
def uc(tus: TusClient) -> str:
    """Length 100, offset 100: complete."""
    return make_upload(tus, 100, DATA)


@pytest.fixture
def ud(tus: TusClient) -> str:
    """Deferred length, offset 10."""
    return make_upload(tus, None, DATA[:10])


@pytest.fixture
def missing(small_server: Server) -> str:
    """N: a well-formed id that never existed."""
    return small_server.endpoint + secrets.token_hex(16)


def assert_tus_response(response: requests.Response) -> None:
    assert response.headers.get("Tus-Resumable") == "1.0.0"


def assert_not_created(response: requests.Response, server: Server, before: int) -> None:
    assert "Location" not in response.headers
    assert upload_count(server) == before


# --------------------------------------------------------------------------
# OPTIONS (rows 1-2)
# --------------------------------------------------------------------------


def offers_checksum_trailer(backend: str) -> bool:
    """Behind a trusted proxy (nginx drops request trailers) checksum-trailer is not offered."""
    return not backend.startswith(PROXIED)


def assert_discovery(response: requests.Response, backend: str) -> None:
    assert response.status_code in (200, 204), (response.status_code, response.text)
    assert_tus_response(response)
    versions = [v.strip() for v in response.headers["Tus-Version"].split(",")]
    assert "1.0.0" in versions
    if offers_checksum_trailer(backend):
        assert offered_extensions(response) >= OFFERED_EXTENSIONS
    else:
        assert offered_extensions(response) >= OFFERED_EXTENSIONS - {"checksum-trailer"}
        assert "checksum-trailer" not in offered_extensions(response)
    assert response.headers.get("Tus-Max-Size") == str(MAX_SIZE)
    algorithms = [a.strip() for a in response.headers["Tus-Checksum-Algorithm"].split(",")]
    assert {"sha1", "md5", "sha256"} <= set(algorithms)
    assert all(a == a.lower() and a.isascii() for a in algorithms)


def test_row01_options_without_tus_resumable(tus: TusClient, backend: str) -> None:
    """Row 1: OPTIONS without Tus-Resumable → 204/200 with the discovery headers."""
    response = tus.options()
    assert "Tus-Resumable" not in response.request.headers
    assert_discovery(response, backend)


def test_row02_options_ignores_unsupported_tus_resumable(tus: TusClient, backend: str) -> None:
    """Row 2: OPTIONS with Tus-Resumable 0.2.2 is answered like row 1, never 412."""
    assert_discovery(tus.options(**{"Tus-Resumable": "0.2.2"}), backend)


# --------------------------------------------------------------------------
# creation (rows 3-14)
# --------------------------------------------------------------------------


def test_row03_create(tus: TusClient, small_server: Server) -> None:
    """Row 3: POST Upload-Length 100 → 201 with a usable Location and Upload-Expires."""
    response = tus.create(100)
    assert response.status_code == 201, response.text
    assert_tus_response(response)
    location = response.headers["Location"]
    assert location.startswith(small_server.endpoint)
    assert IMF_FIXDATE.fullmatch(response.headers["Upload-Expires"])
    assert_state(tus, location, 0, 100)


@pytest.mark.parametrize("version", [None, "0.2.2"], ids=["missing", "0.2.2"])
def test_row04_05_create_with_bad_tus_resumable(
    tus: TusClient, small_server: Server, version: str | None
) -> None:
    """Rows 4 and 5: POST without or with an unsupported Tus-Resumable → 412 + Tus-Version;
    nothing is created."""
    before = upload_count(small_server)
    headers = {"Upload-Length": "100"}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = tus.session.post(tus.endpoint, headers=headers, timeout=30)
    assert response.status_code == 412, response.text
    assert [v.strip() for v in response.headers["Tus-Version"].split(",")] == ["1.0.0"]
    assert_tus_response(response)
    assert_not_created(response, small_server, before)


def test_row06_create_without_length(tus: TusClient, small_server: Server) -> None:
    """Row 6: POST with neither Upload-Length nor Upload-Defer-Length → 400."""
    before = upload_count(small_server)
    response = tus.create()
    assert response.status_code == 400, response.text
    assert_tus_response(response)
    assert_not_created(response, small_server, before)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "+5", "0x10", "1 0"])
def test_row07_create_with_invalid_length(tus: TusClient, small_server: Server, value: str) -> None:
    """Row 7: Upload-Length that is not a non-negative decimal integer → 400."""
    before = upload_count(small_server)
    response = tus.create(headers={"Upload-Length": value})
    assert response.status_code == 400, response.text
    assert_not_created(response, small_server, before)


def test_row08_create_above_max_size(tus: TusClient, small_server: Server) -> None:
    """Row 8: Upload-Length 1001 > Tus-Max-Size 1000 → 413; exactly 1000 is fine."""
    before = upload_count(small_server)
    response = tus.create(MAX_SIZE + 1)
    assert response.status_code == 413, response.text
    assert_tus_response(response)
    assert_not_created(response, small_server, before)
    assert tus.create(MAX_SIZE).status_code == 201


def test_row09_create_with_length_and_defer(tus: TusClient, small_server: Server) -> None:
    """Row 9: Upload-Length and Upload-Defer-Length together → 400."""
    before = upload_count(small_server)
    response = tus.create(10, headers={"Upload-Defer-Length": "1"})
    assert response.status_code == 400, response.text
    assert_not_created(response, small_server, before)


def test_row10_create_with_defer_length_2(tus: TusClient, small_server: Server) -> None:
    """Row 10: Upload-Defer-Length other than 1 → 400."""
    before = upload_count(small_server)
    response = tus.create(headers={"Upload-Defer-Length": "2"})
    assert response.status_code == 400, response.text
    assert_not_created(response, small_server, before)


def test_row11_create_deferred(tus: TusClient) -> None:
    """Row 11: Upload-Defer-Length 1 → 201; HEAD shows the defer header, offset 0, no length."""
    response = tus.create(headers={"Upload-Defer-Length": "1"})
    assert response.status_code == 201, response.text
    assert_state(tus, response.headers["Location"], 0, None)


def test_row12_create_empty_upload(tus: TusClient) -> None:
    """Row 12: Upload-Length 0 → 201 and complete at once (HEAD 0/0, downloadable)."""
    response = tus.create(0)
    assert response.status_code == 201, response.text
    url = response.headers["Location"]
    head = tus.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "0"
    assert_content(tus, url, b"")


def test_row13_metadata_echoed(tus: TusClient) -> None:
    """Row 13: HEAD echoes Upload-Metadata exactly as sent at creation."""
    metadata = "filename d29ybGQ=,is_confidential"
    response = tus.create(10, headers={"Upload-Metadata": metadata})
    assert response.status_code == 201, response.text
    head = tus.head(response.headers["Location"])
    assert head.status_code == 200
    assert head.headers["Upload-Metadata"] == metadata


@pytest.mark.parametrize(
    "metadata",
    [
        "filename d29ybGQ",  # missing padding
        "filename d29y*GQ=",  # not the Base64 alphabet
        "a YQ==,a Yg==",  # duplicate key
        "a YQ==,,b Yg==",  # empty pair: empty key
        "a  YQ==",  # two spaces: an empty part
        "a YQ== Yg==",  # three parts
    ],
    ids=["bad-padding", "bad-alphabet", "duplicate-key", "empty-key", "two-spaces", "three-parts"],
)
def test_row14_invalid_metadata(tus: TusClient, small_server: Server, metadata: str) -> None:
    """Row 14: bad Base64, a duplicate key or an empty key in Upload-Metadata → 400."""
    before = upload_count(small_server)
    response = tus.create(10, headers={"Upload-Metadata": metadata})
    assert response.status_code == 400, response.text
    assert_tus_response(response)
    assert_not_created(response, small_server, before)


# --------------------------------------------------------------------------
# creation-with-upload (rows 15-17)
# --------------------------------------------------------------------------


def test_row15_create_with_upload(tus: TusClient) -> None:
    """Row 15: POST with CT and a 5-byte body → 201, Location, Upload-Offset 5."""
    response = tus.create(100, data=b"hello")
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "5"
    url = response.headers["Location"]
    assert_state(tus, url, 5, 100)
    assert tus.patch(url, 5, DATA[5:]).status_code == 204
    assert_content(tus, url, b"hello" + DATA[5:])


def test_row16_create_with_body_of_wrong_type(tus: TusClient, small_server: Server) -> None:
    """Row 16: POST with a body and Content-Type text/plain → 415; nothing created."""
    before = upload_count(small_server)
    response = tus.create(100, data=b"hello", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415, response.text
    assert_tus_response(response)
    assert_not_created(response, small_server, before)


def test_row17_create_with_body_longer_than_length(tus: TusClient, small_server: Server) -> None:
    """Row 17: POST Upload-Length 100 with a 101-byte body → 413; nothing created."""
    before = upload_count(small_server)
    response = tus.create(100, data=pattern_bytes(101))
    assert response.request.headers["Content-Length"] == "101"
    assert response.status_code == 413, response.text
    assert_tus_response(response)
    assert_not_created(response, small_server, before)


# --------------------------------------------------------------------------
# HEAD (rows 18-22; 21 needs expiration)
# --------------------------------------------------------------------------


def test_row18_head_partial_upload(tus: TusClient, u1: str) -> None:
    """Row 18: HEAD U1 → 200/204, Upload-Offset 70, Upload-Length 100, no-store."""
    response = tus.head(u1)
    assert response.status_code in (200, 204)
    assert_tus_response(response)
    assert response.headers["Upload-Offset"] == "70"
    assert response.headers["Upload-Length"] == "100"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content == b""


def test_row19_head_complete_upload(tus: TusClient, uc: str) -> None:
    """Row 19: HEAD UC → 200, Upload-Offset 100, Upload-Length 100, no-store."""
    response = tus.head(uc)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "100"
    assert response.headers["Upload-Length"] == "100"
    assert response.headers["Cache-Control"] == "no-store"


def test_row20_head_unknown_upload(tus: TusClient, missing: str) -> None:
    """Row 20: HEAD N → 404 without Upload-Offset."""
    response = tus.head(missing)
    assert response.status_code == 404
    assert_tus_response(response)
    assert "Upload-Offset" not in response.headers


def test_row22_head_without_tus_resumable(tus: TusClient, u1: str) -> None:
    """Row 22: HEAD U1 without Tus-Resumable → 412 + Tus-Version (strict reading)."""
    response = tus.session.head(u1, timeout=30)
    assert "Tus-Resumable" not in response.request.headers
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert_tus_response(response)
    assert "Upload-Offset" not in response.headers


# --------------------------------------------------------------------------
# PATCH (rows 23-40; 29 needs expiration)
# --------------------------------------------------------------------------


def test_row23_patch_to_the_end(tus: TusClient, u1: str) -> None:
    """Row 23: PATCH U1 offset 70 with 30 bytes → 204, Upload-Offset 100.

    Upload-Expires is due on every PATCH response while the upload can still
    expire, so it is checked on a PATCH that leaves another upload unfinished.
    """
    response = tus.patch(u1, 70, DATA[70:])
    assert response.status_code == 204, response.text
    assert_tus_response(response)
    assert response.headers["Upload-Offset"] == "100"
    assert response.content == b""
    assert_state(tus, u1, 100, 100)
    assert_content(tus, u1, DATA)

    other = make_upload(tus, 100, DATA[:70])
    response = tus.patch(other, 70, DATA[70:80])
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "80"
    assert IMF_FIXDATE.fullmatch(response.headers["Upload-Expires"])


#: Rows 24 and 30: PATCHes to U1 refused whole, as (Upload-Offset, body, status).
REFUSED_PATCHES = {
    "row24-wrong-offset": (60, DATA[60:], 409),
    "row30-content-length-past-length": (70, b"Z" * 31, 413),
}


@pytest.mark.parametrize("row", list(REFUSED_PATCHES))
def test_rows_24_30_refused_patch_writes_nothing(tus: TusClient, u1: str, row: str) -> None:
    """Row 24: PATCH U1 with Upload-Offset 60 → 409. Row 30: PATCH U1 offset 70 with
    Content-Length 31 (30 bytes left) → 413. The offset stays 70, nothing is stored, and
    the right PATCH completes U1."""
    offset, body, status = REFUSED_PATCHES[row]
    response = tus.patch(u1, offset, body)
    assert response.status_code == status, response.text
    assert_tus_response(response)
    assert_state(tus, u1, 70, 100)
    assert tus.patch(u1, 70, DATA[70:]).status_code == 204
    assert_content(tus, u1, DATA)


def test_row25_patch_wrong_content_type(tus: TusClient, u1: str) -> None:
    """Row 25: PATCH with Content-Type application/octet-stream → 415; offset stays 70."""
    response = tus.patch(u1, 70, DATA[70:80], headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 415, response.text
    assert_tus_response(response)
    assert_state(tus, u1, 70, 100)


def test_row26_patch_without_content_type(tus: TusClient, u1: str) -> None:
    """Row 26: PATCH without Content-Type → 415; offset stays 70."""
    response = tus.patch(u1, 70, DATA[70:80], headers={"Content-Type": None})
    assert "Content-Type" not in response.request.headers
    assert response.status_code == 415, response.text
    assert_state(tus, u1, 70, 100)


@pytest.mark.parametrize("offset", [None, "-5", "x", "70.0", "0x46"], ids=repr)
def test_row27_patch_invalid_offset(tus: TusClient, u1: str, offset: str | None) -> None:
    """Row 27: PATCH with Upload-Offset missing, negative or not a number → 400."""
    response = tus.patch(u1, 0, DATA[70:80], headers={"Upload-Offset": offset})
    if offset is None:
        assert "Upload-Offset" not in response.request.headers
    assert response.status_code == 400, response.text
    assert_tus_response(response)
    assert_state(tus, u1, 70, 100)


def test_row28_patch_unknown_upload(tus: TusClient, missing: str) -> None:
    """Row 28: PATCH N with Upload-Offset 0 → 404."""
    response = tus.patch(missing, 0, b"abc")
    assert response.status_code == 404, response.text
    assert_tus_response(response)
    assert tus.head(missing).status_code == 404


def test_row31_patch_chunked_past_length(tus: TusClient, u1: str) -> None:
    """Row 31: chunked PATCH of 40 bytes with 30 left → 413; the first 30 are kept."""
    body = b"".join(bytes([65 + i]) * 4 for i in range(10))  # 40 bytes
    response = tus.patch(u1, 70, iter([body[:20], body[20:]]))
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert_tus_response(response)
    assert_state(tus, u1, 100, 100)
    assert_content(tus, u1, DATA[:70] + body[:30])


def test_row32_patch_client_drops_mid_body(tus: TusClient, small_server: Server, u1: str) -> None:
    """Row 32: PATCH U1 declaring 10 bytes, the client drops after 4 → HEAD shows 74."""
    headers = {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": "70", "Content-Length": "10"}
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=5) as sock:
        sock.sendall(request_head(small_server, "PATCH", u1, headers) + b"WXYZ")
        time.sleep(0.2)  # let the server read the four bytes before the FIN
    assert wait_until(lambda: tus.offset(u1) == 74, 3, 0.1), tus.offset(u1)
    assert_state(tus, u1, 74, 100)
    assert tus.patch(u1, 74, DATA[74:]).status_code == 204
    assert_content(tus, u1, DATA[:70] + b"WXYZ" + DATA[74:])


def test_row33_patch_complete_upload_empty(tus: TusClient, uc: str) -> None:
    """Row 33: empty PATCH to UC at offset 100 → 204, Upload-Offset 100 (no-op)."""
    response = tus.patch(uc, 100, b"")
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "100"
    assert_state(tus, uc, 100, 100)


def test_row34_patch_complete_upload_with_byte(tus: TusClient, uc: str) -> None:
    """Row 34: PATCH of 1 byte to UC at offset 100 → 413; upload intact."""
    response = tus.patch(uc, 100, b"!")
    assert response.status_code == 413, response.text
    assert_tus_response(response)
    assert_state(tus, uc, 100, 100)
    assert_content(tus, uc, DATA)


def test_row35_patch_complete_upload_wrong_offset(tus: TusClient, uc: str) -> None:
    """Row 35: PATCH UC at offset 0 → 409; upload intact."""
    response = tus.patch(uc, 0, b"x")
    assert response.status_code == 409, response.text
    assert_state(tus, uc, 100, 100)
    assert_content(tus, uc, DATA)


def test_row36_patch_declares_deferred_length(tus: TusClient, ud: str) -> None:
    """Row 36: PATCH UD offset 10, Upload-Length 50, 5 bytes → 204 offset 15; length known."""
    response = tus.patch(ud, 10, DATA[10:15], headers={"Upload-Length": "50"})
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "15"
    assert_state(tus, ud, 15, 50)
    assert tus.patch(ud, 15, DATA[15:50]).status_code == 204
    assert_content(tus, ud, DATA[:50])


def test_row37_patch_deferred_length_below_offset(tus: TusClient, ud: str) -> None:
    """Row 37: PATCH UD offset 10 with Upload-Length 5 → 400; still deferred at 10."""
    response = tus.patch(ud, 10, b"", headers={"Upload-Length": "5"})
    assert response.status_code == 400, response.text
    assert_tus_response(response)
    assert_state(tus, ud, 10, None)


def test_row38_patch_deferred_length_above_max(tus: TusClient, ud: str) -> None:
    """Row 38: PATCH UD offset 10 with Upload-Length 2000 > Tus-Max-Size → 413."""
    response = tus.patch(ud, 10, b"", headers={"Upload-Length": "2000"})
    assert response.status_code == 413, response.text
    assert_tus_response(response)
    assert_state(tus, ud, 10, None)


def test_row39_patch_deferred_length_equal_to_offset(tus: TusClient, ud: str) -> None:
    """Row 39: empty PATCH UD offset 10 with Upload-Length 10 → 204; upload complete."""
    response = tus.patch(ud, 10, b"", headers={"Upload-Length": "10"})
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "10"
    assert_state(tus, ud, 10, 10)
    assert_content(tus, ud, DATA[:10])


def test_row40_patch_changes_known_length(tus: TusClient, u1: str) -> None:
    """Row 40: PATCH U1 (length 100) with Upload-Length 120 → 400; unchanged."""
    response = tus.patch(u1, 70, b"", headers={"Upload-Length": "120"})
    assert response.status_code == 400, response.text
    assert_tus_response(response)
    assert_state(tus, u1, 70, 100)


# --------------------------------------------------------------------------
# checksum (rows 41-45)
# --------------------------------------------------------------------------


def test_row41_checksum_match(tus: TusClient, u1: str) -> None:
    """Row 41: 11 bytes 'hello world' with their sha1 → 204, Upload-Offset 81."""
    response = tus.patch(
        u1, 70, b"hello world", headers={"Upload-Checksum": f"sha1 {HELLO_WORLD_SHA1}"}
    )
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "81"
    assert_state(tus, u1, 81, 100)
    assert tus.patch(u1, 81, DATA[81:]).status_code == 204
    assert_content(tus, u1, DATA[:70] + b"hello world" + DATA[81:])


def test_row42_checksum_mismatch(tus: TusClient, u1: str) -> None:
    """Row 42: sha1 of other data → 460 Checksum Mismatch; chunk discarded, offset 70."""
    response = tus.patch(
        u1, 70, b"hello WORLD", headers={"Upload-Checksum": f"sha1 {HELLO_WORLD_SHA1}"}
    )
    assert response.status_code == 460, response.text
    assert response.reason == "Checksum Mismatch"
    assert_tus_response(response)
    assert_state(tus, u1, 70, 100)
    assert tus.patch(u1, 70, DATA[70:]).status_code == 204
    assert_content(tus, u1, DATA)


def test_row43_checksum_unsupported_algorithm(tus: TusClient, u1: str) -> None:
    """Row 43: Upload-Checksum: sha999 AAAA → 400; offset stays 70."""
    response = tus.patch(u1, 70, b"hello world", headers={"Upload-Checksum": "sha999 AAAA"})
    assert response.status_code == 400, response.text
    assert_tus_response(response)
    assert_state(tus, u1, 70, 100)


@pytest.mark.parametrize(
    "value",
    ["sha1", "sha1 ", "sha1 !!!!", "sha1 AAAA"],
    ids=["no-digest", "empty-digest", "not-base64", "wrong-length"],
)
def test_row44_checksum_malformed(tus: TusClient, u1: str, value: str) -> None:
    """Row 44: Upload-Checksum without a (valid) digest → 400; offset stays 70."""
    response = tus.patch(u1, 70, b"hello world", headers={"Upload-Checksum": value})
    assert response.status_code == 400, response.text
    assert_state(tus, u1, 70, 100)


def chunked(*chunks: bytes, trailers: str = "") -> bytes:
    """A chunked body, with trailer fields (``"Name: value\\r\\n"`` lines)."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return body + b"0\r\n" + trailers.encode("latin-1") + b"\r\n"


TRAILER_CASES = {
    # name: (headers beyond the usual, trailer section, expected statuses, bytes kept)
    "match": ({}, f"Upload-Checksum: sha1 {HELLO_WORLD_SHA1}\r\n", {204}, True),
    "mismatch": ({}, f"Upload-Checksum: sha1 {b64_digest('sha1', b'other')}\r\n", {460}, False),
    "header-and-trailer": (
        {"Upload-Checksum": f"sha1 {HELLO_WORLD_SHA1}"},
        f"Upload-Checksum: sha1 {HELLO_WORLD_SHA1}\r\n",
        {400},
        False,
    ),
    "unsupported-algorithm": ({}, "Upload-Checksum: sha999 AAAA\r\n", {400}, False),
    "announced-but-missing": ({}, "", {400, 460}, False),
}


@pytest.mark.parametrize("case", list(TRAILER_CASES))
def test_row45_checksum_trailer(
    tus: TusClient, small_server: Server, u1: str, case: str, backend: str
) -> None:
    """Row 45: chunked PATCH with Trailer: Upload-Checksum (checksum-trailer is offered):
    matching trailer → 204; mismatching → 460; header and trailer both → 400. Every
    failure discards the chunk: the offset stays 70. Behind nginx, which drops
    request trailers, every case is refused (400 or 460) and nothing is kept."""
    extra, trailers, statuses, kept = TRAILER_CASES[case]
    if offers_checksum_trailer(backend):
        assert "checksum-trailer" in offered_extensions(tus.options())
    else:
        statuses, kept = (400, 460), False
    headers = {
        **TUS,
        "Content-Type": OFFSET_STREAM,
        "Upload-Offset": "70",
        "Transfer-Encoding": "chunked",
        "Trailer": "Upload-Checksum",
        **extra,
    }
    reply = raw_request(
        small_server, "PATCH", u1, headers, chunked(b"hello ", b"world", trailers=trailers)
    )
    assert reply.status in statuses, reply
    if kept:
        assert reply.headers.get("upload-offset") == "81"
        assert_state(tus, u1, 81, 100)
        assert tus.patch(u1, 81, DATA[81:]).status_code == 204
        assert_content(tus, u1, DATA[:70] + b"hello world" + DATA[81:])
    else:
        assert_state(tus, u1, 70, 100)
        assert tus.patch(u1, 70, DATA[70:]).status_code == 204
        assert_content(tus, u1, DATA)


# --------------------------------------------------------------------------
# method override (rows 46-47)
# --------------------------------------------------------------------------


def test_row46_method_override_patch(tus: TusClient, u1: str) -> None:
    """Row 46: POST U1 + X-HTTP-Method-Override: PATCH with 30 bytes → 204, offset 100."""
    headers = {
        **TUS,
        "X-HTTP-Method-Override": "PATCH",
        "Content-Type": OFFSET_STREAM,
        "Upload-Offset": "70",
    }
    response = tus.session.post(u1, headers=headers, data=DATA[70:], timeout=30)
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "100"
    assert_content(tus, u1, DATA)


def test_row47_method_override_delete(tus: TusClient, u1: str) -> None:
    """Row 47: POST U1 + X-HTTP-Method-Override: DELETE → 204; the upload is gone."""
    headers = {**TUS, "X-HTTP-Method-Override": "DELETE"}
    response = tus.session.post(u1, headers=headers, timeout=30)
    assert response.status_code == 204, response.text
    assert tus.head(u1).status_code in (404, 410)


# --------------------------------------------------------------------------
# termination (rows 48-50)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["unfinished", "complete"])
def test_row48_delete(tus: TusClient, u1: str, uc: str, which: str) -> None:
    """Row 48: DELETE an upload (finished or not) → 204; then 404/410 on HEAD and PATCH."""
    url = u1 if which == "unfinished" else uc
    offset = 70 if which == "unfinished" else 100
    response = tus.delete(url)
    assert response.status_code == 204, response.text
    assert_tus_response(response)
    head = tus.head(url)
    assert head.status_code in (404, 410)
    assert "Upload-Offset" not in head.headers
    assert tus.patch(url, offset, b"").status_code in (404, 410)
    assert tus.get(url).status_code in (404, 410)
    assert tus.delete(url).status_code in (404, 410)


def test_row49_delete_unknown(tus: TusClient, missing: str) -> None:
    """Row 49: DELETE N → 404."""
    response = tus.delete(missing)
    assert response.status_code == 404, response.text
    assert_tus_response(response)


def test_row50_delete_without_tus_resumable(tus: TusClient, u1: str) -> None:
    """Row 50: DELETE U1 without Tus-Resumable → 412 + Tus-Version; the upload is intact."""
    response = tus.session.delete(u1, timeout=30)
    assert response.status_code == 412, response.text
    assert response.headers["Tus-Version"] == "1.0.0"
    assert_tus_response(response)
    assert_state(tus, u1, 70, 100)
    assert tus.patch(u1, 70, DATA[70:]).status_code == 204
    assert_content(tus, u1, DATA)
