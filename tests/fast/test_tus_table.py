"""tus 1.0 as protocol.md states it: one table of request → answer, every row on both registries.

Each row is sent to a fresh endpoint (``--max-size 1000``) holding these
uploads, made through the protocol itself:

* **U1** length 100, offset 70
* **UC** length 100, complete
* **UD** deferred length, offset 10
* **P**  a partial upload, length 10, offset 5
* **F**  a final upload of P alone, waiting for it
* **X**  length 100, offset 20, past its expiry (not yet collected)
* **N**  a well-formed id that was never created

Besides the row's own expectations, every answer must carry
``Tus-Resumable: 1.0.0``, and every upload must be where the row says
afterwards: untouched unless the row names it (an error changes nothing),
with no upload made but those the row creates.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass, field

import pytest

from .harness import (
    BASE,
    MAX_SIZE,
    OFFSET_STREAM,
    TUS,
    Endpoint,
    path_of,
    pattern,
    unknown_path,
    upload_id,
)

#: RFC 9110 IMF-fixdate, as Upload-Expires must be.
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT"
)
LOCATION = re.compile(r"http://localhost/files/[0-9a-f]{32}")
EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum,"
    "checksum-trailer,concatenation,concatenation-unfinished"
)
ALGORITHMS = "sha1,md5,sha256,sha512,crc32"
ORIGINAL_OFFSETS = {"U1": 70, "UC": 100, "UD": 10, "P": 5, "F": 0, "X": 20}
U1_DATA = pattern(100, seed=1)


class Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


PRESENT = Marker("PRESENT")
ABSENT = Marker("ABSENT")
#: What a header of an answer must be: exactly this text (``{P}`` names an upload's
#: path), there or not there, a match of the pattern, or these comma-separated items.
Expected = str | Marker | re.Pattern[str] | frozenset[str]


def digest(algorithm: str, data: bytes) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def at(offset: int | str, **more: str) -> dict[str, str]:
    """The headers of a PATCH at ``offset``."""
    return {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": str(offset), **more}


def creating(**more: str) -> dict[str, str]:
    return {**TUS, **{name.replace("_", "-"): value for name, value in more.items()}}


@dataclass(frozen=True)
class Row:
    method: str
    #: "collection", an upload's name above, or a path.
    target: str
    headers: dict[str, str]
    status: int
    expect: dict[str, Expected] = field(default_factory=dict)
    body: bytes = b""
    #: The answer's whole body, when protocol.md quotes it.
    text: str | None = None
    #: Uploads the row changes: their offset afterwards, None when gone.
    after: dict[str, int | None] = field(default_factory=dict)
    #: Uploads the row creates.
    creates: int = 0


def row(name: str, *args: object, **kwargs: object) -> pytest.ParameterSet:
    return pytest.param(Row(*args, **kwargs), id=name)  # type: ignore[arg-type]


ROWS = [
    # -- OPTIONS ------------------------------------------------------------------------
    row("options", "OPTIONS", "collection", {}, 204, {
        "Tus-Version": "1.0.0", "Tus-Extension": EXTENSIONS, "Tus-Checksum-Algorithm": ALGORITHMS,
        "Tus-Max-Size": str(MAX_SIZE)}),
    row("options-ignores-version", "OPTIONS", "collection", {"Tus-Resumable": "0.2.2"}, 204,
        {"Tus-Version": "1.0.0"}),
    row("options-upload-url", "OPTIONS", "N", {}, 204, {"Tus-Version": "1.0.0"}),
    row("options-deeper-path", "OPTIONS", BASE + "a/b", {}, 404),
    # -- POST -----------------------------------------------------------------------------
    row("post", "POST", "collection", creating(Upload_Length="11"), 201,
        {"Location": LOCATION, "Upload-Expires": IMF_FIXDATE, "Upload-Offset": ABSENT},
        creates=1),
    row("post-without-version", "POST", "collection", {"Upload-Length": "11"}, 412,
        {"Tus-Version": "1.0.0"}),
    row("post-other-version", "POST", "collection",
        {"Tus-Resumable": "0.2.2", "Upload-Length": "11"}, 412, {"Tus-Version": "1.0.0"}),
    row("post-without-length", "POST", "collection", creating(), 400,
        text="Upload-Length or Upload-Defer-Length: 1 is required"),
    row("post-length-and-defer", "POST", "collection",
        creating(Upload_Length="5", Upload_Defer_Length="1"), 400,
        text="send Upload-Length or Upload-Defer-Length, not both"),
    row("post-defer-2", "POST", "collection", creating(Upload_Defer_Length="2"), 400,
        text="Upload-Defer-Length must be 1"),
    *[
        row(f"post-length-{value}", "POST", "collection", creating(Upload_Length=value), 400,
            text="Upload-Length must be a non-negative integer")
        for value in ("-1", "abc", "1.5", "+5", "0x10", "1 0", "99999999999999999999")
    ],
    row("post-length-past-2^63-1", "POST", "collection",
        creating(Upload_Length=str(2**63)), 400),
    row("post-above-max-size", "POST", "collection", creating(Upload_Length=str(MAX_SIZE + 1)),
        413, text=f"Upload-Length exceeds the maximum of {MAX_SIZE} bytes"),
    row("post-length-0", "POST", "collection", creating(Upload_Length="0"), 201,
        {"Location": LOCATION, "Upload-Expires": ABSENT}, creates=1),
    row("post-deferred", "POST", "collection", creating(Upload_Defer_Length="1"), 201,
        {"Upload-Expires": IMF_FIXDATE}, creates=1),
    *[
        row(f"post-metadata-{name}", "POST", "collection",
            creating(Upload_Length="5", Upload_Metadata=value), 400)
        for name, value in [
            ("not-base64", "filename ***"),
            ("two-spaces", "a YQ== b"),
            ("empty-pair", "a YQ==,,b Yg=="),
            ("repeated-key", "a YQ==,a Yg=="),
            ("non-ascii-key", "k\u00e9y YQ=="),
            ("unpadded", "a YQ"),
        ]
    ],
    row("post-metadata-blank", "POST", "collection",
        creating(Upload_Length="5", Upload_Metadata="  "), 201, creates=1),
    row("post-metadata-too-long", "POST", "collection",
        creating(Upload_Length="5", Upload_Metadata="a " + "QUFB" * 4100), 431),
    row("post-body-other-type", "POST", "collection",
        creating(Upload_Length="11", Content_Type="text/plain"), 415, body=b"hello"),
    row("post-body-longer-than-length", "POST", "collection",
        creating(Upload_Length="3", Content_Type=OFFSET_STREAM), 413, body=b"hello"),
    row("post-with-body", "POST", "collection",
        creating(Upload_Length="11", Content_Type=OFFSET_STREAM), 201,
        {"Upload-Offset": "5", "Location": LOCATION}, body=b"hello", creates=1),
    row("post-empty-other-type", "POST", "collection",
        creating(Upload_Length="5", Content_Type="text/plain"), 201, creates=1),
    row("post-checksum-mismatch-names-upload", "POST", "collection",
        creating(Upload_Length="11", Content_Type=OFFSET_STREAM,
                 Upload_Checksum="sha1 " + digest("sha1", b"hello world")),
        460, {"Location": LOCATION}, body=b"hello WORLD",
        text="Upload-Checksum does not match the body", creates=1),
    row("post-concat-bogus", "POST", "collection",
        creating(Upload_Length="5", Upload_Concat="whole"), 400),
    row("post-to-upload-url", "POST", "U1", dict(TUS), 405,
        {"Allow": frozenset({"PATCH", "GET", "OPTIONS", "HEAD", "DELETE"})}),
    row("put-to-upload-url", "PUT", "U1", dict(TUS), 405),
    # -- HEAD -----------------------------------------------------------------------------
    row("head", "HEAD", "U1", dict(TUS), 200, {
        "Upload-Offset": "70", "Upload-Length": "100", "Upload-Defer-Length": ABSENT,
        "Upload-Expires": IMF_FIXDATE, "Cache-Control": "no-store", "Upload-Concat": ABSENT}),
    row("head-complete", "HEAD", "UC", dict(TUS), 200,
        {"Upload-Offset": "100", "Upload-Length": "100", "Upload-Expires": ABSENT}),
    row("head-deferred", "HEAD", "UD", dict(TUS), 200,
        {"Upload-Offset": "10", "Upload-Defer-Length": "1", "Upload-Length": ABSENT}),
    row("head-partial", "HEAD", "P", dict(TUS), 200,
        {"Upload-Offset": "5", "Upload-Length": "10", "Upload-Concat": "partial"}),
    row("head-waiting-final", "HEAD", "F", dict(TUS), 200, {
        "Upload-Offset": ABSENT, "Upload-Length": "10", "Upload-Concat": "final;{P}",
        "Upload-Defer-Length": ABSENT, "Upload-Expires": ABSENT}),
    row("head-unknown", "HEAD", "N", dict(TUS), 404, {"Upload-Offset": ABSENT}),
    row("head-malformed-id", "HEAD", BASE + "not-an-id", dict(TUS), 404),
    row("head-uppercase-id", "HEAD", BASE + "0123456789ABCDEF0123456789ABCDEF", dict(TUS), 404),
    row("head-without-version", "HEAD", "U1", {}, 412, {"Tus-Version": "1.0.0"}),
    row("head-expired", "HEAD", "X", dict(TUS), 410, {"Upload-Offset": ABSENT}),
    row("head-override-ignored", "HEAD", "U1", {**TUS, "X-HTTP-Method-Override": "DELETE"},
        200, {"Upload-Offset": "70"}),
    # -- PATCH ----------------------------------------------------------------------------
    row("patch", "PATCH", "U1", at(70), 204,
        {"Upload-Offset": "80", "Upload-Expires": IMF_FIXDATE}, body=U1_DATA[70:80],
        after={"U1": 80}),
    row("patch-completes", "PATCH", "U1", at(70), 204,
        {"Upload-Offset": "100", "Upload-Expires": ABSENT}, body=U1_DATA[70:],
        after={"U1": 100}),
    row("patch-without-version", "PATCH", "U1",
        {"Content-Type": OFFSET_STREAM, "Upload-Offset": "70"}, 412, {"Tus-Version": "1.0.0"},
        body=b"x"),
    row("patch-without-content-type", "PATCH", "U1", {**TUS, "Upload-Offset": "70"}, 415,
        body=b"x"),
    row("patch-other-content-type", "PATCH", "U1",
        at(70, **{"Content-Type": "application/octet-stream"}), 415, body=b"x"),
    row("patch-content-type-any-case", "PATCH", "U1",
        at(70, **{"Content-Type": "Application/Offset+Octet-Stream; charset=x"}), 204,
        {"Upload-Offset": "75"}, body=U1_DATA[70:75], after={"U1": 75}),
    row("patch-without-offset", "PATCH", "U1", {**TUS, "Content-Type": OFFSET_STREAM}, 400,
        body=b"x"),
    *[
        row(f"patch-offset-{value}", "PATCH", "U1", at(value), 400, body=b"x")
        for value in ("-5", "x", "70.0", "0x46", "7 0")
    ],
    row("patch-length-not-integer", "PATCH", "U1", at(70, **{"Upload-Length": "abc"}), 400,
        body=b"x"),
    *[
        row(f"patch-checksum-{name}", "PATCH", "U1", at(70, **{"Upload-Checksum": value}), 400,
            body=b"x")
        for name, value in [
            ("no-digest", "sha1"),
            ("two-spaces", "sha1 " + digest("sha1", b"x") + " x"),
            ("not-base64", "sha1 ***"),
            ("wrong-length", "md5 " + digest("sha1", b"x")),
        ]
    ],
    row("patch-checksum-unsupported", "PATCH", "U1", at(70, **{"Upload-Checksum": "sha999 AAAA"}),
        400, body=b"x",
        text=f"checksum algorithm 'sha999' is not supported; use one of {ALGORITHMS}"),
    row("patch-checksum-header-and-trailer", "PATCH", "U1",
        at(70, **{"Upload-Checksum": "sha1 " + digest("sha1", b"x"),
                  "Trailer": "Upload-Checksum"}), 400, body=b"x"),
    row("patch-trailer-without-chunked-body", "PATCH", "U1",
        at(70, **{"Trailer": "Upload-Checksum"}), 400, body=b"x"),
    row("patch-unknown", "PATCH", "N", at(0), 404, body=b"x"),
    row("patch-malformed-id", "PATCH", BASE + "not-an-id", at(0), 404, body=b"x"),
    row("patch-expired", "PATCH", "X", at(20), 410, body=b"x",
        text="upload expired before it was finished"),
    row("patch-final", "PATCH", "F", at(0), 403, body=b"x"),
    row("patch-offset-behind", "PATCH", "U1", at(3), 409, {"Upload-Offset": "70"}, body=b"x",
        text="Upload-Offset 3 does not match the upload's offset 70"),
    row("patch-offset-ahead", "PATCH", "U1", at(71), 409, {"Upload-Offset": "70"}, body=b"x"),
    row("patch-same-length", "PATCH", "U1", at(70, **{"Upload-Length": "100"}), 204,
        {"Upload-Offset": "75"}, body=U1_DATA[70:75], after={"U1": 75}),
    row("patch-changes-length", "PATCH", "U1", at(70, **{"Upload-Length": "99"}), 400,
        body=b"x"),
    row("patch-declares-length", "PATCH", "UD", at(10, **{"Upload-Length": "20"}), 204,
        {"Upload-Offset": "20", "Upload-Expires": ABSENT}, body=pattern(10), after={"UD": 20}),
    row("patch-declares-length-below-offset", "PATCH", "UD", at(10, **{"Upload-Length": "5"}),
        400),
    row("patch-declares-length-above-max-size", "PATCH", "UD",
        at(10, **{"Upload-Length": str(MAX_SIZE + 1)}), 413),
    row("patch-declares-length-at-offset", "PATCH", "UD", at(10, **{"Upload-Length": "10"}), 204,
        {"Upload-Offset": "10", "Upload-Expires": ABSENT}),
    row("patch-content-length-past-length", "PATCH", "U1", at(70), 413, {"Upload-Offset": "70"},
        body=pattern(31), text="body of 31 bytes exceeds the 30 bytes left in this upload"),
    row("patch-deferred-past-max-size", "PATCH", "UD", at(10), 413, {"Upload-Offset": "10"},
        body=pattern(MAX_SIZE - 9)),
    row("patch-complete-empty", "PATCH", "UC", at(100), 204, {"Upload-Offset": "100"}),
    row("patch-complete-one-byte", "PATCH", "UC", at(100), 413, body=b"x"),
    row("patch-complete-wrong-offset", "PATCH", "UC", at(50), 409, {"Upload-Offset": "100"},
        body=b"x"),
    *[
        row(f"patch-checksum-{algorithm}-matches", "PATCH", "U1",
            at(70, **{"Upload-Checksum": f"{algorithm} " + digest(algorithm, U1_DATA[70:80])}),
            204, {"Upload-Offset": "80"}, body=U1_DATA[70:80], after={"U1": 80})
        for algorithm in ("sha1", "md5", "sha256", "sha512")
    ],
    row("patch-checksum-crc32-matches", "PATCH", "U1",
        at(70, **{"Upload-Checksum": "crc32 DUoRhQ=="}), 204, {"Upload-Offset": "81"},
        body=b"hello world", after={"U1": 81}),
    row("patch-checksum-mismatch", "PATCH", "U1",
        at(70, **{"Upload-Checksum": "sha1 " + digest("sha1", b"hello world")}), 460,
        body=b"hello WORLD", text="Upload-Checksum does not match the body"),
    # -- the order of the checks ------------------------------------------------------------
    row("order-version-first", "PATCH", "N", {"Upload-Offset": "x"}, 412, body=b"x"),
    row("order-content-type-before-offset", "PATCH", "N",
        {**TUS, "Upload-Offset": "x", "Content-Type": "text/plain"}, 415, body=b"x"),
    row("order-offset-before-existence", "PATCH", "N", at("x"), 400, body=b"x"),
    row("order-checksum-before-existence", "PATCH", "N",
        at(0, **{"Upload-Checksum": "sha999 AAAA"}), 400, body=b"x"),
    row("order-expiry-before-offset", "PATCH", "X", at(0), 410, body=b"x"),
    row("order-final-before-offset", "PATCH", "F", at(99), 403, body=b"x"),
    row("order-offset-before-length", "PATCH", "U1", at(0, **{"Upload-Length": "99"}), 409,
        body=b"x"),
    row("order-offset-before-size", "PATCH", "U1", at(0), 409, body=pattern(31)),
    # -- method override ----------------------------------------------------------------------
    row("override-patch", "POST", "U1", at(70, **{"X-HTTP-Method-Override": "PATCH"}), 204,
        {"Upload-Offset": "100"}, body=U1_DATA[70:], after={"U1": 100}),
    row("override-patch-lowercase", "POST", "U1", at(70, **{"X-HTTP-Method-Override": "patch"}),
        204, {"Upload-Offset": "80"}, body=U1_DATA[70:80], after={"U1": 80}),
    row("override-patch-rules", "POST", "U1", at(3, **{"X-HTTP-Method-Override": "PATCH"}), 409,
        {"Upload-Offset": "70"}, body=b"x"),
    row("override-delete", "POST", "U1", {**TUS, "X-HTTP-Method-Override": "DELETE"}, 204,
        after={"U1": None}),
    row("get-override-ignored", "GET", "UC", {"X-HTTP-Method-Override": "DELETE"}, 200),
    # -- DELETE ---------------------------------------------------------------------------
    row("delete", "DELETE", "U1", dict(TUS), 204, after={"U1": None}),
    row("delete-complete", "DELETE", "UC", dict(TUS), 204, after={"UC": None}),
    row("delete-final", "DELETE", "F", dict(TUS), 204, after={"F": None}),
    row("delete-partial-of-waiting-final", "DELETE", "P", dict(TUS), 204, after={"P": None}),
    row("delete-unknown", "DELETE", "N", dict(TUS), 404),
    row("delete-without-version", "DELETE", "U1", {}, 412),
    row("delete-expired", "DELETE", "X", dict(TUS), 410),
    # -- GET --------------------------------------------------------------------------------
    row("get", "GET", "UC", {}, 200, {
        "Content-Length": "100", "Content-Type": "application/octet-stream",
        "Content-Disposition": re.compile(r'attachment; filename="[0-9a-f]{32}"'),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox"}),
    row("get-range", "GET", "UC", {"Range": "bytes=90-"}, 206,
        {"Content-Range": "bytes 90-99/100", "Content-Length": "10"}),
    row("get-range-outside", "GET", "UC", {"Range": "bytes=200-"}, 416),
    row("get-unfinished", "GET", "U1", {}, 404,
        text="upload is not complete yet; HEAD tells how far it is"),
    row("get-unknown", "GET", "N", {}, 404),
    row("get-expired", "GET", "X", {}, 410),
]


@pytest.fixture
def uploads(endpoint: Endpoint) -> dict[str, str]:
    """The uploads of the table, by name, and the paths of the other targets."""
    paths = {
        "U1": endpoint.create(100, U1_DATA[:70]),
        "UC": endpoint.create(100, pattern(100, seed=2)),
        "UD": endpoint.create(None, pattern(10)),
        "P": endpoint.create(10, pattern(5), {"Upload-Concat": "partial"}),
        "X": endpoint.create(100, pattern(20)),
        "N": unknown_path(),
        "collection": BASE,
    }
    final = endpoint.request("POST", BASE, {**TUS, "Upload-Concat": f"final;{paths['P']}"})
    assert final.status_code == 201
    paths["F"] = path_of(final.headers["Location"])
    endpoint.set_expires(paths["X"], time.time() - 1)
    return paths


def _matches(expected: Expected, actual: str | None) -> bool:
    if expected is ABSENT:
        return actual is None
    if expected is PRESENT:
        return actual is not None
    if actual is None:
        return False
    if isinstance(expected, re.Pattern):
        return expected.fullmatch(actual) is not None
    if isinstance(expected, frozenset):
        return {item.strip() for item in actual.split(",")} == expected
    return actual == expected


def _state(endpoint: Endpoint, paths: dict[str, str]) -> dict[str, int | None]:
    state: dict[str, int | None] = {}
    for name in ORIGINAL_OFFSETS:
        record = endpoint.record(paths[name])
        state[name] = None if record is None else record.offset
    return state


@pytest.mark.parametrize("case", ROWS)
def test_row(endpoint: Endpoint, uploads: dict[str, str], case: Row) -> None:
    assert _state(endpoint, uploads) == ORIGINAL_OFFSETS
    before = endpoint.upload_ids()
    path = uploads.get(case.target, case.target)
    headers = {name: value.format_map(uploads) for name, value in case.headers.items()}

    response = endpoint.request(case.method, path, headers, case.body)

    assert response.status_code == case.status, response.get_data(as_text=True)
    assert response.headers.get("Tus-Resumable") == "1.0.0"
    for name, expected in case.expect.items():
        if isinstance(expected, str):
            expected = expected.format_map(uploads)
        actual = response.headers.get(name)
        assert _matches(expected, actual), f"{name}: {actual!r}, expected {expected!r}"
    if case.text is not None:
        assert response.mimetype == "text/plain"
        assert response.get_data(as_text=True) == case.text + "\n"
    assert _state(endpoint, uploads) == {**ORIGINAL_OFFSETS, **case.after}
    after = endpoint.upload_ids()
    gone = {upload_id(uploads[name]) for name, offset in case.after.items() if offset is None}
    assert before - after == gone
    assert len(after - before) == case.creates
