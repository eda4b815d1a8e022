"""Talking to the server: a small tus client, and raw HTTP/1.1 for what no client sends.

:class:`TusClient` makes explicit tus requests with ``requests`` (no retries).
Everything else goes over a socket, as the bytes the test chooses, when it
chooses: :func:`raw_request` for one request read to the close,
:class:`RawRequest` and :class:`RawPatch` for a body sent at the test's pace
(stalled, cut, reset, chunked by hand), :func:`read_head` for answers read one
by one off a kept-alive connection. All of them give a :class:`RawResponse`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol, Self
from urllib.parse import urlsplit

import requests

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
MiB = 1 << 20


class Listening(Protocol):
    """Anything on a loopback port: a Server, a Proxied deployment, nginx."""

    port: int


# --------------------------------------------------------------------------
# The tus client
# --------------------------------------------------------------------------


class TusClient:
    """Small, explicit tus requests for tests (no retries, no magic)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.session = requests.Session()

    def options(self, **headers: str) -> requests.Response:
        return self.session.options(self.endpoint, headers=headers, timeout=30)

    def create(
        self,
        length: int | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        all_headers = dict(TUS)
        if length is not None:
            all_headers["Upload-Length"] = str(length)
        if data is not None:
            all_headers["Content-Type"] = OFFSET_STREAM
        all_headers.update(headers or {})
        return self.session.post(self.endpoint, headers=all_headers, data=data, timeout=60)

    def new_upload(self, length: int | None, **kwargs) -> str:
        response = self.create(length, **kwargs)
        assert response.status_code == 201, (response.status_code, response.text)
        return response.headers["Location"]

    def head(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        return self.session.head(url, headers={**TUS, **(headers or {})}, timeout=30)

    def offset(self, url: str) -> int:
        response = self.head(url)
        assert response.status_code == 200, (response.status_code, response.text)
        return int(response.headers["Upload-Offset"])

    def patch(
        self, url: str, offset: int, data, headers: dict[str, str] | None = None
    ) -> requests.Response:
        all_headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM}
        all_headers.update(headers or {})
        return self.session.patch(url, headers=all_headers, data=data, timeout=600)

    def delete(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        return self.session.delete(url, headers={**TUS, **(headers or {})}, timeout=30)

    def get(
        self, url: str, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        return self.session.get(url, headers=headers or {}, timeout=600, stream=stream)


def offered_extensions(response: requests.Response) -> set[str]:
    """The tus extensions an answer lists in Tus-Extension."""
    return {e.strip() for e in response.headers.get("Tus-Extension", "").split(",") if e.strip()}


# --------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


class SizedBody:
    """A streamed request body of known length: requests sends Content-Length."""

    def __init__(self, pieces: Iterable[bytes], length: int):
        self._pieces = pieces
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._pieces)


def paced(pieces: Iterable[bytes], rate: float | None) -> Iterator[bytes]:
    """Pass pieces on at no more than ``rate`` bytes per second (a client's uplink)."""
    started = time.monotonic()
    sent = 0
    for piece in pieces:
        if rate:
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        yield piece
        sent += len(piece)


# --------------------------------------------------------------------------
# Raw HTTP/1.1: answers
# --------------------------------------------------------------------------


@dataclass
class RawResponse:
    """An answer as it came off the wire.

    ``status`` is 0 when the connection ended without a readable answer (then
    ``head`` holds whatever did come). ``fields`` keeps every header line in
    order, names lower-cased, for tests about duplicates and order;
    ``headers`` is the usual mapping, repeated names joined with ", ".
    """

    status: int
    fields: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    head: bytes = b""
    reason: str = ""
    #: The 1xx statuses that came before the final answer.
    interim: list[int] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for name, value in self.fields:
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        return merged

    def get(self, name: str) -> str | None:
        """The first value of header ``name``."""
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name.lower()]

    @property
    def offset(self) -> int | None:
        value = self.get("upload-offset")
        return None if value is None else int(value)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace").strip()


def parse_head(head: bytes) -> RawResponse:
    """A status line and its header lines (no blank line, no body) as an answer."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name.decode("latin-1").strip().lower(), value.strip().decode("latin-1")))
    return RawResponse(status, fields, head=head, reason=reason)


def parse_response(data: bytes) -> RawResponse:
    """Everything a connection received: 1xx answers, then the final one and its body."""
    interim: list[int] = []
    while True:
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            return RawResponse(0, head=data, interim=interim)
        response = parse_head(head)
        if 100 <= response.status < 200 and b"\r\n\r\n" in rest:
            interim.append(response.status)
            data = rest
            continue
        length = response.get("content-length")
        response.body = rest[: int(length)] if length and length.isdigit() else rest
        response.interim = interim
        return response


def read_until_closed(sock: socket.socket) -> bytes:
    """All the bytes the server sends until it closes (a reset ends them too)."""
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return bytes(data)


def read_head(sock: socket.socket, buffer: bytearray) -> RawResponse:
    """The next answer's head on a connection kept open; bytes read past it stay in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {bytes(buffer)[:200]!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    return parse_head(head)


# --------------------------------------------------------------------------
# Raw HTTP/1.1: requests
# --------------------------------------------------------------------------


Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _pairs(headers: Headers) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(_as_bytes(name), _as_bytes(value)) for name, value in items]


def target_of(target: str | bytes) -> bytes:
    """A request target: a URL's path and query, or the target as given, byte for byte."""
    if isinstance(target, str) and target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    return _as_bytes(target)


def request_head(
    server: Listening, method: str | bytes, target: str | bytes, headers: Headers = ()
) -> bytes:
    """Request line, Host and the headers, through the blank line.

    Names and values go out byte for byte (a str as latin-1); CR and LF are
    dropped from values so that one header stays one header line.
    """
    lines = [_as_bytes(method) + b" " + target_of(target) + b" HTTP/1.1",
             f"Host: 127.0.0.1:{server.port}".encode()]
    for name, value in _pairs(headers):
        lines.append(name + b": " + value.replace(b"\r", b"").replace(b"\n", b""))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def connect(server: Listening, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _exchange(
    sock: socket.socket, first: bytes, pieces: Iterable[bytes], pause: float, timeout: float
) -> tuple[bytes, int]:
    """Send ``first`` then ``pieces`` from a thread while the answer is read to the close.

    The server may answer, and close, before it has read a body: reading
    meanwhile keeps that answer. Returns what came back and how many of
    ``pieces`` went out whole.
    """
    sent = [0]

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(first)
            for piece in pieces:
                if pause:
                    time.sleep(pause)
                sock.sendall(piece)
                sent[0] += 1

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = read_until_closed(sock)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sender.join(timeout)
    return data, sent[0]


def raw_request(
    server: Listening,
    method: str | bytes,
    target: str | bytes,
    headers: Headers = (),
    body: bytes | Iterable[bytes] = b"",
    *,
    timeout: float = 20.0,
    pause: float = 0.0,
    wait_for_continue: bool = False,
) -> RawResponse:
    """One request on its own connection (``Connection: close``), read to the close.

    A ``bytes`` body gets an exact Content-Length unless the headers frame it
    themselves; an iterable body goes out piece by piece, ``pause`` seconds
    before each, framed as the headers say (``Transfer-Encoding: chunked`` and
    chunks written by the test). With ``wait_for_continue`` the body is held
    back until the server sent ``100 Continue`` (or 3 s passed, as clients do).
    """
    pairs = _pairs(headers)
    names = {name.lower() for name, _ in pairs}
    if isinstance(body, bytes | bytearray):
        if body and not names & {b"content-length", b"transfer-encoding"}:
            pairs.append((b"Content-Length", str(len(body)).encode()))
        pieces: Iterable[bytes] = [bytes(body)] if body else []
    else:
        pieces = body
    if b"connection" not in names:
        pairs.append((b"Connection", b"close"))
    head = request_head(server, method, target, pairs)
    interim: list[int] = []
    with connect(server, timeout) as sock:
        if wait_for_continue:
            sock.sendall(head)
            head = b""
            sock.settimeout(3)
            buffer = bytearray()
            with contextlib.suppress(TimeoutError):
                interim.append(read_head(sock, buffer).status)
            sock.settimeout(timeout)
        elif isinstance(body, bytes | bytearray):
            head, pieces = head + bytes(body), []
        data, _ = _exchange(sock, head, pieces, pause, timeout)
    response = parse_response(data)
    response.interim[:0] = interim
    return response


def chunked_request(
    server: Listening,
    method: str,
    target: str,
    headers: Headers,
    total: int,
    chunk: int = 16 * 1024,
    timeout: float = 30.0,
) -> tuple[RawResponse, int]:
    """A chunked body of ``total`` bytes (no Content-Length), written while the answer
    is read; the answer, and how many payload bytes went out before the server closed."""
    pairs = [*_pairs(headers), (b"Transfer-Encoding", b"chunked"), (b"Connection", b"close")]
    sizes = [min(chunk, total - start) for start in range(0, total, chunk)]
    chunks = chain((b"%x\r\n" % size + b"x" * size + b"\r\n" for size in sizes), [b"0\r\n\r\n"])
    with connect(server, timeout) as sock:
        head = request_head(server, method, target, pairs)
        data, whole = _exchange(sock, head, chunks, 0.0, timeout)
    return parse_response(data), sum(sizes[:whole])


class RawRequest:
    """A request written by hand on its own socket: the head, then its body at the test's pace.

    ``length`` None frames the body chunked (:meth:`send` writes one chunk);
    otherwise the head declares ``Content-Length: length`` and :meth:`send`
    writes plain bytes. ``sock`` uses a connection the test opened already (to
    pick the worker it landed on). The answer is read by :meth:`response`,
    also while another thread is still sending (:meth:`feed`).
    """

    def __init__(
        self,
        server: Listening,
        method: str,
        target: str,
        length: int | None,
        headers: Headers = (),
        sock: socket.socket | None = None,
    ):
        self.sock = sock if sock is not None else connect(server)
        self.sock.settimeout(30.0)
        self.chunked = length is None
        framing = (("Transfer-Encoding", "chunked") if self.chunked
                   else ("Content-Length", str(length)))
        self.head = request_head(server, method, target, [*_pairs(headers), framing])
        self.sent = 0  # body payload bytes sent (chunk framing not counted)
        self.send_error: OSError | None = None
        self.answered = threading.Event()
        self._received = b""

    def send_headers(self) -> None:
        self.sock.sendall(self.head)

    def begin(self, *pieces: bytes | memoryview) -> Self:
        """Send the head and the body's first ``pieces``; the rest is the test's to send."""
        self.send_headers()
        for piece in pieces:
            assert self.send(piece), f"the connection broke: {self.send_error}"
        return self

    def send(self, data: bytes | memoryview) -> bool:
        """Send payload bytes (as one chunk when chunked); False once that failed."""
        if self.chunked:
            return self.send_wire(f"{len(data):x}\r\n".encode() + bytes(data) + b"\r\n", len(data))
        return self.send_wire(data, len(data))

    def send_wire(self, data: bytes | memoryview, payload: int) -> bool:
        """Send bytes as they are, counting ``payload`` of them as the body's."""
        if self.send_error is not None:
            return False
        try:
            self.sock.sendall(data)
        except OSError as error:
            self.send_error = error
            return False
        self.sent += payload
        return True

    def finish_chunked(self) -> bool:
        return self.send_wire(b"0\r\n\r\n", 0)

    def feed(
        self, pieces: Iterable[bytes | memoryview], pause: float = 0.0, finish: bool = True
    ) -> threading.Thread:
        """Send ``pieces`` from a thread until they end, the answer comes, or sending fails."""

        def run() -> None:
            for piece in pieces:
                if self.answered.is_set() or not self.send(piece):
                    return
                if pause:
                    time.sleep(pause)
            if finish and self.chunked and not self.answered.is_set():
                self.finish_chunked()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def response(self, timeout: float, head_only: bool = False) -> RawResponse | None:
        """Status, headers and body of the answer; None if the connection ended first."""
        deadline = time.monotonic() + timeout
        try:
            while b"\r\n\r\n" not in self._received:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self._received += chunk
            head, _, rest = self._received.partition(b"\r\n\r\n")
            answer = parse_head(head)
            length = 0 if head_only else int(answer.get("content-length") or 0)
            while len(rest) < length and time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            answer.body = rest[:length]
            return answer
        except OSError:
            return None
        finally:
            self.answered.set()

    def half_close(self) -> None:
        """FIN: the body ends here, the answer can still be read."""
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """RST: close with SO_LINGER 0, dropping whatever is unsent."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class RawPatch(RawRequest):
    """A tus PATCH from ``offset`` written by hand (``length`` None: chunked)."""

    def __init__(
        self,
        server: Listening,
        url: str,
        offset: int,
        length: int | None,
        headers: Mapping[str, str] | None = None,
        sock: socket.socket | None = None,
    ):
        tus = {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": str(offset)}
        super().__init__(server, "PATCH", url, length, {**tus, **(headers or {})}, sock)


def chunked_wire(payload: bytes, rng: random.Random) -> tuple[bytes, list[tuple[int, int]]]:
    """Chunked framing of ``payload`` in random chunk sizes, with its terminator.

    Also returns, per chunk, (wire position where its data starts, data size),
    so the payload bytes inside any wire prefix can be counted.
    """
    parts: list[bytes] = []
    spans: list[tuple[int, int]] = []
    position = 0
    wire = 0
    while position < len(payload):
        size = min(len(payload) - position, rng.choice((1, 7, 4096, 65536, 300_000, MiB)))
        line = f"{size:x}\r\n".encode()
        parts += [line, payload[position : position + size], b"\r\n"]
        spans.append((wire + len(line), size))
        wire += len(line) + size + 2
        position += size
    parts.append(b"0\r\n\r\n")
    return b"".join(parts), spans


def payload_in_prefix(spans: list[tuple[int, int]], cut: int) -> int:
    """Payload bytes inside the first ``cut`` wire bytes of a chunked body."""
    total = 0
    for start, size in spans:
        if cut <= start:
            break
        total += min(size, cut - start)
    return total
