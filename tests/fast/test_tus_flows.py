"""tus rules that take more than one request, or an endpoint configured otherwise.

The single-request rules are the table of test_tus_table.py; these are the
ones whose answer depends on what came before (metadata echoed, a length
declared late, a deleted upload, a held lock) or on a setting.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import pytest

from .harness import BASE, OFFSET_STREAM, TUS, Endpoint, path_of, pattern, upload_id

WEEK = 7 * 24 * 3600.0


def _expires(header: str) -> float:
    return parsedate_to_datetime(header).timestamp()


@pytest.mark.parametrize(
    "metadata",
    [
        "filename aGVsbG8udHh0,filetype dGV4dC9wbGFpbg==",
        "is_confidential",
        "a YQ==, b Yg==,\tc",
        "key ",
    ],
    ids=["two-pairs", "key-alone", "spaces-and-tabs", "key-and-space"],
)
def test_metadata_is_echoed_byte_for_byte(endpoint: Endpoint, metadata: str) -> None:
    path = endpoint.create(5, headers={"Upload-Metadata": metadata})
    assert endpoint.head(path).headers["Upload-Metadata"] == metadata


def test_no_metadata_no_header(endpoint: Endpoint) -> None:
    path = endpoint.create(5)
    assert "Upload-Metadata" not in endpoint.head(path).headers


def test_expiry_is_set_at_creation_and_slides_with_each_commit(endpoint: Endpoint) -> None:
    before = time.time()
    created = endpoint.request("POST", BASE, {**TUS, "Upload-Length": "10"})
    after = time.time()
    path = path_of(created.headers["Location"])
    first = _expires(created.headers["Upload-Expires"])
    assert before + WEEK - 1 <= first <= after + WEEK
    assert endpoint.head(path).headers["Upload-Expires"] == created.headers["Upload-Expires"]

    endpoint.set_expires(path, before + 60)  # an earlier clock, so the slide shows
    assert _expires(endpoint.head(path).headers["Upload-Expires"]) == pytest.approx(
        before + 60, abs=1
    )
    patched = endpoint.patch(path, 0, b"hello")
    assert patched.status_code == 204
    assert _expires(patched.headers["Upload-Expires"]) >= before + WEEK - 1
    assert endpoint.head(path).headers["Upload-Expires"] == patched.headers["Upload-Expires"]

    finished = endpoint.patch(path, 5, b"world")
    assert finished.status_code == 204
    assert "Upload-Expires" not in finished.headers
    assert "Upload-Expires" not in endpoint.head(path).headers


def test_without_expiry_nothing_expires(make_endpoint: Callable[..., Endpoint]) -> None:
    endpoint = make_endpoint(expiry=0)
    extensions = endpoint.request("OPTIONS", BASE).headers["Tus-Extension"].split(",")
    assert "expiration" not in extensions and "creation" in extensions
    created = endpoint.request("POST", BASE, {**TUS, "Upload-Length": "10"})
    assert created.status_code == 201 and "Upload-Expires" not in created.headers
    path = path_of(created.headers["Location"])
    assert "Upload-Expires" not in endpoint.patch(path, 0, b"hello").headers
    assert "Upload-Expires" not in endpoint.head(path).headers
    assert endpoint.record(path).expires is None  # type: ignore[union-attr]


def test_without_max_size_no_limit_is_announced(make_endpoint: Callable[..., Endpoint]) -> None:
    endpoint = make_endpoint(max_size=0)
    assert "Tus-Max-Size" not in endpoint.request("OPTIONS", BASE).headers
    largest = endpoint.request("POST", BASE, {**TUS, "Upload-Length": str(2**63 - 1)})
    assert largest.status_code == 201


@pytest.mark.parametrize(("trust_proxy", "setting", "offered"), [
    (False, "auto", True), (True, "auto", False), (True, "on", True), (False, "off", False),
])
def test_checksum_trailer_is_offered_where_trailers_arrive(
    make_endpoint: Callable[..., Endpoint], trust_proxy: bool, setting: str, offered: bool
) -> None:
    endpoint = make_endpoint(trust_proxy=trust_proxy, checksum_trailer=setting)
    extensions = endpoint.request("OPTIONS", BASE).headers["Tus-Extension"].split(",")
    assert ("checksum-trailer" in extensions) is offered


def test_deferred_length_once_declared_is_reported_and_fixed(endpoint: Endpoint) -> None:
    path = endpoint.create(None, b"hello")
    head = endpoint.head(path)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    declared = endpoint.patch(path, 5, b" world", {"Upload-Length": "11"})
    assert (declared.status_code, declared.headers["Upload-Offset"]) == (204, "11")
    head = endpoint.head(path)
    assert head.headers["Upload-Length"] == "11" and "Upload-Defer-Length" not in head.headers
    assert endpoint.patch(path, 11, b"", {"Upload-Length": "12"}).status_code == 400
    assert endpoint.request("GET", path).get_data() == b"hello world"


def test_deferred_length_declared_with_an_empty_body(endpoint: Endpoint) -> None:
    path = endpoint.create(None, b"hello")
    declared = endpoint.patch(path, 5, b"", {"Upload-Length": "8"})
    assert (declared.status_code, declared.headers["Upload-Offset"]) == (204, "5")
    assert endpoint.head(path).headers["Upload-Length"] == "8"
    assert endpoint.patch(path, 5, b"abcd").status_code == 413
    assert endpoint.offset(path) == 5


def test_creation_with_upload_that_fails_its_checksum_exists_empty(endpoint: Endpoint) -> None:
    sha1 = base64.b64encode(hashlib.sha1(b"hello world").digest()).decode()
    response = endpoint.request("POST", BASE, {
        **TUS, "Upload-Length": "11", "Content-Type": OFFSET_STREAM,
        "Upload-Checksum": f"sha1 {sha1}"}, b"hello WORLD")
    assert response.status_code == 460
    path = path_of(response.headers["Location"])
    assert endpoint.offset(path) == 0
    assert endpoint.patch(path, 0, b"hello world").status_code == 204
    assert endpoint.request("GET", path).get_data() == b"hello world"


def test_creation_with_the_whole_upload_is_finished(endpoint: Endpoint) -> None:
    data = pattern(300)
    path = endpoint.create(300, data, {"Upload-Metadata": "filename ZGF0YS5iaW4="})
    head = endpoint.head(path)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("300", "300")
    download = endpoint.request("GET", path)
    assert download.get_data() == data
    assert download.headers["Content-Disposition"] == 'attachment; filename="data.bin"'


def test_an_upload_made_of_many_patches_holds_every_byte_in_order(endpoint: Endpoint) -> None:
    data = pattern(999, seed=5)
    path = endpoint.create(len(data))
    offset = 0
    for size in (1, 10, 100, 0, 333, 555):
        response = endpoint.patch(path, offset, data[offset : offset + size])
        offset += size
        assert (response.status_code, response.headers["Upload-Offset"]) == (204, str(offset))
    assert endpoint.request("GET", path).get_data() == data


def test_a_deleted_upload_is_gone_for_every_method(endpoint: Endpoint) -> None:
    path = endpoint.create(10, b"hello")
    assert endpoint.request("DELETE", path, TUS).status_code == 204
    assert upload_id(path) not in endpoint.upload_ids()
    assert endpoint.head(path).status_code == 404
    assert endpoint.patch(path, 5, b"x").status_code == 404
    assert endpoint.request("GET", path).status_code == 404
    assert endpoint.request("DELETE", path, TUS).status_code == 404


def test_a_holder_that_does_not_let_go_gets_patch_and_delete_423_never_head(
    endpoint: Endpoint,
) -> None:
    """A lock taken outside any request (a frozen holder) answers no release request."""
    path = endpoint.create(10, b"hello")
    lease = endpoint.registry.acquire(upload_id(path))
    try:
        started = time.monotonic()
        patched = endpoint.patch(path, 5, b"x")
        assert patched.status_code == 423
        assert "Upload-Offset" not in patched.headers
        assert time.monotonic() - started >= endpoint.settings.lock_wait
        assert endpoint.request("DELETE", path, TUS).status_code == 423
        head = endpoint.head(path)
        assert (head.status_code, head.headers["Upload-Offset"]) == (200, "5")
    finally:
        lease.release()
    assert endpoint.patch(path, 5, b"world").status_code == 204


def test_location_follows_the_host_the_client_used(endpoint: Endpoint) -> None:
    response = endpoint.client.post(
        BASE, headers={**TUS, "Upload-Length": "1"}, base_url="https://uploads.example:8443"
    )
    assert response.headers["Location"].startswith("https://uploads.example:8443/files/")


@pytest.mark.parametrize("trust_proxy", [False, True])
def test_forwarded_headers_count_only_behind_a_trusted_proxy(
    make_endpoint: Callable[..., Endpoint], trust_proxy: bool
) -> None:
    endpoint = make_endpoint(trust_proxy=trust_proxy)
    response = endpoint.request("POST", BASE, {
        **TUS, "Upload-Length": "1", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "uploads.example.com"})
    expected = "https://uploads.example.com" if trust_proxy else "http://localhost"
    assert response.headers["Location"].startswith(expected + "/files/")
