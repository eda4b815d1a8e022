"""Hostile input against the real server under gunicorn, on both registries.

Design invariant 7: bad input gets a clear 4xx, never a 5xx, and never a side
effect. Four groups of tests:

* fuzzing (hypothesis) of every tus header, of raw header bytes and of upload
  ids and paths: no 5xx, and a 4xx leaves the uploads as they were (HEAD of a
  set of witness uploads, their data file sizes, and the set of sidecar files);
* limits: Upload-Metadata size (431), gunicorn's header limits, the number of
  parts of a final concatenation, Tus-Max-Size for bodies without a length;
* downloads: active content is never served inline, and no file name can
  inject or split a response header;
* access control through ``--auth-hook``: 401/403 change nothing, OPTIONS
  passes without a token, and the hook sees the right action names.

Every request whose bytes matter goes through :func:`raw_request` (a plain
socket), so values that HTTP libraries refuse reach the server unchanged.
Each test prints ``<scenario>: inputs tried N, 5xx 0, state changes on 4xx 0``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ..support import (
    OFFSET_STREAM,
    RawResponse,
    Server,
    TusClient,
    b64,
    chunked_request,
    encode_metadata,
    raw_request,
    upload_id,
)

BASE = "/files/"
LIMIT_MAX_SIZE = 100_000
LIMIT_CONCAT_PARTS = 50
DEFAULT_CONCAT_PARTS = 1000
DEFAULT_METADATA_SIZE = 16 * 1024
GUNICORN_FIELD_LIMIT = 65536  # limit_request_field_size set by resumable serve

# Example counts: at ~15 ms per example the whole file stays under a minute.
STRUCTURED_EXAMPLES = 450
RAW_BYTES_EXAMPLES = 250
PATH_EXAMPLES = 250
#: Inputs sent by every fuzz test of this run, for the running total they print.
FUZZ_TOTAL: Counter = Counter()


def sidecars(server: Server) -> frozenset[str]:
    """The sidecar records on disk: one per upload that exists."""
    return frozenset(path.name for path in (server.data_dir / "uploads").glob("*.json"))


def report(scenario: str, tried: int, server_errors: int, changed: int, extra: str = "") -> None:
    line = f"{scenario}: inputs tried {tried}, 5xx {server_errors}, state changes on 4xx {changed}"
    print(line + (f" ({extra})" if extra else ""))


# --------------------------------------------------------------------------
# Witness uploads and state snapshots
# --------------------------------------------------------------------------

WITNESS_METADATA = f"filename {b64('hello.txt')},filetype {b64('text/plain')},empty"
ROLES = ("plain", "fresh", "deferred", "done", "partial", "partial_open", "final")


@dataclass(frozen=True)
class Snapshot:
    uploads: tuple[tuple, ...]  # per role: role, id, HEAD status and tus headers, file size
    files: frozenset[str]

    def offset(self, role: str) -> str:
        for entry in self.uploads:
            if entry[0] == role:
                return entry[3] or "0"
        return "0"

    def differences(self, other: Snapshot) -> list[str]:
        changes = [
            f"{a} -> {b}" for a, b in zip(self.uploads, other.uploads, strict=True) if a != b
        ]
        if self.files != other.files:
            changes.append(
                f"sidecars added {sorted(other.files - self.files)} "
                f"removed {sorted(self.files - other.files)}"
            )
        return changes


class Witnesses:
    """Uploads in every state a request can meet, and the state they are in.

    ``plain`` (100 bytes, 40 in, metadata), ``fresh`` (20, none in),
    ``deferred`` (length deferred, 10 in), ``done`` (complete), ``partial``
    (complete partial), ``partial_open`` (partial, 2 of 10 in) and ``final``
    (``partial`` twice). A 2xx may change one; it is then made again.
    """

    def __init__(self, server: Server):
        self.server = server
        self.tus = TusClient(server.endpoint)
        self.ids: dict[str, str] = {}
        for role in ROLES:
            self.make(role)
        self.current = self.snapshot()

    def make(self, role: str) -> None:
        tus = self.tus
        if role == "plain":
            url = tus.new_upload(100, headers={"Upload-Metadata": WITNESS_METADATA})
            assert tus.patch(url, 0, b"p" * 40).status_code == 204
        elif role == "fresh":
            url = tus.new_upload(20)
        elif role == "deferred":
            url = tus.new_upload(None, headers={"Upload-Defer-Length": "1"})
            assert tus.patch(url, 0, b"d" * 10).status_code == 204
        elif role == "done":
            url = tus.new_upload(5, data=b"done!")
        elif role == "partial":
            url = tus.new_upload(3, headers={"Upload-Concat": "partial"}, data=b"abc")
        elif role == "partial_open":
            url = tus.new_upload(10, headers={"Upload-Concat": "partial"}, data=b"op")
        else:
            part = f"{BASE}{self.ids['partial']}"
            url = tus.new_upload(None, headers={"Upload-Concat": f"final;{part}"})
        self.ids[role] = upload_id(url)

    def snapshot(self) -> Snapshot:
        entries = []
        for role in ROLES:
            uid = self.ids[role]
            head = self.tus.head(self.server.endpoint + uid)
            names = ("Upload-Offset", "Upload-Length", "Upload-Defer-Length")
            names += ("Upload-Metadata", "Upload-Concat")
            values = tuple(head.headers.get(name) for name in names)
            try:
                size = (self.server.data_dir / "uploads" / uid).stat().st_size
            except FileNotFoundError:
                size = -1
            entries.append((role, uid, head.status_code, *values, size))
        return Snapshot(tuple(entries), sidecars(self.server))

    def repair(self, changed: Snapshot) -> None:
        """Make again every witness a successful request changed."""
        for before, after in zip(self.current.uploads, changed.uploads, strict=True):
            if before != after:
                self.make(before[0])
        self.current = self.snapshot()

    def resolve(self, value: bytes, role: str) -> bytes:
        """Fill in the placeholders a generated request may hold."""
        if b"@" not in value:
            return value
        uid = self.ids[role].encode()
        base = BASE.encode()
        replacements = {
            b"@ID@": uid,
            b"@IDUP@": uid.upper(),
            b"@IDSHORT@": uid[:-1],
            b"@OFF@": self.current.offset(role).encode(),
            b"@URL@": self.server.endpoint.encode() + uid,
            b"@PART@": base + self.ids["partial"].encode(),
            b"@OPEN@": base + self.ids["partial_open"].encode(),
            b"@HOST@": f"127.0.0.1:{self.server.port}".encode(),
        }
        for placeholder, real in replacements.items():
            value = value.replace(placeholder, real)
        return value


@dataclass(frozen=True)
class FuzzRequest:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    role: str = "plain"


@dataclass
class FuzzRun:
    """Sends generated requests and checks invariant 7 after each one."""

    server: Server
    witnesses: Witnesses
    tried: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    changed_on_4xx: list[str] = field(default_factory=list)
    no_answer: list[str] = field(default_factory=list)
    created_then_refused: int = 0
    log_start: int = 0

    def __post_init__(self) -> None:
        self.log_start = len(self.server.log())

    def send(self, request: FuzzRequest) -> None:
        w = self.witnesses
        before = w.current
        target = w.resolve(request.target, request.role)
        headers = [(name, w.resolve(value, request.role)) for name, value in request.headers]
        body = w.resolve(request.body, request.role)
        response = raw_request(self.server, request.method, target, headers, body)
        self.tried += 1
        self.statuses[response.status] += 1
        described = f"{request.method!r} {target!r} headers={headers!r} body={body[:40]!r}"
        after = w.snapshot()
        if response.status == 0:
            self.no_answer.append(f"{described} -> {response.head[:200]!r}")
        elif response.status >= 500:
            self.server_errors.append(f"{described} -> {response.status} {response.body[:200]!r}")
        if 400 <= response.status < 500:
            changes = before.differences(after)
            location = response.get("location")
            refused_body = response.status == 460 and location
            if changes and refused_body and self._only_created(before, after, location):
                # Creation with upload whose body failed its checksum: the upload was
                # created before the body arrived, is empty, and Location names it
                # (spec digest 2.2); nothing else may have changed.
                self.created_then_refused += 1
                w.current = after
            elif changes:
                self.changed_on_4xx.append(f"{described} -> {response.status}: {changes}")
                w.repair(after)
            else:
                w.current = after
        elif after != before:
            w.repair(after)

    def _only_created(self, before: Snapshot, after: Snapshot, location: str) -> bool:
        if before.uploads != after.uploads:
            return False
        new = upload_id(location)
        if after.files - before.files != {f"{new}.json"} or before.files - after.files:
            return False
        head = self.witnesses.tus.head(location)
        return head.status_code == 200 and head.headers.get("Upload-Offset") == "0"

    def finish(self, scenario: str) -> None:
        new_log = self.server.log()[self.log_start :]
        tracebacks = new_log.count("Traceback")
        extra = (
            f"statuses {dict(sorted(self.statuses.items()))}; "
            f"created then refused with Location {self.created_then_refused}"
        )
        FUZZ_TOTAL["inputs"] += self.tried
        extra += f"; all fuzz inputs so far {FUZZ_TOTAL['inputs']}"
        report(scenario, self.tried, len(self.server_errors), len(self.changed_on_4xx), extra)
        problems = []
        for title, items in (
            ("5xx answers", self.server_errors),
            ("4xx answers that changed state", self.changed_on_4xx),
            ("requests without an answer", self.no_answer),
        ):
            if items:
                shortest = sorted(items, key=len)[:5]
                problems.append(f"{len(items)} {title}, e.g.:\n  " + "\n  ".join(shortest))
        if tracebacks:
            first = new_log[new_log.index("Traceback") :][:2500]
            problems.append(f"server log has {tracebacks} tracebacks, the first:\n{first}")
        assert not problems, "\n".join(problems)
        assert self.tried > 0


def run_fuzz(fuzz: FuzzRun, strategy: st.SearchStrategy, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(request: FuzzRequest) -> None:
        fuzz.send(request)

    one()


# --------------------------------------------------------------------------
# Request strategies
# --------------------------------------------------------------------------

FUZZED_HEADERS = (
    b"Upload-Length",
    b"Upload-Offset",
    b"Upload-Metadata",
    b"Upload-Concat",
    b"Upload-Checksum",
    b"Upload-Defer-Length",
    b"Tus-Resumable",
    b"Content-Type",
    b"X-HTTP-Method-Override",
)

TR = (b"Tus-Resumable", b"1.0.0")
CT = (b"Content-Type", OFFSET_STREAM.encode())


def _sha1(data: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(data).digest())


#: Valid requests of every kind; the fuzzer starts from one and mangles it.
SCENARIOS: tuple[tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...], bytes], ...] = (
    (b"POST", b"/files/", (TR, (b"Upload-Length", b"10")), b""),
    (
        b"POST",
        b"/files/",
        (TR, (b"Upload-Length", b"10"), (b"Upload-Metadata", WITNESS_METADATA.encode())),
        b"",
    ),
    (
        b"POST",
        b"/files/",
        (TR, (b"Upload-Length", b"10"), CT, (b"Upload-Checksum", b"sha1 " + _sha1(b"hello"))),
        b"hello",
    ),
    (b"POST", b"/files/", (TR, (b"Upload-Defer-Length", b"1")), b""),
    (b"POST", b"/files/", (TR, (b"Upload-Concat", b"partial"), (b"Upload-Length", b"3")), b""),
    (b"POST", b"/files/", (TR, (b"Upload-Concat", b"final;@PART@")), b""),
    (b"POST", b"/files/", (TR, (b"Upload-Concat", b"final;@PART@ @PART@")), b""),
    (b"PATCH", b"/files/@ID@", (TR, CT, (b"Upload-Offset", b"@OFF@")), b"xy"),
    (
        b"PATCH",
        b"/files/@ID@",
        (TR, CT, (b"Upload-Offset", b"@OFF@"), (b"Upload-Checksum", b"sha1 " + _sha1(b"xy"))),
        b"xy",
    ),
    (
        b"PATCH",
        b"/files/@ID@",
        (TR, CT, (b"Upload-Offset", b"@OFF@"), (b"Upload-Length", b"60")),
        b"",
    ),
    (
        b"POST",
        b"/files/@ID@",
        (TR, (b"X-HTTP-Method-Override", b"PATCH"), CT, (b"Upload-Offset", b"@OFF@")),
        b"xy",
    ),
    (b"POST", b"/files/@ID@", (TR, (b"X-HTTP-Method-Override", b"DELETE")), b""),
    (b"HEAD", b"/files/@ID@", (TR,), b""),
    (b"DELETE", b"/files/@ID@", (TR,), b""),
    (b"GET", b"/files/@ID@", (), b""),
    (b"OPTIONS", b"/files/", (), b""),
)

_NUMBERS = st.one_of(
    st.integers(0, 200).map(lambda n: str(n).encode()),
    st.integers(-(10**25), 10**25).map(lambda n: str(n).encode()),
    st.sampled_from(
        [
            b"",
            b" ",
            b"-0",
            b"+5",
            b"0x10",
            b"1e3",
            b"1.5",
            b"007",
            b"9" * 19,
            b"9" * 20,
            b"9223372036854775807",
            b"9223372036854775808",
            b"\xb2",  # superscript two (latin-1)
            b"\xd9\xa1",  # ARABIC-INDIC DIGIT ONE as UTF-8
            b"1,2",
            b"1 2",
            b"@OFF@",
            b"@OFF@0",
            b" @OFF@ ",
            b"@OFF@,@OFF@",
            b"\t@OFF@",
        ]
    ),
)

_URL_PART = st.builds(
    lambda scheme, host, path, suffix: scheme + host + path + suffix,
    st.sampled_from([b"", b"", b"http://", b"https://", b"//", b"ftp://", b"http://user:pw@"]),
    st.sampled_from(
        [b"", b"", b"127.0.0.1", b"@HOST@", b"[::1]", b"[", b"]", b"[::1", b"h:99999", b"\xe9"]
    ),
    st.one_of(
        st.sampled_from(
            [
                b"@PART@",
                b"@OPEN@",
                b"/files/@ID@",
                b"@ID@",
                b"/other/@ID@",
                b"/files/%2e%2e/@ID@",
                b"/files/@ID@%00",
                b"/files/@IDUP@",
                b"/files/../files/@ID@",
                b"%2ffiles%2f@ID@",
            ]
        ),
        st.text(alphabet="/%.:[]@?#0123456789abcdefxyz", max_size=40).map(str.encode),
    ),
    st.sampled_from([b"", b"", b"?q=1", b"#frag", b"/", b";x"]),
)

_CONCAT = st.one_of(
    st.sampled_from(
        [
            b"partial",
            b"partial ",
            b"PARTIAL",
            b"final",
            b"final;",
            b"final; ",
            b"partial;@PART@",
            b"final;@PART@;@PART@",
            b"final,@PART@",
        ]
    ),
    st.builds(
        lambda prefix, urls, separator: prefix + separator.join(urls),
        st.sampled_from([b"final;", b"final; ", b"final ;", b"FINAL;", b"final;;", b" final;"]),
        st.lists(_URL_PART, max_size=4),
        st.sampled_from([b" ", b"  ", b"\t", b",", b", "]),
    ),
)

_METADATA_KEY = st.one_of(
    st.sampled_from([b"filename", b"filetype", b"k", b"", b"a b", b"a,b", b"\xe9t\xe9"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=6).map(
        lambda text: text.encode("latin-1")
    ),
)
_METADATA_VALUE = st.one_of(
    st.binary(max_size=30).map(base64.b64encode),
    st.sampled_from([b"", b"=", b"AA", b"AA=", b"A===", b"!!!!", b"aGVsbG8", b"aGVs bG8="]),
)
_METADATA = st.one_of(
    st.sampled_from([b"", b" ", b",", b"k", b"k ", b"k  AA==", b"k AA==,k AA==", b"k AA== "]),
    st.builds(
        lambda pairs, separator: separator.join(pairs),
        st.lists(
            st.builds(
                lambda key, space, value: key + space + value,
                _METADATA_KEY,
                st.sampled_from([b" ", b"", b"  ", b"\t"]),
                _METADATA_VALUE,
            ),
            min_size=1,
            max_size=4,
        ),
        st.sampled_from([b",", b", ", b" ,", b",,"]),
    ),
    st.builds(
        lambda n: b"k " + b"A" * n,
        st.sampled_from([DEFAULT_METADATA_SIZE - 2, DEFAULT_METADATA_SIZE - 1, 40_000, 70_000]),
    ),
)

_CHECKSUM = st.one_of(
    st.builds(
        lambda algorithm, space, digest: algorithm + space + digest,
        st.sampled_from(
            [b"sha1", b"md5", b"sha256", b"sha512", b"crc32", b"SHA1", b"sha3", b"", b"md4"]
        ),
        st.sampled_from([b" ", b"", b"  ", b"\t"]),
        st.one_of(
            st.binary(max_size=70).map(base64.b64encode),
            st.sampled_from([b"", b"====", b"AAAA", b"!", b"\xe9\xe9\xe9\xe9", b"AAAA AAAA"]),
        ),
    ),
    st.just(b"sha1 " + _sha1(b"xy")),
)

_SPECIFIC = {
    b"Upload-Length": _NUMBERS,
    b"Upload-Offset": _NUMBERS,
    b"Upload-Metadata": _METADATA,
    b"Upload-Concat": _CONCAT,
    b"Upload-Checksum": _CHECKSUM,
    b"Upload-Defer-Length": st.sampled_from(
        [b"1", b"0", b"2", b"", b" 1", b"1 ", b"01", b"true", b"-1", b"1,1", b"\xb9"]
    ),
    b"Tus-Resumable": st.sampled_from(
        [
            b"1.0.0",
            b"",
            b"1.0",
            b"0.2.2",
            b"1.0.0,1.0.0",
            b" 1.0.0 ",
            b"1.0.0\t",
            b"1.0.0; q=1",
            b"1.0.0 1.0.0",
            b"2",
            b"1.0.0\xa0",
        ]
    ),
    b"Content-Type": st.sampled_from(
        [
            OFFSET_STREAM.encode(),
            OFFSET_STREAM.upper().encode(),
            OFFSET_STREAM.encode() + b"; charset=utf-8",
            OFFSET_STREAM.encode() + b";",
            OFFSET_STREAM.encode() + b"x",
            OFFSET_STREAM.encode() + b", text/html",
            b"application/octet-stream",
            b"",
            b";",
            b"text/plain",
            b"multipart/form-data; boundary=x",
            b"application/offset+octet-stream\xe9",
        ]
    ),
    b"X-HTTP-Method-Override": st.sampled_from(
        [
            b"PATCH",
            b"DELETE",
            b"HEAD",
            b"GET",
            b"OPTIONS",
            b"POST",
            b"patch",
            b"PUT",
            b"TRACE",
            b"CONNECT",
            b"",
            b" PATCH",
            b"PATCH,DELETE",
            b"X" * 16,
            b"X" * 17,
            b"P\xc4TCH",
        ]
    ),
}

#: Anything a header value can hold on the wire but CR and LF.
_RAW_BYTES = st.one_of(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=60,
    ).map(lambda text: text.encode("latin-1")),
    st.binary(max_size=40),
    st.builds(
        lambda prefix, filler, count: prefix + filler * count,
        st.sampled_from([b"", b"1", b"final;", b"k ", b"sha1 ", b"@OFF@"]),
        st.sampled_from([b"A", b"9", b",", b" ", b"\xe9", b"%", b"\t", b"/files/@ID@ "]),
        st.integers(100, 70_000),
    ),
)


def _name_case(name: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([name, name.lower(), name.upper()])


@st.composite
def mangled_requests(draw: st.DrawFn, raw: bool) -> FuzzRequest:
    """A valid request of some kind with one to three tus headers changed,
    dropped, duplicated or added; ``raw``: values are arbitrary bytes."""
    method, target, base, body = draw(st.sampled_from(SCENARIOS))
    headers = list(base)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(FUZZED_HEADERS))
        if raw:
            value = draw(_RAW_BYTES)
        else:
            value = draw(st.one_of(_SPECIFIC[name], _SPECIFIC[name], _RAW_BYTES))
        operation = draw(st.sampled_from(["set", "set", "drop", "duplicate"]))
        existing = [i for i, (key, _) in enumerate(headers) if key == name]
        if operation == "drop":
            headers = [h for h in headers if h[0] != name]
        elif operation == "set" and existing:
            headers[existing[0]] = (draw(_name_case(name)), value)
        else:
            headers.append((draw(_name_case(name)), value))
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=40))
    role = draw(st.sampled_from(ROLES))
    return FuzzRequest(method, target, tuple(headers), body, role)


_PATH_PREFIXES = st.sampled_from(
    [
        b"/files/",
        b"/files/",
        b"/files",
        b"//files/",
        b"/files//",
        b"/FILES/",
        b"/files/./",
        b"/files/../files/",
        b"/files/%2e%2e/files/",
        b"/",
        b"",
        b"*",
        b"http://@HOST@/files/",
        b"http://evil.example/files/",
    ]
)
_ID_PARTS = st.one_of(
    st.sampled_from(
        [
            b"@ID@",
            b"@ID@",
            b"@IDUP@",
            b"@IDSHORT@",
            b"@ID@0",
            b"@ID@.json",
            b"@ID@%00",
            b"@ID@%2f..",
            b"@ID@/..",
            b"@ID@/../@ID@",
            b"../uploads/@ID@.json",
            b"../locks/@ID@.lock",
            b"..%2f..%2fetc%2fpasswd",
            b"../../etc/passwd",
            b"%2e%2e",
            b"%ff%fe",
            b"\xc3\xa9",
            b"0" * 32,
            b"g" * 32,
            b"a" * 5000,
        ]
    ),
    st.text(alphabet="0123456789abcdefABCDEF", max_size=40).map(str.encode),
    st.text(alphabet="/%.;:?#&=+@!$'()*,~_-0123456789abcxyz", max_size=40).map(str.encode),
    st.binary(max_size=20),
)


@st.composite
def path_requests(draw: st.DrawFn) -> FuzzRequest:
    """Every method on hostile paths, with otherwise valid headers."""
    method = draw(
        st.sampled_from([b"HEAD", b"PATCH", b"DELETE", b"GET", b"POST", b"OPTIONS", b"PUT"])
    )
    target = draw(_PATH_PREFIXES) + draw(_ID_PARTS)
    target += draw(st.sampled_from([b"", b"", b"/", b"?", b"?a=b", b"#x", b";x", b"%20"]))
    headers: list[tuple[bytes, bytes]] = [TR]
    body = b""
    if method == b"PATCH":
        headers += [CT, (b"Upload-Offset", b"@OFF@")]
        body = b"z"
    elif method == b"POST":
        headers += [(b"Upload-Length", b"5")]
    return FuzzRequest(method, target, tuple(headers), body, draw(st.sampled_from(ROLES)))


# --------------------------------------------------------------------------
# 7. Fuzzing: never a 5xx, and a 4xx changes nothing
# --------------------------------------------------------------------------

#: Hand-picked inputs, always sent before the generated ones.
CORPUS = (
    FuzzRequest(b"POST", b"/files/", (TR, (b"Upload-Concat", b"final;http://[::1/files/@ID@"))),
    FuzzRequest(b"POST", b"/files/", (TR, (b"Upload-Concat", b"final;http://[/files/@ID@"))),
    FuzzRequest(b"POST", b"/files/", (TR, (b"Upload-Concat", b"final;http://]/files/@ID@"))),
    FuzzRequest(b"POST", b"/files/", (TR, (b"Upload-Length", b"9" * 40))),
    FuzzRequest(b"POST", b"/files/", (TR, (b"Upload-Length", b"1"), (b"Upload-Length", b"1"))),
    FuzzRequest(b"POST", b"/files/", (TR, (b"Upload-Defer-Length", b"1"), (b"Upload-Length", b""))),
    FuzzRequest(b"POST", b"/files/", (TR, (b"Upload-Length", b"1"), (b"Upload-Metadata", b"\xff"))),
    FuzzRequest(
        b"POST",
        b"/files/",
        (TR, (b"Upload-Length", b"5"), CT, (b"Upload-Checksum", b"sha1 " + _sha1(b"other"))),
        b"hello",
    ),
    FuzzRequest(
        b"PATCH",
        b"/files/@ID@",
        (TR, CT, (b"Upload-Offset", b"@OFF@"), (b"Upload-Checksum", b"crc32 AAAAAA==")),
        b"xy",
    ),
    FuzzRequest(
        b"PATCH",
        b"/files/@ID@",
        (TR, CT, (b"Upload-Offset", b"@OFF@"), (b"Upload-Length", b"5")),
        b"",
        "deferred",
    ),
    FuzzRequest(
        b"PATCH", b"/files/@ID@", (TR, CT, (b"Upload-Offset", b"@OFF@")), b"x" * 30, "done"
    ),
    FuzzRequest(b"PATCH", b"/files/@ID@", (TR, CT, (b"Upload-Offset", b"@OFF@")), b"xy", "final"),
    FuzzRequest(b"POST", b"/files/@ID@", (TR, (b"X-HTTP-Method-Override", b"GET")), b"", "done"),
    FuzzRequest(b"POST", b"/files/@ID@", (TR, (b"X-HTTP-Method-Override", b"HEAD")), b"xy"),
    FuzzRequest(b"GET", b"/files/@ID@", ((b"Range", b"bytes=9-1,-0,a-b"),), b"", "done"),
)


@pytest.fixture(scope="module")
def witnesses(server: Server) -> Witnesses:
    return Witnesses(server)


def test_fuzz_tus_headers(server: Server, witnesses: Witnesses, backend: str) -> None:
    """Valid requests of every kind with 1-3 tus headers mangled (hypothesis)."""
    fuzz = FuzzRun(server, witnesses)
    for request in CORPUS:
        fuzz.send(request)
    run_fuzz(fuzz, mangled_requests(raw=False), STRUCTURED_EXAMPLES)
    fuzz.finish(f"fuzz tus headers [{backend}]")


def test_fuzz_raw_header_bytes(server: Server, witnesses: Witnesses, backend: str) -> None:
    """The same headers holding latin-1, control characters and 100 B-70 KB values."""
    fuzz = FuzzRun(server, witnesses)
    run_fuzz(fuzz, mangled_requests(raw=True), RAW_BYTES_EXAMPLES)
    fuzz.finish(f"fuzz raw header bytes [{backend}]")


def test_fuzz_ids_and_paths(server: Server, witnesses: Witnesses, backend: str) -> None:
    """Every method on mangled upload ids, traversal attempts and odd request targets."""
    fuzz = FuzzRun(server, witnesses)
    run_fuzz(fuzz, path_requests(), PATH_EXAMPLES)
    fuzz.finish(f"fuzz ids and paths [{backend}]")


# --------------------------------------------------------------------------
# 8. Limits
# --------------------------------------------------------------------------

LIMIT_METADATA_SIZE = 2048


@pytest.fixture(scope="module")
def limits_server(backend: str, start_server) -> Server:
    """Small limits: Tus-Max-Size 100000, 50 parts per final, 2048 bytes of metadata."""
    return start_server(
        backend,
        max_size=LIMIT_MAX_SIZE,
        max_concat_parts=LIMIT_CONCAT_PARTS,
        max_metadata_size=LIMIT_METADATA_SIZE,
    )


def metadata_of_length(total: int) -> str:
    """A valid Upload-Metadata value of exactly ``total`` characters: ``key AAAA…``."""
    key_length = (total - 1) % 4 or 4
    value = "A" * (total - 1 - key_length)
    metadata = "k" * key_length + " " + value
    assert len(metadata) == total and len(value) % 4 == 0
    return metadata


@dataclass
class Tally:
    """Counts for the summary line of a test that sends hand-made inputs."""

    scenario: str
    tried: int = 0
    server_errors: int = 0
    changed: int = 0

    def refused(
        self, server: Server, send: Callable[..., RawResponse], *args: object
    ) -> RawResponse:
        """``send(*args)`` must get a 4xx and leave the sidecars as they were."""
        before = sidecars(server)
        response = send(*args)
        self.tried += 1
        if response.status >= 500 or response.status == 0:
            self.server_errors += 1
        after = sidecars(server)
        if after != before:
            self.changed += 1
        assert 400 <= response.status < 500, (response.status, response.head, response.body)
        assert after == before, f"a {response.status} created {sorted(after - before)}"
        return response

    def accepted(self, response: RawResponse) -> RawResponse:
        self.tried += 1
        if response.status >= 500 or response.status == 0:
            self.server_errors += 1
        return response

    def print(self, extra: str = "") -> None:
        report(self.scenario, self.tried, self.server_errors, self.changed, extra)


def create_raw(server: Server, headers: list[tuple[str, str]], body: bytes = b"") -> RawResponse:
    all_headers = [("Tus-Resumable", "1.0.0"), *headers]
    if body:
        all_headers.append(("Content-Type", OFFSET_STREAM))
    return raw_request(server, "POST", BASE, all_headers, body)


@pytest.mark.parametrize("which", ["default", "configured"])
def test_metadata_size_limit(
    server: Server, limits_server: Server, backend: str, which: str
) -> None:
    """Upload-Metadata one byte over max_metadata_size → 431 and nothing created;
    one under and exactly at the limit → 201 and echoed; also on a final and with a body."""
    target, limit = (
        (server, DEFAULT_METADATA_SIZE)
        if which == "default"
        else (limits_server, LIMIT_METADATA_SIZE)
    )
    tally = Tally(f"metadata size limit {limit} [{backend}]")
    tus = TusClient(target.endpoint)
    at_limit = metadata_of_length(limit)
    over = metadata_of_length(limit + 1)
    many_pairs = ",".join(f"k{i} AA==" for i in range(limit // 7 + 1))
    assert len(many_pairs) > limit
    part = tus.new_upload(1, headers={"Upload-Concat": "partial"}, data=b"a")
    final = f"final;{BASE}{upload_id(part)}"

    for metadata in (over, many_pairs, metadata_of_length(limit * 3)):
        for body in (b"", b"hello"):
            headers = [("Upload-Length", "5"), ("Upload-Metadata", metadata)]
            response = tally.refused(target, create_raw, target, headers, body)
            assert response.status == 431, (response.status, response.body)
        headers = [("Upload-Concat", final), ("Upload-Metadata", metadata)]
        response = tally.refused(target, create_raw, target, headers)
        assert response.status == 431, (response.status, response.body)

    for headers, body in (
        ([("Upload-Length", "5"), ("Upload-Metadata", metadata_of_length(limit - 1))], b""),
        ([("Upload-Length", "5"), ("Upload-Metadata", at_limit)], b""),
        ([("Upload-Length", "5"), ("Upload-Metadata", at_limit)], b"hello"),
        ([("Upload-Concat", final), ("Upload-Metadata", at_limit)], b""),
    ):
        response = tally.accepted(create_raw(target, headers, body))
        assert response.status == 201, (response.status, response.body)
        head = tus.head(response.get("location"))
        assert head.headers.get("Upload-Metadata") == dict(headers)["Upload-Metadata"]
    tally.print()


def test_headers_beyond_gunicorn_limits(server: Server, backend: str) -> None:
    """Header lines over 64 KiB, 250 header fields and an 9000-byte request line are
    refused by gunicorn with a 4xx; nothing is created and no worker dies."""
    tally = Tally(f"gunicorn header limits [{backend}]")
    workers = sorted(server.worker_pids())
    tus = TusClient(server.endpoint)
    part = upload_id(tus.new_upload(1, headers={"Upload-Concat": "partial"}, data=b"a"))
    huge = GUNICORN_FIELD_LIMIT + 10
    cases = [
        [("Upload-Length", "5"), ("Upload-Metadata", metadata_of_length(huge))],
        [("Upload-Length", "5"), ("Upload-Metadata", metadata_of_length(4 * huge))],
        [("Upload-Concat", "final;" + " ".join([f"{BASE}{part}"] * 2000))],
        [("Upload-Length", "9" * huge)],
        [("Upload-Length", "5"), ("X-Padding", "p" * huge)],
        [("Upload-Length", "5")] + [(f"X-Field-{i}", "1") for i in range(250)],
        [("Upload-Length", "5")] + [("Upload-Metadata", "k AA==")] * 250,
    ]
    statuses = Counter()
    for headers in cases:
        response = tally.refused(server, create_raw, server, headers)
        statuses[response.status] += 1
    long_target = BASE + "a" * 9000
    tus_header = [("Tus-Resumable", "1.0.0")]
    response = tally.refused(server, raw_request, server, "HEAD", long_target, tus_header)
    statuses[response.status] += 1
    assert tus.options().status_code == 204
    assert sorted(server.worker_pids()) == workers, "a worker died"
    tally.print(f"statuses {dict(statuses)}")


def test_final_with_too_many_parts(server: Server, limits_server: Server, backend: str) -> None:
    """More parts than max_concat_parts → 400 and no final (50 configured, 1000 default);
    thousands of parts in the shortest form; a header beyond 64 KiB is a 4xx too."""
    tally = Tally(f"concat parts beyond max_concat_parts [{backend}]")
    for target, limit in ((limits_server, LIMIT_CONCAT_PARTS), (server, DEFAULT_CONCAT_PARTS)):
        tus = TusClient(target.endpoint)
        part_url = tus.new_upload(1, headers={"Upload-Concat": "partial"}, data=b"a")
        part = upload_id(part_url)
        forms = {"bare": part, "relative": f"{BASE}{part}", "absolute": part_url}
        cases = [("bare", limit + 1), ("bare", 1900), ("absolute", limit + 1)]
        if limit == LIMIT_CONCAT_PARTS:  # (1001 relative URLs: tests/extensions/test_extensions.py)
            cases.append(("relative", limit + 1))
        for form, count in cases:
            value = "final;" + " ".join([forms[form]] * count)
            start = time.monotonic()
            response = tally.refused(target, create_raw, target, [("Upload-Concat", value)])
            elapsed = time.monotonic() - start
            assert response.status == 400, (form, count, response.status, response.body)
            assert elapsed < 5, f"{count} parts took {elapsed:.1f} s to refuse"
        # Unknown ids beyond the limit: refused for their number, nothing looked up.
        unknown = " ".join(os.urandom(16).hex() for _ in range(limit + 1))
        headers = [("Upload-Concat", "final;" + unknown)]
        response = tally.refused(target, create_raw, target, headers)
        assert response.status == 400, (response.status, response.body)
        if limit == LIMIT_CONCAT_PARTS:
            value = "final;" + " ".join([part] * 5000)  # 165 KB: gunicorn's limit first
            tally.refused(target, create_raw, target, [("Upload-Concat", value)])
            distinct = [
                upload_id(tus.new_upload(1, headers={"Upload-Concat": "partial"}, data=b"a"))
                for _ in range(limit)
            ]
            at_limit = create_raw(target, [("Upload-Concat", "final;" + " ".join(distinct))])
            tally.accepted(at_limit)
            assert at_limit.status == 201, (at_limit.status, at_limit.body)
            head = tus.head(at_limit.get("location"))
            assert head.headers.get("Upload-Length") == str(limit), dict(head.headers)
    tally.print()


def test_max_size_enforced_without_content_length(limits_server: Server, backend: str) -> None:
    """Deferred-length uploads on a server with Tus-Max-Size 100000 get chunked bodies
    (no Content-Length): the stream is cut at the limit, 413, and offset ≤ max."""
    tally = Tally(f"max size on chunked bodies [{backend}]")
    tus = TusClient(limits_server.endpoint)
    uploads = limits_server.data_dir / "uploads"
    tus_headers = [("Tus-Resumable", "1.0.0"), ("Content-Type", OFFSET_STREAM)]

    # Creation with upload, deferred length, 150000 bytes chunked.
    response, sent = chunked_request(
        limits_server, "POST", BASE, [*tus_headers, ("Upload-Defer-Length", "1")], 150_000
    )
    tally.accepted(response)
    assert response.status == 413, (response.status, response.body)
    location = response.get("location")
    assert location, response.head
    kept = int(tus.head(location).headers["Upload-Offset"])
    assert kept <= LIMIT_MAX_SIZE
    assert int(response.get("upload-offset") or 0) <= LIMIT_MAX_SIZE
    assert (uploads / upload_id(location)).stat().st_size <= LIMIT_MAX_SIZE
    results = [f"POST chunked 150000: 413, kept {kept}"]

    # PATCH at offset 30000, then 150000 bytes and 64 MiB chunked.
    for total in (150_000, 64 * 1024 * 1024):
        url = tus.new_upload(None, headers={"Upload-Defer-Length": "1"})
        assert tus.patch(url, 0, b"y" * 30_000).status_code == 204
        target = BASE + upload_id(url)
        response, sent = chunked_request(
            limits_server, "PATCH", target, [*tus_headers, ("Upload-Offset", "30000")], total
        )
        tally.accepted(response)
        if total == 150_000:
            assert response.status == 413, (response.status, response.body)
        else:
            # The server stops reading: the answer may be lost in the reset.
            assert response.status in (0, 413), (response.status, response.body)
            assert sent < total, "the server read the whole 64 MiB stream"
        kept = int(tus.head(url).headers["Upload-Offset"])
        assert 30_000 <= kept <= LIMIT_MAX_SIZE, kept
        assert (uploads / upload_id(url)).stat().st_size <= LIMIT_MAX_SIZE
        results.append(f"PATCH chunked {total}: {response.status or 'reset'}, kept {kept}")
        # The upload goes on from what was kept.
        assert tus.patch(url, kept, b"", {"Upload-Length": str(kept)}).status_code == 204
    tally.print("; ".join(results))


# --------------------------------------------------------------------------
# 9. Downloads: active content is never inline; names cannot inject headers
# --------------------------------------------------------------------------

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e])*"'
_PARAM = re.compile(rf";\s*({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})\s*")
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[\x20-\x7e\t]*")
#: Media types a browser may render inline without running anything.
SAFE_INLINE = {"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain"}
INJECTED_NAMES = {"x-injected", "set-cookie", "refresh", "location", "content-security-policy"}
HTML = b"<!doctype html><html><body><script>alert(document.domain)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'


def content_disposition(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Disposition type and (name, decoded value) pairs; asserts it is well formed."""
    match = re.match(rf"\s*({_TOKEN})\s*", value)
    assert match, f"malformed Content-Disposition: {value!r}"
    params: list[tuple[str, str]] = []
    position = match.end()
    while position < len(value):
        param = _PARAM.match(value, position)
        assert param, f"malformed Content-Disposition at {position}: {value!r}"
        name, raw = param.group(1).lower(), param.group(2)
        if name.endswith("*"):
            charset, _, encoded = raw.partition("''")
            assert charset.upper() == "UTF-8", raw
            params.append((name, unquote(encoded, encoding="utf-8", errors="strict")))
        elif raw.startswith('"'):
            params.append((name, re.sub(r"\\(.)", r"\1", raw[1:-1])))
        else:
            params.append((name, raw))
        position = param.end()
    return match.group(1).lower(), params


def finished_upload(server: Server, body: bytes, metadata: dict[str, bytes | str]) -> str:
    """A complete upload made in one POST; metadata values may be any bytes."""
    pairs = encode_metadata(**metadata)
    headers = [("Upload-Length", str(len(body)))]
    if pairs:
        headers.append(("Upload-Metadata", pairs))
    response = create_raw(server, headers, body)
    assert response.status == 201, (response.status, response.body)
    return BASE + upload_id(response.get("location") or "")


def download_problems(response: RawResponse, body: bytes) -> list[str]:
    """What is wrong with the header block of a download, as it came off the wire."""
    problems = []
    lines = response.head.split(b"\r\n")[1:]
    for line in lines:
        if not _FIELD_LINE.fullmatch(line):
            problems.append(f"not a clean header line: {line!r}")
    names = [name for name, _ in response.fields]
    for name in ("content-disposition", "content-type", "x-content-type-options"):
        if names.count(name) != 1:
            problems.append(f"{names.count(name)} {name} lines")
    if set(names) & (INJECTED_NAMES - {"content-security-policy"}):
        problems.append(f"injected header: {sorted(set(names) & INJECTED_NAMES)}")
    if names.count("content-security-policy") != 1:
        problems.append("not exactly one Content-Security-Policy")
    csp = response.get("content-security-policy") or ""
    if "sandbox" not in csp or "default-src 'none'" not in csp:
        problems.append(f"CSP does not sandbox: {csp!r}")
    if response.get("x-content-type-options") != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    expected = body
    if response.status == 206:
        start, end = (int(x) for x in re.findall(r"\d+", response.get("content-range") or "")[:2])
        expected = body[start : end + 1]
    if response.body != expected:
        problems.append(f"body {response.body[:60]!r} is not the stored bytes")
    return problems


# (filetype or None, filename, body, the disposition it must get)
ACTIVE_CONTENT = [
    (b"text/html", "page.html", HTML, "attachment"),
    (b"image/svg+xml", "pic.svg", SVG, "attachment"),
    (b"text/html; charset=utf-8", "page.html", HTML, "attachment"),
    (b"TEXT/HTML", "page.html", HTML, "attachment"),
    (b"Text/Html ;charset=utf-7", "page.html", HTML, "attachment"),
    (b" text/html ", "page.html", HTML, "attachment"),
    (b"text/html;", "page", HTML, "attachment"),
    (b"IMAGE/SVG+XML", "pic.svg", SVG, "attachment"),
    (b"image/svg+xml; charset=utf-8", "pic.svg", SVG, "attachment"),
    (b"application/xhtml+xml", "page.xhtml", HTML, "attachment"),
    (b"text/xml", "x.xml", SVG, "attachment"),
    (b"application/xml", "x.xml", SVG, "attachment"),
    (b"text/javascript", "x.js", b"alert(1)", "attachment"),
    # Loadable by another page with <script src> or <link rel=stylesheet>
    # when served with their own type, nosniff or not.
    (b"application/javascript", "x.js", b"alert(1)", "attachment"),
    (b"text/ecmascript", "x.js", b"alert(1)", "attachment"),
    (b"application/x-javascript", "x.js", b"alert(1)", "attachment"),
    (b"TEXT/JAVASCRIPT; charset=utf-8", "x.mjs", b"alert(1)", "attachment"),
    (b"text/css", "x.css", b"body{background:url(//evil.example/)}", "attachment"),
    (b"application/json", "x.json", b'{"a": 1}', "attachment"),
    (b"application/wasm", "x.wasm", b"\x00asm", "attachment"),
    (b"application/pdf", "x.pdf", b"%PDF-1.4", "attachment"),
    (b"multipart/x-mixed-replace; boundary=x", "x", HTML, "attachment"),
    (b"text/html\x00image/png", "page.html", HTML, "attachment"),
    (b"image/png\r\nContent-Type: text/html", "page.html", HTML, "attachment"),
    (b"text/plain, text/html", "page.html", HTML, "attachment"),
    (b"text/h\xe9ml", "page.html", HTML, "attachment"),
    (None, "page.html", HTML, "attachment"),
    (None, "pic.svg", SVG, "attachment"),
    (b"", "pic.svg", SVG, "attachment"),
    # Declared as an inline type: served as that type, which nosniff makes final.
    (b"image/png", "evil.html", HTML, "inline"),
    (b"image/png; charset=utf-8", "evil.svg", SVG, "inline"),
    (b"IMAGE/PNG", "evil.html", HTML, "inline"),
    (b"text/plain", "evil.html", HTML, "inline"),
]


def test_download_active_content_never_inline(server: Server, backend: str) -> None:
    """HTML, SVG, scripts, style sheets and every other type outside the inline list,
    also under lying or malformed filetypes, download as application/octet-stream
    attachments with nosniff and a sandboxing CSP (whole file and Range)."""
    tally = Tally(f"downloads of active content [{backend}]")
    problems: list[str] = []
    for filetype, filename, body, disposition in ACTIVE_CONTENT:
        metadata: dict[str, bytes | str] = {"filename": filename}
        if filetype is not None:
            metadata["filetype"] = filetype
        path = finished_upload(server, body, metadata)
        for headers in ([], [("Range", "bytes=0-9")]):
            response = tally.accepted(raw_request(server, "GET", path, headers))
            case = f"filetype {filetype!r} {headers}"
            if response.status not in (200, 206):
                problems.append(f"{case}: status {response.status}")
                continue
            problems += [f"{case}: {p}" for p in download_problems(response, body)]
            kind, _ = content_disposition(response.get("content-disposition") or "")
            media = (response.get("content-type") or "").split(";")[0].strip().lower()
            if kind != disposition:
                problems.append(f"{case}: {kind}, expected {disposition}")
            if kind == "attachment" and media != "application/octet-stream":
                problems.append(f"{case}: attachment served as {media}, not octet-stream")
            if kind == "inline" and media not in SAFE_INLINE:
                problems.append(f"{case}: {media} served inline")
            if (
                disposition == "inline"
                and filetype
                and media != filetype.decode().split(";")[0].lower()
            ):
                problems.append(f"{case}: served as {media}")
            if media == "text/plain" and "charset=utf-8" not in (
                response.get("content-type") or ""
            ):
                problems.append(f"{case}: text/plain without a fixed charset")
    tally.print(f"{len(ACTIVE_CONTENT)} stored files")
    assert not problems, "\n".join(problems)


HOSTILE_NAMES: list[str | bytes] = [
    'quo"te.txt',
    'x"; filename="evil.html',
    "x\"; filename*=UTF-8''evil.html",
    "x; filename=evil.html",
    "back\\slash\\.txt",
    "a\r\nX-Injected: 1.txt",
    "a\r\n\r\n<script>alert(1)</script>.txt",
    "a\nSet-Cookie: sid=1",
    "a\rRefresh: 0; url=https://evil.example/",
    "a\r\nLocation: https://evil.example/",
    "nul\x00byte.txt",
    "\x1b[31mansi\x7f.txt",
    "\ttab\x0bvt.txt",
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/etc/shadow",
    "..",
    "%0d%0aX-Injected: 1",
    "a\u0085b\u2028c\u2029d.txt",
    "\u202ecod.exe",
    "r\u00e9sum\u00e9\r\nX-Injected: 1.txt",
    b"\xff\xfe invalid utf-8 \xc3(.txt",
    "a" * 1000 + ".txt",
]
#: Names that need no sanitising: they must come back exactly (NFC) as filename*.
PLAIN_NON_ASCII = [
    "résumé.txt",
    "名前.txt",
    "Ωμέγα.pdf",
    "emoji 😀.txt",
    "re\u0301sume\u0301.txt",  # decomposed: comes back composed
    "ﬁle.txt",
]


def test_download_filename_cannot_inject_headers(server: Server, backend: str) -> None:
    """filename metadata with quotes, backslashes, CR/LF, NUL, ../ and non-ASCII: one
    clean Content-Disposition line, no injected header, RFC 6266 filename* for non-ASCII."""
    tally = Tally(f"download file names [{backend}]")
    problems: list[str] = []
    body = b"file body"
    for name in [*HOSTILE_NAMES, *PLAIN_NON_ASCII]:
        path = finished_upload(server, body, {"filename": name, "filetype": "text/plain"})
        response = tally.accepted(raw_request(server, "GET", path))
        case = f"filename {name!r}"
        if response.status != 200:
            problems.append(f"{case}: status {response.status}")
            continue
        problems += [f"{case}: {p}" for p in download_problems(response, body)]
        disposition = response.get("content-disposition") or ""
        kind, params = content_disposition(disposition)
        names = [key for key, _ in params]
        if (
            names.count("filename") != 1
            or names.count("filename*") > 1
            or set(names)
            - {
                "filename",
                "filename*",
            }
        ):
            problems.append(f"{case}: parameters {names} in {disposition!r}")
        for key, value in params:
            if any(unicodedata.category(ch) == "Cc" for ch in value) or '"' in value:
                problems.append(f"{case}: {key}={value!r} keeps a control character or quote")
            if "/" in value or "\\" in value:
                problems.append(f"{case}: {key}={value!r} keeps a path separator")
        decoded = dict(params)
        text = name if isinstance(name, str) else name.decode("utf-8", "replace")
        kept = [c for c in text if not c.isascii() and not unicodedata.category(c).startswith("C")]
        if kept and not decoded.get("filename*"):
            problems.append(f"{case}: no filename*=UTF-8'' in {disposition!r}")
        if name in PLAIN_NON_ASCII:
            if not disposition.count("filename*=UTF-8''") == 1:
                problems.append(f"{case}: {disposition!r} is not RFC 6266 filename*=UTF-8''")
            if decoded.get("filename*") != unicodedata.normalize("NFC", name):
                problems.append(f"{case}: filename* is {decoded.get('filename*')!r}")
    tally.print(f"{len(HOSTILE_NAMES) + len(PLAIN_NON_ASCII)} names")
    assert not problems, "\n".join(problems)


#: Characters whose compatibility form (NFKD) is a quote, a slash or a backslash.
LOOKALIKE_NAMES = [
    "．．／．．／ｅｔｃ／ｐａｓｓｗｄ",  # fullwidth ../../etc/passwd
    "ｑｕｏｔｅ＂ｄ.txt",  # fullwidth quotation mark
    "ｂａｃｋ＼ｓｌａｓｈ.txt",  # fullwidth reverse solidus
    "\u2100.txt",  # ACCOUNT OF: a/c
    "\ufe68\ufe68.txt",  # SMALL REVERSE SOLIDUS
]


def test_download_ascii_fallback_name_has_no_separators(server: Server, backend: str) -> None:
    """The ASCII ``filename=`` fallback of a non-ASCII name keeps no quote, slash or
    backslash either (download.safe_filename promises a name without them)."""
    tally = Tally(f"download look-alike file names [{backend}]")
    problems: list[str] = []
    for name in LOOKALIKE_NAMES:
        path = finished_upload(server, b"data", {"filename": name, "filetype": "text/plain"})
        response = tally.accepted(raw_request(server, "GET", path))
        assert response.status == 200, response.status
        problems += [f"{name!r}: {p}" for p in download_problems(response, b"data")]
        disposition = response.get("content-disposition") or ""
        _, params = content_disposition(disposition)
        for key, value in params:
            if set(value) & set('/\\"'):
                problems.append(f"{name!r}: {key}={value!r} (header {disposition!r})")
    tally.print(f"{len(LOOKALIKE_NAMES)} names")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------
# 10. Access control through --auth-hook
# --------------------------------------------------------------------------

HOOK = "tests.apps.auth_hook:authorize"
TOKEN = "s3cret-" + os.urandom(8).hex()
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Hooked:
    server: Server
    log: Path
    deny: Path

    def calls(self) -> list[tuple[str, ...]]:
        """(verdict, action, upload id or -, method) for every call since the last reset."""
        if not self.log.exists():
            return []
        return [tuple(line.split()) for line in self.log.read_text().splitlines()]

    def reset(self) -> None:
        self.log.write_text("")


@pytest.fixture(scope="module")
def hooked(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Hooked]:
    workdir = tmp_path_factory.mktemp(f"auth-{backend}")
    redis_url = request.getfixturevalue("redis_server").url if backend == "redis" else None
    log, deny = workdir / "hook.log", workdir / "deny-read"
    env = {"HOOK_TOKEN": TOKEN, "HOOK_LOG": str(log), "HOOK_DENY_READ": str(deny)}
    server = Server(workdir / "data", redis_url=redis_url, env=env, auth_hook=HOOK).start()
    yield Hooked(server, log, deny)
    server.stop()


def tus_raw(
    server: Server,
    method: str,
    target: str,
    auth: str | None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> RawResponse:
    all_headers = [("Tus-Resumable", "1.0.0"), *(headers or [])]
    if auth is not None:
        all_headers.append(("Authorization", auth))
    return raw_request(server, method, target, all_headers, body)


def _upload_state(tus: TusClient, url: str) -> tuple:
    head = tus.head(url, GOOD)
    get = tus.get(url, GOOD)
    return head.status_code, head.headers.get("Upload-Offset"), get.status_code, get.content


BAD_CREDENTIALS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    f"bearer {TOKEN}",
    f"Bearer  {TOKEN}",
    f"Basic {b64('user:' + TOKEN)}",
    TOKEN,
    "Bearer \xe9\xff",
]


def test_auth_refused_requests_change_nothing(hooked: Hooked, backend: str) -> None:
    """Without a token or with a wrong one: 401 with WWW-Authenticate on every action
    (also for an unknown id), and nothing is created, appended or deleted."""
    server = hooked.server
    tally = Tally(f"auth hook refusals [{backend}]")
    tus = TusClient(server.endpoint)
    url = tus.new_upload(10, headers={**GOOD, "Upload-Metadata": WITNESS_METADATA}, data=b"hello")
    done = tus.new_upload(3, headers=GOOD, data=b"abc")
    part = tus.new_upload(2, headers={**GOOD, "Upload-Concat": "partial"}, data=b"pp")
    path, done_path, part_path = (BASE + upload_id(u) for u in (url, done, part))
    unknown = BASE + os.urandom(16).hex()
    before = (_upload_state(tus, url), _upload_state(tus, done), _upload_state(tus, part))
    files = sidecars(server)
    patch = [("Content-Type", OFFSET_STREAM), ("Upload-Offset", "5")]
    requests_to_refuse = [
        ("POST", BASE, [("Upload-Length", "5")], b""),
        ("POST", BASE, [("Upload-Length", "5"), ("Content-Type", OFFSET_STREAM)], b"hello"),
        ("POST", BASE, [("Upload-Defer-Length", "1")], b""),
        ("POST", BASE, [("Upload-Concat", f"final;{part_path}")], b""),
        ("PATCH", path, patch, b"world"),
        ("PATCH", path, [*patch, ("Upload-Length", "10")], b""),
        ("PATCH", unknown, [("Content-Type", OFFSET_STREAM), ("Upload-Offset", "0")], b"x"),
        ("POST", path, [("X-HTTP-Method-Override", "PATCH"), *patch], b"world"),
        ("DELETE", path, [], b""),
        ("DELETE", done_path, [], b""),
        ("DELETE", part_path, [], b""),
        ("DELETE", unknown, [], b""),
        ("POST", path, [("X-HTTP-Method-Override", "DELETE")], b""),
        ("HEAD", path, [], b""),
        ("HEAD", unknown, [], b""),
        ("GET", done_path, [], b""),
    ]
    for credentials in BAD_CREDENTIALS:
        for method, target, headers, body in requests_to_refuse:
            response = tally.refused(
                server, tus_raw, server, method, target, credentials, headers, body
            )
            case = f"{method} {target} {headers} with Authorization {credentials!r}"
            assert response.status == 401, (case, response.status, response.body)
            assert response.get("www-authenticate") == "Bearer", (case, response.headers)
            assert response.get("upload-offset") is None, case
    after = (_upload_state(tus, url), _upload_state(tus, done), _upload_state(tus, part))
    assert after == before
    assert sidecars(server) == files
    calls = hooked.calls()
    assert all(call[0] in ("401", "ok") for call in calls), calls
    tally.print(f"{len(BAD_CREDENTIALS)} credentials x {len(requests_to_refuse)} requests")


def test_auth_options_needs_no_token(hooked: Hooked, backend: str) -> None:
    """OPTIONS (discovery and CORS preflight) passes without a token; the hook is not asked."""
    server = hooked.server
    tally = Tally(f"auth hook preflight [{backend}]")
    tus = TusClient(server.endpoint)
    url = tus.new_upload(10, headers=GOOD)
    hooked.reset()
    preflight = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "PATCH"),
        ("Access-Control-Request-Headers", "authorization, tus-resumable, upload-offset"),
    ]
    for target in (BASE, BASE + upload_id(url)):
        for headers in ([], preflight, [*preflight, ("Authorization", "Bearer wrong")]):
            response = tally.accepted(raw_request(server, "OPTIONS", target, headers))
            assert response.status in (200, 204), (response.status, response.body)
            assert response.get("tus-version") == "1.0.0"
            if headers:
                allowed = (response.get("access-control-allow-headers") or "").lower()
                assert "authorization" in allowed, response.headers
                assert response.get("access-control-allow-origin") == "https://app.example"
    assert hooked.calls() == [], hooked.calls()
    tally.print()


def test_auth_hook_returning_false_is_403(hooked: Hooked, backend: str) -> None:
    """A hook that returns False answers 403 and changes nothing; a final cannot be
    made of a partial its creator may not read."""
    server = hooked.server
    tally = Tally(f"auth hook False [{backend}]")
    tus = TusClient(server.endpoint)
    url = tus.new_upload(10, headers=GOOD, data=b"hello")
    part = tus.new_upload(2, headers={**GOOD, "Upload-Concat": "partial"}, data=b"pp")
    secret = tus.new_upload(2, headers={**GOOD, "Upload-Concat": "partial"}, data=b"ss")
    path, part_path, secret_path = (BASE + upload_id(u) for u in (url, part, secret))
    before = (_upload_state(tus, url), _upload_state(tus, part), _upload_state(tus, secret))
    patch = [("Content-Type", OFFSET_STREAM), ("Upload-Offset", "5")]
    deny = "Bearer deny"
    cases = [
        ("POST", BASE, deny, [("Upload-Length", "5")], b""),
        ("POST", BASE, deny, [("Upload-Concat", f"final;{part_path}")], b""),
        ("PATCH", path, deny, patch, b"world"),
        ("POST", path, deny, [("X-HTTP-Method-Override", "PATCH"), *patch], b"world"),
        ("DELETE", path, deny, [], b""),
        ("POST", path, deny, [("X-HTTP-Method-Override", "DELETE")], b""),
        ("HEAD", path, deny, [], b""),
        ("GET", path, deny, [], b""),
    ]
    hooked.deny.write_text(upload_id(secret) + "\n")
    try:
        final = f"final;{part_path} {secret_path}"
        cases += [
            ("POST", BASE, f"Bearer {TOKEN}", [("Upload-Concat", final)], b""),
            ("HEAD", secret_path, f"Bearer {TOKEN}", [], b""),
            ("GET", secret_path, f"Bearer {TOKEN}", [], b""),
        ]
        for method, target, auth, headers, body in cases:
            response = tally.refused(server, tus_raw, server, method, target, auth, headers, body)
            assert response.status == 403, (method, target, response.status, response.body)
    finally:
        hooked.deny.write_text("")
    after = (_upload_state(tus, url), _upload_state(tus, part), _upload_state(tus, secret))
    assert after == before
    tally.print()


def test_auth_right_token_and_action_names(hooked: Hooked, backend: str) -> None:
    """With the token everything works, and the hook is asked with the right action
    and id: create, read (HEAD, GET, each partial of a final), append, delete."""
    server = hooked.server
    tally = Tally(f"auth hook actions [{backend}]")
    auth = f"Bearer {TOKEN}"
    hooked.reset()
    expected: list[tuple[str, str, str]] = []  # (action, upload id or -, method the hook sees)
    patch = [("Content-Type", OFFSET_STREAM)]

    def step(
        method: str, target: str, headers: list, body: bytes, status: int, *calls: tuple
    ) -> RawResponse:
        response = tally.accepted(tus_raw(server, method, target, auth, headers, body))
        assert response.status == status, (method, target, response.status, response.body)
        expected.extend(calls)
        return response

    created = step("POST", BASE, [("Upload-Length", "10")], b"", 201, ("create", "-", "POST"))
    uid = upload_id(created.get("location") or "")
    path = BASE + uid
    step("HEAD", path, [], b"", 200, ("read", uid, "HEAD"))
    step("PATCH", path, [*patch, ("Upload-Offset", "0")], b"hello", 204, ("append", uid, "PATCH"))
    override = [("X-HTTP-Method-Override", "PATCH"), *patch, ("Upload-Offset", "5")]
    step("POST", path, override, b"world", 204, ("append", uid, "PATCH"))
    assert step("GET", path, [], b"", 200, ("read", uid, "GET")).body == b"helloworld"

    parts = []
    for data in (b"ab", b"cd"):
        headers = [("Upload-Concat", "partial"), ("Upload-Length", "2"), *patch]
        response = step("POST", BASE, headers, data, 201, ("create", "-", "POST"))
        parts.append(upload_id(response.get("location") or ""))
    listed = f"final;{BASE}{parts[1]} {BASE}{parts[0]}"
    final = step(
        "POST",
        BASE,
        [("Upload-Concat", listed)],
        b"",
        201,
        ("create", "-", "POST"),
        ("read", parts[1], "POST"),
        ("read", parts[0], "POST"),
    )
    final_id = upload_id(final.get("location") or "")
    final_path = BASE + final_id
    step("HEAD", final_path, [], b"", 200, ("read", final_id, "HEAD"))
    assert step("GET", final_path, [], b"", 200, ("read", final_id, "GET")).body == b"cdab"
    step("DELETE", path, [], b"", 204, ("delete", uid, "DELETE"))
    override = [("X-HTTP-Method-Override", "DELETE")]
    step("POST", final_path, override, b"", 204, ("delete", final_id, "DELETE"))
    step("HEAD", path, [], b"", 404, ("read", uid, "HEAD"))  # asked first, then not found

    calls = hooked.calls()
    assert all(call[0] == "ok" for call in calls), calls
    seen = [(action, upload, method) for _, action, upload, method in calls]
    assert seen == expected, "\n".join(f"{s} / {w}" for s, w in zip(seen, expected, strict=False))
    tally.print(f"hook calls {dict(Counter(action for action, _, _ in seen))}")
