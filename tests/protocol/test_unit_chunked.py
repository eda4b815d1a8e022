"""The chunked decoder of resumable.body, one line at a time, without a server.

Each case is a real gunicorn request over a ``socket.socketpair()``: gunicorn's
own parser reads the head, then ``open_body`` adopts its socket and read buffer
as it does in a worker. Inputs arrive in one of two ways, because the decoder
once checked its line limits only while waiting for more bytes:

* *buffered*: sent with the head, so gunicorn's first read holds them all and
  the decoder finds them in its buffer without reading the socket;
* *trickled*: sent one piece per idle timeout of the decoder, so every piece
  comes in a read of its own, only after the decoder used up the previous one.

The grammar is RFC 9112 §7.1 (chunk lines) and RFC 9110 §5.5 (trailer fields).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from resumable.body import (
    MAX_CHUNK_LINE,
    MAX_TRAILERS,
    GunicornChunkedBody,
    MalformedBody,
    open_body,
)

HEAD = b"PATCH /files/x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
#: gunicorn's first recv() of a request: inputs up to this size are all buffered.
GUNICORN_FIRST_READ = 8192
POLL_SECONDS = 0.005
DATA = b"hello"
SHA1_OF_DATA = "qvTGHdzF6KLavt4PO0gs2a6pQ00="

#: How an input reaches the decoder: (sent with the head, sent piece by piece).
Arrival = Callable[[bytes], tuple[bytes, Sequence[bytes]]]


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


class Exchange:
    """A chunked request over a socketpair, its body opened as a worker opens it."""

    def __init__(self, buffered: bytes, trickled: Sequence[bytes] = ()):
        self.client, self.server = socket.socketpair()
        self.client.sendall(HEAD + buffered)
        self.request = next(RequestParser(Config(), self.server, ("127.0.0.1", 0)))
        self.trickled: Iterator[bytes] = iter(trickled)
        environ = {"wsgi.input": self.request.body, "gunicorn.socket": self.server}
        body = open_body(environ, self)
        assert isinstance(body, GunicornChunkedBody)
        self.body = body
        if len(HEAD) + len(buffered) <= GUNICORN_FIRST_READ:
            # The premise of the buffered cases: no byte is left in the socket.
            assert bytes(self.body.source.pending) == buffered

    # The body reader's waiter: no doorbell, a short wait, then the next piece.
    wake_fd = -1

    def next_wait(self) -> float:
        return POLL_SECONDS

    def on_idle(self) -> None:
        """The next piece, or the end of the stream after the last."""
        piece = next(self.trickled, None)
        if piece is None:
            self.client.shutdown(socket.SHUT_WR)
        else:
            self.client.sendall(piece)

    def read(self) -> bytes:
        data = bytearray()
        view = memoryview(bytearray(64 * 1024))
        try:
            while n := self.body.readinto(view):
                data += view[:n]
        finally:
            self.body.release(drain=False)
            self.client.close()
            self.server.close()
        return bytes(data)


def decode(buffered: bytes, trickled: Sequence[bytes] = ()) -> tuple[bytes, dict[str, str]]:
    """The body and trailers the decoder makes of ``buffered`` then ``trickled``."""
    exchange = Exchange(buffered, trickled)
    data = exchange.read()
    assert exchange.body.ended
    return data, exchange.body.trailers


def refused(buffered: bytes, trickled: Sequence[bytes] = ()) -> str:
    """The decoder's reason for refusing the input; the connection is not reused."""
    exchange = Exchange(buffered, trickled)
    with pytest.raises(MalformedBody) as caught:
        exchange.read()
    assert exchange.request.body.failed
    return str(caught.value)


def one_chunk(line: bytes, data: bytes = DATA) -> bytes:
    return line + b"\r\n" + data + b"\r\n0\r\n\r\n"


def with_trailers(*lines: bytes) -> bytes:
    return b"5\r\n" + DATA + b"\r\n0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


# --------------------------------------------------------------------------
# chunk-size lines
# --------------------------------------------------------------------------

VALID_SIZE_LINES = {
    "plain": b"5",
    "leading-zeros": b"05",
    "16-hex-digits": b"0000000000000005",
    "extension-name": b"5;name",
    "extension-value": b"5;name=value",
    "sp-before-semicolon": b"5 ;name",
    "htab-around-semicolon": b"5\t;\tname",
    "bws-everywhere": b"5 ; name = value",
    "several-extensions": b'5;a;b=c ; d="e";f',
    "all-tchars": b"5;!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~09AZaz",
    "quoted-string": b'5;name="a value; with = separators"',
    "quoted-empty": b'5;name=""',
    "quoted-pairs": b'5;name="\\"quoted\\" \\\\ \\a\\\t"',
    "quoted-obs-text": b'5;name="caf\xe9 \x80\xff"',
}

VALID_SIZES = {
    "lowercase-hex": (b"a", b"helloworld"),
    "uppercase-hex": (b"A", b"helloworld"),
    "single-digit": (b"3", b"abc"),
}

INVALID_SIZE_LINES = {
    # whitespace around a size without an extension, or before it
    "sp-before-size": b" 5",
    "htab-before-size": b"\t5",
    "sp-after-size": b"5 ",
    "htab-after-size": b"5\t",
    "sp-before-size-with-extension": b" 5;name",
    "sp-inside-size": b"5 5",
    # not a size
    "empty-size": b"",
    "empty-size-with-extension": b";name",
    "0x-prefix": b"0x10",
    "not-hex": b"x",
    "minus-sign": b"-5",
    "plus-sign": b"+5",
    "17-hex-digits": b"00000000000000005",
    "17-hex-digits-large": b"10000000000000000",
    "nul-in-size": b"5\x00",
    "nul-before-size": b"\x005",
    "bare-cr-in-size": b"5\r5",
    # chunk extensions
    "semicolon-without-name": b"5;",
    "sp-after-extension": b"5;name ",
    "equals-without-name": b"5;=value",
    "name-without-value": b"5;name=",
    "sp-inside-name": b"5;na me",
    "sp-inside-value": b"5;name=val ue",
    "nul-in-name": b"5;na\x00me",
    "nul-in-value": b"5;name=val\x00ue",
    "nul-in-quoted-value": b'5;name="\x00"',
    "bare-cr-in-name": b"5;na\rme",
    "bare-cr-in-value": b"5;name=val\rue",
    "bare-cr-in-quoted-value": b'5;name="\r"',
    "bare-cr-at-end-of-extension": b"5;name\r",
    "del-in-name": b"5;na\x7fme",
    "del-in-value": b"5;name=\x7f",
    "del-in-quoted-value": b'5;name="\x7f"',
    "ctl-in-quoted-value": b'5;name="\x01"',
    "escaped-nul-in-quoted-value": b'5;name="\\\x00"',
    "at-sign-in-name": b"5;na@me",
    "at-sign-in-value": b"5;name=val@ue",
    "parens-in-name": b"5;(name)",
    "comma-in-value": b"5;name=a,b",
    "slash-in-value": b"5;name=a/b",
    "obs-text-in-name": b"5;caf\xe9",
    "obs-text-in-token-value": b"5;name=caf\xe9",
    "unterminated-quoted-value": b'5;name="open',
    "escaped-closing-quote": b'5;name="open\\"',
    "text-after-quoted-value": b'5;name="v"x',
    "two-values": b"5;name=a=b",
}


CHUNK_LINE_REASONS = (
    "invalid chunk size",
    "invalid chunk extension",
    "chunk size has more than 16 hex digits",
)


@pytest.mark.parametrize("line", VALID_SIZE_LINES.values(), ids=VALID_SIZE_LINES.keys())
def test_valid_chunk_line(line: bytes) -> None:
    assert decode(one_chunk(line)) == (DATA, {})


@pytest.mark.parametrize(("line", "data"), VALID_SIZES.values(), ids=VALID_SIZES.keys())
def test_valid_chunk_size(line: bytes, data: bytes) -> None:
    body = line + b"\r\n" + data + b"\r\n1\r\n!\r\n0\r\n\r\n"
    assert decode(body) == (data + b"!", {})


@pytest.mark.parametrize("line", INVALID_SIZE_LINES.values(), ids=INVALID_SIZE_LINES.keys())
def test_invalid_chunk_line(line: bytes) -> None:
    assert refused(one_chunk(line)) in CHUNK_LINE_REASONS


@pytest.mark.parametrize("line", INVALID_SIZE_LINES.values(), ids=INVALID_SIZE_LINES.keys())
def test_invalid_chunk_line_after_a_valid_chunk(line: bytes) -> None:
    """A later size line is held to the same grammar as the first one."""
    assert refused(b"3\r\nabc\r\n" + one_chunk(line)) in CHUNK_LINE_REASONS


FRAMING_ERRORS = {
    "bare-lf-after-size": b"5\n" + DATA + b"\r\n0\r\n\r\n",
    "bare-cr-after-size": b"5\r" + DATA + b"\r\n0\r\n\r\n",
    "bare-lf-in-quoted-value": one_chunk(b'5;name="a\nb"'),
    "bare-lf-after-data": b"5\r\n" + DATA + b"\n0\r\n\r\n",
    "bare-cr-after-data": b"5\r\n" + DATA + b"\r0\r\n\r\n",
    "data-longer-than-size": b"5\r\n" + DATA + b"!\r\n0\r\n\r\n",
    "bare-lf-after-last-chunk": b"5\r\n" + DATA + b"\r\n0\n\r\n",
    "bare-lf-ending-trailers": b"5\r\n" + DATA + b"\r\n0\r\n\n",
    "bare-lf-after-trailer": b"5\r\n" + DATA + b"\r\n0\r\nName: value\n\r\n",
}


@pytest.mark.parametrize("body", FRAMING_ERRORS.values(), ids=FRAMING_ERRORS.keys())
@pytest.mark.parametrize("arrival", ["buffered", "trickled"])
def test_line_ends_must_be_crlf(body: bytes, arrival: str) -> None:
    if arrival == "buffered":
        refused(body)
    else:
        refused(b"", _pieces(body, 1))


def test_line_ends_split_across_reads() -> None:
    """A CR in one read and its LF in the next still end a line."""
    body = b"5\r\nhello\r\n5\r\nworld\r\n0\r\nX: y\r\n\r\n"
    assert decode(b"", _pieces(body, 1)) == (b"helloworld", {"x": "y"})
    cut_after_cr = [b"5\r", b"\nhello\r", b"\n5;a=b\r", b"\nworld\r", b"\n0\r", b"\n\r", b"\n"]
    assert decode(b"", cut_after_cr) == (b"helloworld", {})


# --------------------------------------------------------------------------
# the chunk-size line limit, however the line arrives
# --------------------------------------------------------------------------


def extension_line(length: int) -> bytes:
    """A valid size line of exactly ``length`` bytes (without its CRLF)."""
    line = b"5;" + b"e" * (length - 2)
    assert len(line) == length
    return line


LONG_LINE_ARRIVALS: dict[str, Arrival] = {
    "buffered": lambda body: (body, ()),
    "trickled-1000": lambda body: (b"", _pieces(body, 1000)),
    "trickled-4095": lambda body: (b"", _pieces(body, 4095)),
    "first-part-buffered": lambda body: (body[:3000], _pieces(body[3000:], 700)),
}


@pytest.mark.parametrize("arrival", LONG_LINE_ARRIVALS.values(), ids=LONG_LINE_ARRIVALS.keys())
def test_chunk_line_of_the_limit_is_accepted(arrival: Arrival) -> None:
    buffered, trickled = arrival(one_chunk(extension_line(MAX_CHUNK_LINE)))
    assert decode(buffered, trickled) == (DATA, {})


@pytest.mark.parametrize("length", [MAX_CHUNK_LINE + 1, MAX_CHUNK_LINE + 2, 7000])
@pytest.mark.parametrize("arrival", LONG_LINE_ARRIVALS.values(), ids=LONG_LINE_ARRIVALS.keys())
def test_chunk_line_over_the_limit_is_refused(arrival: Arrival, length: int) -> None:
    buffered, trickled = arrival(one_chunk(extension_line(length)))
    assert "too long" in refused(buffered, trickled)


def test_long_line_without_end_is_refused_without_reading_on() -> None:
    """A line that never ends is refused once it passes the limit, not at the end of input."""
    line = extension_line(MAX_CHUNK_LINE + 1) + b"e" * 4096
    # The stream ends after these pieces: a decoder that waited for an LF
    # would report a disconnect instead.
    assert "too long" in refused(b"", _pieces(line, 1024))


# --------------------------------------------------------------------------
# trailer fields
# --------------------------------------------------------------------------

VALID_TRAILERS = {
    "checksum": (
        [b"Upload-Checksum: sha1 " + SHA1_OF_DATA.encode()],
        {"upload-checksum": "sha1 " + SHA1_OF_DATA},
    ),
    "no-ows": ([b"Name:value"], {"name": "value"}),
    "ows-stripped": ([b"Name: \t value  with  spaces \t "], {"name": "value  with  spaces"}),
    "empty-value": ([b"Name:"], {"name": ""}),
    "empty-value-with-ows": ([b"Name:  \t"], {"name": ""}),
    "obs-text-value": ([b"Name: caf\xe9"], {"name": "caf\xe9"}),
    "all-tchars-name": ([b"!#$%&'*+-.^_`|~09AZaz: v"], {"!#$%&'*+-.^_`|~09azaz": "v"}),
    "names-lower-cased": (
        [b"UPLOAD-checksum: x", b"Other: y"],
        {"upload-checksum": "x", "other": "y"},
    ),
    "visible-punctuation-value": ([b'Name: a:b;c="d", (e) <f>'], {"name": 'a:b;c="d", (e) <f>'}),
}

INVALID_TRAILERS = {
    "sp-inside-name": [b"Bad Name: x"],
    "sp-before-colon": [b"Name : x"],
    "htab-before-colon": [b"Name\t: x"],
    "empty-name": [b": x"],
    "no-colon": [b"NoColon"],
    "parens-in-name": [b"Na(me): x"],
    "at-sign-in-name": [b"Na@me: x"],
    "nul-in-name": [b"Na\x00me: x"],
    "obs-text-in-name": [b"Caf\xe9: x"],
    "nul-in-value": [b"Name: a\x00b"],
    "bare-cr-in-value": [b"Name: a\rb"],
    "bare-cr-ending-value": [b"Name: ab\r"],
    "del-in-value": [b"Name: a\x7fb"],
    "ctl-in-value": [b"Name: a\x1bb"],
    "obs-fold-sp": [b"Name: a", b" folded"],
    "obs-fold-htab": [b"Name: a", b"\tfolded"],
    "obs-fold-with-colon": [b"Name: a", b" other: b"],
    "sp-before-first-field": [b" Name: a"],
    "bad-field-after-good": [b"Upload-Checksum: sha1 " + SHA1_OF_DATA.encode(), b"Bad Name: x"],
}


@pytest.mark.parametrize(("lines", "fields"), VALID_TRAILERS.values(), ids=VALID_TRAILERS.keys())
def test_valid_trailers(lines: list[bytes], fields: dict[str, str]) -> None:
    assert decode(with_trailers(*lines)) == (DATA, fields)


@pytest.mark.parametrize("lines", INVALID_TRAILERS.values(), ids=INVALID_TRAILERS.keys())
@pytest.mark.parametrize("arrival", ["buffered", "trickled"])
def test_invalid_trailers(lines: list[bytes], arrival: str) -> None:
    body = with_trailers(*lines)
    reason = refused(body) if arrival == "buffered" else refused(b"", _pieces(body, 7))
    assert reason in ("malformed trailer field", "obsolete line folding in the trailer section")


# --------------------------------------------------------------------------
# the trailer section limit: its lines with their CRLFs, whatever the buffering
# --------------------------------------------------------------------------


def one_field(size: int) -> list[bytes]:
    """One field line of ``size`` bytes with its CRLF."""
    line = b"Pad: " + b"p" * (size - 7)
    assert len(line) + 2 == size
    return [line]


def small_fields(size: int) -> list[bytes]:
    """Empty fields of 4 bytes each (``a:`` CRLF), the last one longer to make ``size``."""
    count, rest = divmod(size, 4)
    lines = [b"a:"] * count
    if rest:
        lines[-1] = b"a:" + b"x" * rest
    assert sum(len(line) + 2 for line in lines) == size
    return lines


SECTION_ARRIVALS: dict[str, Arrival] = {
    "sent-at-once": lambda body: (body, ()),
    "trickled-1000": lambda body: (b"", _pieces(body, 1000)),
    "trickled-5000": lambda body: (b"", _pieces(body, 5000)),
}


@pytest.mark.parametrize("shape", [one_field, small_fields], ids=["one-field", "small-fields"])
@pytest.mark.parametrize("arrival", SECTION_ARRIVALS.values(), ids=SECTION_ARRIVALS.keys())
def test_trailer_section_of_the_limit_is_accepted(
    shape: Callable[[int], list[bytes]], arrival: Arrival
) -> None:
    buffered, trickled = arrival(with_trailers(*shape(MAX_TRAILERS)))
    data, trailers = decode(buffered, trickled)
    assert data == DATA and trailers


@pytest.mark.parametrize("excess", [1, 2, 4, 1000])
@pytest.mark.parametrize("shape", [one_field, small_fields], ids=["one-field", "small-fields"])
@pytest.mark.parametrize("arrival", SECTION_ARRIVALS.values(), ids=SECTION_ARRIVALS.keys())
def test_trailer_section_over_the_limit_is_refused(
    shape: Callable[[int], list[bytes]], arrival: Arrival, excess: int
) -> None:
    buffered, trickled = arrival(with_trailers(*shape(MAX_TRAILERS + excess)))
    assert refused(buffered, trickled).startswith("trailer section is too large")


# --------------------------------------------------------------------------
# the reasons, which the client gets as the text of its 400
# --------------------------------------------------------------------------

REASONS = {
    "invalid chunk size": one_chunk(b"5 "),
    "invalid chunk extension": one_chunk(b"5;na\x00me"),
    "chunk size has more than 16 hex digits": one_chunk(b"00000000000000005"),
    f"chunk-size line is too long (over {MAX_CHUNK_LINE} bytes)": one_chunk(
        extension_line(MAX_CHUNK_LINE + 1)
    ),
    "chunked body line does not end with CRLF": b"5\n" + DATA + b"\r\n0\r\n\r\n",
    "chunk data is longer than its size line says": b"5\r\n" + DATA + b"!\r\n0\r\n\r\n",
    "malformed trailer field": with_trailers(b"Bad Name: x"),
    "obsolete line folding in the trailer section": with_trailers(b"Name: a", b" folded"),
    f"trailer section is too large (over {MAX_TRAILERS} bytes)": with_trailers(
        *one_field(MAX_TRAILERS + 1)
    ),
}


@pytest.mark.parametrize(("reason", "body"), REASONS.items(), ids=list(REASONS))
def test_reason_names_the_fault(reason: str, body: bytes) -> None:
    assert refused(body) == reason
