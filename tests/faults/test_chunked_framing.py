"""Hostile chunked framing against the real server under gunicorn, on both registries.

Under gunicorn the server decodes chunked request bodies itself (resumable.body),
so its decoder must refuse what gunicorn's own parser refuses: whitespace around
a chunk size, malformed chunk extensions (NUL, bare CR, non-token bytes), bare
LF or CR line ends, sizes of more than 16 hex digits, chunk-size lines over
4096 bytes and trailer sections over 16 KiB however they arrive, and trailer
fields that would be refused as header fields.

Every case is a PATCH whose body starts with valid chunks (8 bytes) and then
carries one bad line. The answer must be 400 with the server's short
text/plain reason, never a 5xx, with no traceback in the log; afterwards the
upload holds the bytes of the valid chunks before the bad line, or nothing
when the request announced an ``Upload-Checksum`` trailer (a digest was due,
so nothing of the request is kept). Each test prints
``chunked framing …: inputs tried N, 400 N, 5xx 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from resumable.body import MAX_CHUNK_LINE, MAX_TRAILERS

from ..support import (
    OFFSET_STREAM,
    RawResponse,
    Server,
    TusClient,
    assert_no_traceback,
    checksum_header,
    raw_request,
    upload_id,
)

BASE = "/files/"
#: Valid chunks sent before every bad line: their 8 bytes are kept without a checksum.
PREFIX = b"5\r\nhello\r\n3\r\nabc\r\n"
PREFIX_DATA = b"helloabc"
#: What follows a bad chunk-size line: data a lenient decoder would take, the end.
SIZE_LINE_TAIL = b"\r\nworld\r\n0\r\n<T>\r\n"
#: Marks where the checksum trailer goes in the checksum variants.
TRAILERS = b"<T>"
#: The reasons resumable.body gives for a bad framing (the 400's text).
REASONS = {
    "invalid chunk size",
    "invalid chunk extension",
    "chunk size has more than 16 hex digits",
    f"chunk-size line is too long (over {MAX_CHUNK_LINE} bytes)",
    "chunked body line does not end with CRLF",
    "chunk data is longer than its size line says",
    "malformed trailer field",
    "obsolete line folding in the trailer section",
    f"trailer section is too large (over {MAX_TRAILERS} bytes)",
}


def checksum_trailer(data: bytes) -> bytes:
    return f"Upload-Checksum: {checksum_header('sha1', data)}\r\n".encode()


@dataclass(frozen=True)
class Case:
    """A body after PREFIX; ``kept`` is how many of its bytes the server keeps."""

    name: str
    tail: bytes
    #: Bytes of the tail's own chunks that precede the bad line.
    kept: int = 0
    #: What a lenient decoder would see as the whole body (the checksum covers it).
    data: bytes = PREFIX_DATA + b"world"


# Bad chunk-size lines, each followed by 5 bytes of data and a valid end.
BAD_SIZE_LINES = {
    "sp-before-size": b" 5",
    "htab-before-size": b"\t5",
    "sp-after-size": b"5 ",
    "htab-after-size": b"5\t",
    "sp-before-size-with-extension": b" 5;name",
    "empty-size": b"",
    "0x-prefix": b"0x5",
    "17-hex-digits": b"00000000000000005",
    "semicolon-without-name": b"5;",
    "sp-after-extension": b"5;name ",
    "name-without-value": b"5;name=",
    "nul-in-name": b"5;na\x00me",
    "nul-in-value": b"5;name=\x00",
    "nul-in-quoted-value": b'5;name="\x00"',
    "bare-cr-in-name": b"5;na\rme",
    "bare-cr-in-quoted-value": b'5;name="a\rb"',
    "del-in-name": b"5;na\x7fme",
    "del-in-quoted-value": b'5;name="\x7f"',
    "non-token-name": b"5;na@me",
    "non-token-value": b"5;name=a,b",
    "obs-text-in-name": b"5;caf\xe9",
    "unterminated-quoted-value": b'5;name="open',
}

SIZE_LINE_CASES = [Case(name, line + SIZE_LINE_TAIL) for name, line in BAD_SIZE_LINES.items()]

LINE_END_CASES = [
    Case("bare-lf-after-size", b"5\nworld\r\n0\r\n<T>\r\n"),
    Case("bare-cr-after-size", b"5\rworld\r\n0\r\n<T>\r\n"),
    Case("bare-lf-in-extension", b'5;name="a\nb"\r\nworld\r\n0\r\n<T>\r\n'),
    Case("bare-lf-after-data", b"5\r\nworld\n0\r\n<T>\r\n", kept=5),
    Case("bare-cr-after-data", b"5\r\nworld\r0\r\n<T>\r\n", kept=5),
    Case("data-longer-than-size", b"5\r\nworld!\r\n0\r\n<T>\r\n", kept=5),
    Case("bare-lf-after-last-chunk", b"0\n<T>\r\n", data=PREFIX_DATA),
    Case("bare-lf-ending-trailers", b"0\r\n<T>\n", data=PREFIX_DATA),
]

BAD_TRAILERS = {
    "sp-inside-name": b"Bad Name: x",
    "sp-before-colon": b"Name : x",
    "empty-name": b": x",
    "no-colon": b"NoColon",
    "non-token-name": b"Na(me): x",
    "nul-in-name": b"Na\x00me: x",
    "obs-text-in-name": b"Caf\xe9: x",
    "nul-in-value": b"Name: a\x00b",
    "bare-cr-in-value": b"Name: a\rb",
    "del-in-value": b"Name: a\x7fb",
    "obs-fold": b"Name: a\r\n folded",
    "obs-fold-htab": b"Name: a\r\n\tfolded",
}

TRAILER_CASES = [
    Case(name, b"0\r\n<T>" + line + b"\r\n\r\n", data=PREFIX_DATA)
    for name, line in BAD_TRAILERS.items()
]


def padded_section(size: int, trailers: bytes) -> bytes:
    """A trailer section of ``size`` bytes (field lines with CRLFs), ``trailers`` first."""
    pad = size - len(trailers) - len(b"Pad: \r\n")
    return trailers + b"Pad: " + b"p" * pad + b"\r\n"


def size_line(length: int) -> bytes:
    """A valid chunk-size line for 5 bytes, ``length`` bytes long without its CRLF."""
    return b"5;" + b"e" * (length - 2)


def send_chunked(
    server: Server,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    pieces: int = 1,
) -> RawResponse:
    """A chunked PATCH whose framing goes out byte for byte, read to the close.

    ``pieces`` > 1 sends the body in that many parts with a pause between
    them, so the server gets its lines in several reads.
    """
    headers = [*headers, ("Transfer-Encoding", "chunked")]
    if pieces == 1:
        return raw_request(server, "PATCH", target, headers, body)
    step = -(-len(body) // pieces)
    parts = [body[start : start + step] for start in range(0, len(body), step)]
    return raw_request(server, "PATCH", target, headers, parts, pause=0.01)


@dataclass
class Probe:
    """Sends the cases of one test and keeps the figures and what went wrong."""

    server: Server
    scenario: str
    tried: int = 0
    refused: int = 0
    server_errors: int = 0
    accepted: int = 0
    problems: list[str] = field(default_factory=list)

    def patch(
        self,
        name: str,
        tail: bytes,
        status: int,
        offset: int,
        checksum_of: bytes | None = None,
        pieces: int = 1,
    ) -> None:
        """PREFIX + ``tail`` to a new upload: expect ``status``, then ``offset`` kept.

        ``checksum_of`` announces ``Trailer: Upload-Checksum`` and puts the
        digest of those bytes where the tail marks the trailers.
        """
        tus = TusClient(self.server.endpoint)
        url = tus.new_upload(100_000)
        headers = [
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Offset", "0"),
            ("Content-Type", OFFSET_STREAM),
        ]
        trailers = b""
        if checksum_of is not None:
            headers.append(("Trailer", "Upload-Checksum"))
            trailers = checksum_trailer(checksum_of)
        body = PREFIX + tail.replace(TRAILERS, trailers)
        response = send_chunked(self.server, BASE + upload_id(url), headers, body, pieces)
        self._count(response)
        problem = []
        if response.status != status:
            problem.append(f"status {response.status}: {response.body[:200]!r}")
        elif status == 400:
            content_type = response.get("content-type") or ""
            reason = response.body.decode("latin-1").removesuffix("\n")
            if not content_type.startswith("text/plain") or reason not in REASONS:
                problem.append(f"answer {content_type!r} {response.body[:200]!r}")
        kept = tus.offset(url)
        if kept != offset:
            problem.append(f"offset {kept}, expected {offset}")
        if problem:
            self.problems.append(f"{name}: " + "; ".join(problem))

    def _count(self, response: RawResponse) -> None:
        self.tried += 1
        if response.status == 400:
            self.refused += 1
        elif response.status >= 500 or response.status == 0:
            self.server_errors += 1
        elif 200 <= response.status < 300:
            self.accepted += 1

    def check(self) -> None:
        """Print the summary line; every case as expected, no traceback logged."""
        line = (
            f"{self.scenario}: inputs tried {self.tried}, 400 {self.refused}, "
            f"5xx {self.server_errors}"
        )
        print(line + (f", 2xx {self.accepted}" if self.accepted else ""))
        assert not self.problems, "\n".join(self.problems)
        assert_no_traceback(self.server)


VARIANTS = ["plain", "checksum-trailer"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_chunk_size_lines(server: Server, backend: str, variant: str) -> None:
    """Whitespace around sizes, bad extensions, bad line ends: 400, valid chunks kept."""
    probe = Probe(server, f"chunked framing, chunk-size lines [{backend}, {variant}]")
    for case in SIZE_LINE_CASES + LINE_END_CASES:
        if variant == "checksum-trailer":
            probe.patch(case.name, case.tail, 400, 0, checksum_of=case.data)
        else:
            probe.patch(case.name, case.tail, 400, len(PREFIX_DATA) + case.kept)
    probe.check()
    assert probe.refused == probe.tried == len(SIZE_LINE_CASES) + len(LINE_END_CASES)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_trailer_fields(server: Server, backend: str, variant: str) -> None:
    """Trailer fields held to the rules for header fields: 400, nothing more kept."""
    probe = Probe(server, f"chunked framing, trailer fields [{backend}, {variant}]")
    for case in TRAILER_CASES:
        if variant == "checksum-trailer":
            probe.patch(case.name, case.tail, 400, 0, checksum_of=case.data)
        else:
            probe.patch(case.name, case.tail, 400, len(PREFIX_DATA))
    probe.check()
    assert probe.refused == probe.tried == len(TRAILER_CASES)


@pytest.mark.parametrize("pieces", [1, 8], ids=["at-once", "trickled"])
def test_chunk_size_line_limit(server: Server, backend: str, pieces: int) -> None:
    """A chunk-size line of 4096 bytes passes; 4097 and 7000 get 400, in one read or many."""
    arrival = "at once" if pieces == 1 else f"in {pieces} pieces"
    probe = Probe(server, f"chunked framing, chunk-size line limit [{backend}, {arrival}]")
    fits = size_line(MAX_CHUNK_LINE) + SIZE_LINE_TAIL
    probe.patch("line at the limit", fits, 204, len(PREFIX_DATA) + 5, pieces=pieces)
    for length in (MAX_CHUNK_LINE + 1, 7000):
        over = size_line(length) + SIZE_LINE_TAIL
        probe.patch(f"line of {length}", over, 400, len(PREFIX_DATA), pieces=pieces)
        checksum_of = PREFIX_DATA + b"world"
        probe.patch(f"line of {length}, checksum", over, 400, 0, checksum_of, pieces)
    probe.check()
    assert (probe.tried, probe.refused, probe.accepted) == (5, 4, 1)


@pytest.mark.parametrize("pieces", [1, 8], ids=["at-once", "trickled"])
def test_trailer_section_limit(server: Server, backend: str, pieces: int) -> None:
    """A trailer section of 16 KiB passes; one byte more gets 400, in one read or many."""
    arrival = "at once" if pieces == 1 else f"in {pieces} pieces"
    probe = Probe(server, f"chunked framing, trailer section limit [{backend}, {arrival}]")
    checksum = checksum_trailer(PREFIX_DATA)
    # The section carries its own checksum line: the marker is not used here.
    fits = b"0\r\n" + padded_section(MAX_TRAILERS, checksum) + b"\r\n"
    probe.patch("section at the limit", fits, 204, len(PREFIX_DATA), PREFIX_DATA, pieces)
    over = b"0\r\n" + padded_section(MAX_TRAILERS + 1, b"") + b"\r\n"
    probe.patch("section over", over, 400, len(PREFIX_DATA), pieces=pieces)
    over = b"0\r\n" + padded_section(MAX_TRAILERS + 1, checksum) + b"\r\n"
    probe.patch("section over, checksum", over, 400, 0, PREFIX_DATA, pieces)
    probe.check()
    assert (probe.tried, probe.refused, probe.accepted) == (3, 2, 1)
