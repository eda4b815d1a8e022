"""The IETF draft's main exchanges, as protocol.md's "The IETF draft" shows and tabulates them.

The walk-through of interop 9 (careful creation, append, offset retrieval,
a conflict, the completing append), optimistic creation, and the rows of
the table of what differs by version. The 104 interim answer is written to
gunicorn's socket, which the test client has not: it is left to the
real-process tier (tests/test_draft.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping

import pytest
from werkzeug.test import TestResponse

from resumable.protocol import parse_metadata

from .harness import BASE, MAX_SIZE, Endpoint, path_of

VERSION = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEMS = "https://iana.org/assignments/http-problem-types#"
WEEK = 7 * 24 * 3600


def _flag(version: int, complete: bool) -> dict[str, str]:
    """The completeness field of ``version``: Upload-Incomplete (3, inverse) or Upload-Complete."""
    if version == 3:
        return {"Upload-Incomplete": "?0" if complete else "?1"}
    return {"Upload-Complete": "?1" if complete else "?0"}


def _limit(version: int) -> str | None:
    if version < 6:
        return None
    return f"max-size={MAX_SIZE}, {'max-age' if version >= 7 else 'expires'}={WEEK}"


def _create(endpoint: Endpoint, version: int, complete: bool,
            headers: Mapping[str, str] | None = None, body: bytes = b"") -> TestResponse:
    sent = {VERSION: str(version), **_flag(version, complete), **(headers or {})}
    return endpoint.request("POST", BASE, sent, body)


def _append(endpoint: Endpoint, version: int, path: str, offset: int, body: bytes,
            complete: bool, **headers: str) -> TestResponse:
    sent = {VERSION: str(version), "Upload-Offset": str(offset), **_flag(version, complete),
            "Content-Type": PARTIAL_UPLOAD, **headers}
    return endpoint.request("PATCH", path, sent, body)


def _draft_answer(response: TestResponse, version: int) -> None:
    """Draft answers name the draft's version and never tus."""
    assert response.headers[VERSION] == str(version)
    assert "Tus-Resumable" not in response.headers


def test_the_interop_9_walk_through(endpoint: Endpoint) -> None:
    created = _create(endpoint, 9, False, {
        "Upload-Length": "11", "Content-Type": "text/plain",
        "Content-Disposition": 'attachment; filename="hello.txt"'})
    assert created.status_code == 201
    _draft_answer(created, 9)
    assert created.headers["Upload-Offset"] == "0"
    assert created.headers["Upload-Complete"] == "?0"
    assert created.headers["Upload-Length"] == "11"
    assert created.headers["Upload-Limit"] == _limit(9)
    path = path_of(created.headers["Location"])

    appended = _append(endpoint, 9, path, 0, b"hello", False)
    assert appended.status_code == 204
    _draft_answer(appended, 9)
    assert (appended.headers["Upload-Offset"], appended.headers["Upload-Complete"]) == ("5", "?0")
    assert appended.headers["Upload-Length"] == "11"

    head = endpoint.request("HEAD", path, {VERSION: "9"})
    assert head.status_code == 204
    _draft_answer(head, 9)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Complete"]) == ("5", "?0")
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Upload-Limit"] == _limit(9)

    conflict = _append(endpoint, 9, path, 3, b"lo world", True)
    assert conflict.status_code == 409
    _draft_answer(conflict, 9)
    assert conflict.mimetype == "application/problem+json"
    assert (conflict.headers["Upload-Offset"], conflict.headers["Upload-Complete"]) == ("5", "?0")
    assert json.loads(conflict.get_data()) == {
        "type": PROBLEMS + "mismatching-upload-offset",
        "title": "offset from request does not match offset of resource",
        "expected-offset": 5,
        "provided-offset": 3,
    }
    assert endpoint.offset(path) == 5

    completed = _append(endpoint, 9, path, 5, b" world", True)
    assert completed.status_code == 204
    assert (completed.headers["Upload-Offset"], completed.headers["Upload-Complete"]) == (
        "11", "?1")

    # The same upload through tus: its metadata came from the draft's headers.
    tus_head = endpoint.head(path)
    assert tus_head.headers["Upload-Offset"] == "11"
    assert parse_metadata(tus_head.headers["Upload-Metadata"]) == {
        "filename": b"hello.txt", "filetype": b"text/plain"}
    download = endpoint.request("GET", path)
    assert download.get_data() == b"hello world"
    assert download.headers["Content-Disposition"] == 'inline; filename="hello.txt"'


def test_optimistic_creation_carries_the_whole_file(endpoint: Endpoint) -> None:
    created = _create(endpoint, 9, True, {"Content-Type": "text/plain"}, b"hello world")
    assert created.status_code == 201
    _draft_answer(created, 9)
    assert created.headers["Upload-Offset"] == created.headers["Upload-Length"] == "11"
    assert created.headers["Upload-Complete"] == "?1"
    assert endpoint.request("GET", path_of(created.headers["Location"])).get_data() == (
        b"hello world")


@pytest.mark.parametrize("version", range(3, 10))
def test_what_differs_by_version(endpoint: Endpoint, version: int) -> None:
    """One upload per version through protocol.md's table: the completeness field, the
    append's answer and type, Upload-Limit, and the form of a conflict."""
    created = _create(endpoint, version, False, {"Upload-Length": "10"})
    assert created.status_code == 201
    _draft_answer(created, version)
    assert {name: created.headers.get(name) for name in _flag(version, False)} == _flag(
        version, False)
    assert created.headers.get("Upload-Limit") == _limit(version)
    path = path_of(created.headers["Location"])

    octets = _append(endpoint, version, path, 0, b"hel", False,
                     **{"Content-Type": "application/octet-stream"})
    if version >= 6:
        assert octets.status_code == 415
        assert octets.headers["Accept-Patch"] == PARTIAL_UPLOAD
        octets = _append(endpoint, version, path, 0, b"hel", False)
    assert octets.status_code == (201 if version <= 6 else 204)
    assert octets.headers["Upload-Offset"] == "3"
    assert octets.headers.get("Upload-Limit") == _limit(version)

    conflict = _append(endpoint, version, path, 1, b"lo", False)
    assert conflict.status_code == 409
    assert conflict.headers["Upload-Offset"] == "3"
    if version >= 6:
        assert json.loads(conflict.get_data())["type"] == PROBLEMS + "mismatching-upload-offset"
    else:
        assert conflict.mimetype == "text/plain"

    done = _append(endpoint, version, path, 3, b"lo worl", True)
    assert done.status_code == (201 if version <= 6 else 204)
    assert {name: done.headers.get(name) for name in _flag(version, True)} == _flag(
        version, True)

    again = _append(endpoint, version, path, 10, b"", True)  # a completion asked again
    assert again.status_code in (201, 204)
    assert again.headers["Upload-Offset"] == "10"

    more = _append(endpoint, version, path, 10, b"!", True)
    assert more.status_code == 400
    if version <= 5:
        assert more.mimetype == "text/plain"
    else:
        kind = "completed-upload" if version <= 8 else "inconsistent-upload-length"
        assert json.loads(more.get_data())["type"] == PROBLEMS + kind
    assert endpoint.request("GET", path).get_data() == b"hello worl"


@pytest.mark.parametrize(("name", "headers", "status"), [
    ("no-offset", {"Upload-Offset": None}, 400),
    ("offset-not-an-integer", {"Upload-Offset": "five"}, 400),
    ("no-completeness", {"Upload-Complete": None}, 400),
    ("completeness-not-boolean", {"Upload-Complete": "yes"}, 400),
])
def test_an_append_without_its_fields_is_refused(
    endpoint: Endpoint, name: str, headers: dict[str, str | None], status: int
) -> None:
    path = path_of(_create(endpoint, 9, False, {"Upload-Length": "10"}).headers["Location"])
    sent = {VERSION: "9", "Upload-Offset": "0", "Upload-Complete": "?0",
            "Content-Type": PARTIAL_UPLOAD}
    for header, value in headers.items():
        if value is None:
            del sent[header]
        else:
            sent[header] = value
    response = endpoint.request("PATCH", path, sent, b"hello")
    assert response.status_code == status
    _draft_answer(response, 9)
    assert endpoint.offset(path) == 0


def test_limits_unknown_uploads_and_cancellation(endpoint: Endpoint) -> None:
    too_large = _create(endpoint, 9, False, {"Upload-Length": str(MAX_SIZE + 1)})
    assert too_large.status_code == 413
    assert too_large.headers["Upload-Limit"] == _limit(9)
    assert endpoint.upload_ids() == set()

    unknown = BASE + "0" * 32
    assert endpoint.request("HEAD", unknown, {VERSION: "9"}).status_code == 404
    assert _append(endpoint, 9, unknown, 0, b"x", False).status_code == 404

    path = path_of(_create(endpoint, 9, False, {"Upload-Length": "10"}).headers["Location"])
    cancelled = endpoint.request("DELETE", path, {VERSION: "9"})
    assert cancelled.status_code == 204
    _draft_answer(cancelled, 9)
    assert endpoint.request("HEAD", path, {VERSION: "9"}).status_code == 404


def test_a_version_not_spoken_is_a_tus_request(endpoint: Endpoint) -> None:
    response = endpoint.request("POST", BASE, {VERSION: "99", "Upload-Length": "5",
                                               "Upload-Complete": "?0"})
    assert response.status_code == 412
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert VERSION not in response.headers


@pytest.mark.parametrize("matches", [True, False], ids=["matching", "mismatching"])
def test_content_digest_is_checked_as_the_content_streams(
    endpoint: Endpoint, matches: bool
) -> None:
    path = path_of(_create(endpoint, 9, False, {"Upload-Length": "10"}).headers["Location"])
    digest = base64.b64encode(
        hashlib.sha256(b"hello" if matches else b"olleh").digest()).decode()
    response = _append(endpoint, 9, path, 0, b"hello", False,
                       **{"Content-Digest": f"sha-256=:{digest}:"})
    assert response.status_code == (204 if matches else 400)
    assert endpoint.offset(path) == (5 if matches else 0)
