"""Helpers of the process-fault suite: a resuming tus client, raw PATCHes, bookkeeping.

Everything here talks to real processes: ``requests`` for the client that
behaves as tus clients do (HEAD, then PATCH from the offset, retrying 423, 5xx
and broken connections with a short backoff), raw sockets for requests that
must stop, stall or reset at a chosen byte, and ``/proc`` to find the worker
process that holds a connection.
"""

from __future__ import annotations

import base64
import hashlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from ..support import OFFSET_STREAM, TUS, Server, SizedBody

MiB = 1 << 20
PIECE = 256 * 1024


# --------------------------------------------------------------------------
# Bookkeeping: the numbers of the summary line
# --------------------------------------------------------------------------


class Tally:
    """Counters of one scenario, safe to update from many client threads.

    * ``lost``: bytes the server acknowledged (a 204's or HEAD's offset, or
      bytes a scenario knows the server received and must keep) that a later
      answer or the stored file no longer has;
    * ``corrupt``: uploads whose stored bytes differ from the bytes sent;
    * ``unexpected_5xx``: 5xx answers other than those ``allowed`` at the time
      (503 during a Redis outage, 507 on a full disk).
    """

    def __init__(self, scenario: str):
        self.scenario = scenario
        self.faults = 0
        self.verified = 0
        self.lost = 0
        self.corrupt = 0
        self.unexpected_5xx = 0
        self.allowed_5xx: frozenset[int] = frozenset()
        self.problems: list[str] = []
        self.statuses: dict[int, int] = {}
        self.lock = threading.Lock()

    def line(self) -> str:
        return (
            f"{self.scenario}: faults injected {self.faults}, uploads verified byte-exact "
            f"{self.verified}, bytes lost {self.lost}, corrupt files {self.corrupt}, "
            f"unexpected 5xx {self.unexpected_5xx}"
        )

    def fault(self, count: int = 1) -> None:
        with self.lock:
            self.faults += count

    def status(self, code: int, what: str) -> None:
        with self.lock:
            self.statuses[code] = self.statuses.get(code, 0) + 1
            if code >= 500 and code not in self.allowed_5xx:
                self.unexpected_5xx += 1
                self.problems.append(f"unexpected {code} on {what}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def add_lost(self, count: int, why: str) -> None:
        if count > 0:
            with self.lock:
                self.lost += count
                self.problems.append(f"{count} bytes lost: {why}")

    def add_verified(self, ok: bool, why: str) -> None:
        with self.lock:
            if ok:
                self.verified += 1
            else:
                self.corrupt += 1
                self.problems.append(f"corrupt: {why}")

    def assert_clean(self) -> None:
        assert (self.lost, self.corrupt, self.unexpected_5xx) == (0, 0, 0), "\n".join(
            self.problems[:20]
        )


# --------------------------------------------------------------------------
# Upload contents: slices of one random buffer, each with its digest
# --------------------------------------------------------------------------


@dataclass
class Blob:
    """The bytes of one upload (a view, not a copy) and their sha256."""

    name: str
    data: memoryview
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def pieces(self, start: int, end: int | None = None, piece: int = MiB) -> Iterator[bytes]:
        end = self.size if end is None else end
        for position in range(start, end, piece):
            yield self.data[position : min(end, position + piece)]

    def bytes(self, start: int, end: int) -> bytes:
        return bytes(self.data[start:end])

    def complement(self, start: int, end: int) -> bytes:
        """Bytes that differ from this blob's at every position of ``[start, end)``."""
        return self.bytes(start, end).translate(_INVERT)


_INVERT = bytes(range(255, -1, -1))


def random_buffer(seed: int, size: int) -> memoryview:
    return memoryview(random.Random(seed).randbytes(size))


def checksum_header(algorithm: str, data: memoryview | bytes) -> str:
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def data_file(server: Server, url: str) -> Path:
    return server.data_dir / "uploads" / upload_id(url)


def file_prefix_matches(path: Path, blob: Blob, length: int) -> bool:
    """The file's first ``length`` bytes are the blob's."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = length
        while remaining:
            chunk = handle.read(min(MiB, remaining))
            if not chunk:
                return False
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest() == hashlib.sha256(blob.data[:length]).hexdigest()


# --------------------------------------------------------------------------
# A tus client that resumes as real ones do
# --------------------------------------------------------------------------


CLIENT_ERRORS = (requests.RequestException, OSError)


class Resumer:
    """HEAD, then PATCH the rest from the offset; retry 423, 5xx and broken connections.

    Every offset the server reports is checked against the highest one it
    acknowledged before (an offset going back is acknowledged bytes lost).
    """

    def __init__(
        self,
        endpoint: str,
        tally: Tally,
        *,
        chunked: bool = False,
        checksum: str | None = None,
        deadline: float = 120.0,
        backoff: tuple[float, float] = (0.05, 0.3),
        rng: random.Random | None = None,
        on_patch: Callable[[bool], None] | None = None,
        rate: float | None = None,
    ):
        self.endpoint = endpoint
        self.tally = tally
        self.chunked = chunked
        self.checksum = checksum
        self.deadline = deadline
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.on_patch = on_patch
        self.rate = rate  # bytes per second a PATCH body is sent at (None: as fast as it goes)
        self.session = requests.Session()
        self.interrupted = 0  # PATCHes that ended without an answer
        self.retries = 0

    def _pause(self) -> None:
        self.retries += 1
        time.sleep(self.rng.uniform(*self.backoff))

    def _reconnect(self) -> None:
        self.session.close()
        self.session = requests.Session()

    def create(self, blob: Blob, started: float | None = None) -> str:
        started = time.monotonic() if started is None else started
        while time.monotonic() - started < self.deadline:
            try:
                response = self.session.post(
                    self.endpoint,
                    headers={**TUS, "Upload-Length": str(blob.size)},
                    timeout=(5, 60),
                )
            except CLIENT_ERRORS:
                self._reconnect()
                self._pause()
                continue
            self.tally.status(response.status_code, f"POST {blob.name}")
            if response.status_code == 201:
                return response.headers["Location"]
            if response.status_code != 423 and response.status_code < 500:
                raise AssertionError(f"POST {blob.name}: {response.status_code} {response.text}")
            self._pause()
        raise AssertionError(f"POST {blob.name} did not succeed in {self.deadline:g} s")

    def head(self, url: str) -> requests.Response:
        return self.session.head(url, headers=TUS, timeout=(5, 60))

    def finish(self, url: str, blob: Blob, acknowledged: int = 0) -> int:
        """Resume until the server holds every byte; the highest acknowledged offset."""
        started = time.monotonic()
        while True:
            if time.monotonic() - started > self.deadline:
                raise AssertionError(
                    f"{blob.name} unfinished after {self.deadline:g} s "
                    f"(acknowledged {acknowledged} of {blob.size})"
                )
            try:
                response = self.head(url)
            except CLIENT_ERRORS:
                self._reconnect()
                self._pause()
                continue
            self.tally.status(response.status_code, f"HEAD {blob.name}")
            if response.status_code != 200:
                if response.status_code == 423 or response.status_code >= 500:
                    self._pause()
                    continue
                raise AssertionError(f"HEAD {blob.name}: {response.status_code}")
            offset = int(response.headers["Upload-Offset"])
            acknowledged = self._observe(blob, offset, acknowledged, "HEAD")
            if offset == blob.size:
                return acknowledged
            acknowledged = self._patch(url, blob, offset, acknowledged)

    def _observe(self, blob: Blob, offset: int, acknowledged: int, what: str) -> int:
        if offset < acknowledged:
            self.tally.add_lost(
                acknowledged - offset, f"{blob.name}: {what} offset {offset} < {acknowledged}"
            )
        if offset > blob.size:
            self.tally.problem(f"{blob.name}: {what} offset {offset} > size {blob.size}")
            raise AssertionError(f"{blob.name}: offset {offset} beyond its length {blob.size}")
        return max(acknowledged, offset)

    def _patch(self, url: str, blob: Blob, offset: int, acknowledged: int) -> int:
        headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM}
        if self.checksum:
            headers["Upload-Checksum"] = checksum_header(self.checksum, blob.data[offset:])
        pieces = paced(blob.pieces(offset, piece=PIECE), self.rate)
        body: object = (
            (bytes(p) for p in pieces) if self.chunked else SizedBody(pieces, blob.size - offset)
        )
        if self.on_patch:
            self.on_patch(True)
        try:
            response = self.session.patch(url, headers=headers, data=body, timeout=(5, 60))
        except CLIENT_ERRORS:
            self.interrupted += 1
            self._reconnect()
            self._pause()
            return acknowledged
        finally:
            if self.on_patch:
                self.on_patch(False)
        self.tally.status(response.status_code, f"PATCH {blob.name}")
        if response.status_code == 204:
            new = int(response.headers["Upload-Offset"])
            if new != blob.size:
                self.tally.problem(f"{blob.name}: 204 with offset {new}, expected {blob.size}")
            return self._observe(blob, new, acknowledged, "PATCH")
        if response.status_code in (409, 423) or response.status_code >= 500:
            self._pause()
            return acknowledged
        raise AssertionError(f"PATCH {blob.name}: {response.status_code} {response.text}")

    def download_sha256(self, url: str) -> tuple[str, int] | None:
        """sha256 and size of a GET, streamed; None when the connection broke."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self.session.get(url, stream=True, timeout=(5, 60)) as response:
                self.tally.status(response.status_code, f"GET {url}")
                if response.status_code != 200:
                    return None
                for chunk in response.iter_content(MiB):
                    digest.update(chunk)
                    size += len(chunk)
        except CLIENT_ERRORS:
            self._reconnect()
            return None
        return digest.hexdigest(), size

    def verify(self, url: str, blob: Blob) -> bool:
        """GET it back (retrying broken downloads); count it verified or corrupt."""
        started = time.monotonic()
        while time.monotonic() - started < self.deadline:
            got = self.download_sha256(url)
            if got is None:
                self._pause()
                continue
            digest, size = got
            ok = size == blob.size and digest == blob.sha256
            self.tally.add_verified(
                ok, f"{blob.name}: GET gave {size} bytes sha256 {digest[:12]}, sent {blob.size}"
            )
            return ok
        raise AssertionError(f"GET {blob.name} never succeeded in {self.deadline:g} s")


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


def settle_offset(endpoint_url: str, guess: int = 0) -> tuple[int, int]:
    """Take the upload's lock once with an empty PATCH: (status, offset).

    The empty PATCH must get the lock before it looks at the offset, so when
    it answers, any earlier holder has finished and committed: 204 means the
    offset is ``guess``, 409 carries the true one.
    """
    response = requests.patch(
        endpoint_url,
        headers={
            **TUS,
            "Upload-Offset": str(guess),
            "Content-Type": OFFSET_STREAM,
            "Content-Length": "0",
        },
        data=b"",
        timeout=30,
    )
    status = response.status_code
    if status == 204:
        return status, guess
    if status == 409:
        return status, int(response.headers["Upload-Offset"])
    return status, -1


# --------------------------------------------------------------------------
# Raw HTTP/1.1 requests: the bytes we choose, when we choose, then the answer
# --------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def offset(self) -> int | None:
        value = self.headers.get("upload-offset")
        return None if value is None else int(value)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace").strip()


class RawPatch:
    """A PATCH written by hand on one socket: Content-Length or chunked framing."""

    def __init__(
        self,
        server: Server,
        url: str,
        offset: int,
        length: int | None,
        headers: dict[str, str] | None = None,
    ):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.chunked = length is None
        lines = [
            f"PATCH {urlsplit(url).path} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            f"Tus-Resumable: {TUS['Tus-Resumable']}",
            f"Content-Type: {OFFSET_STREAM}",
            f"Upload-Offset: {offset}",
        ]
        lines.append("Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {length}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.sent = 0  # body payload bytes sent (chunk framing not counted)
        self.send_error: OSError | None = None
        self.answered = threading.Event()
        self._received = b""

    def send_headers(self) -> None:
        self.sock.sendall(self.head)

    def send(self, data: bytes | memoryview) -> bool:
        """Send payload bytes (as one chunk when chunked); False once that failed."""
        if self.send_error is not None:
            return False
        try:
            if self.chunked:
                self.sock.sendall(f"{len(data):x}\r\n".encode() + bytes(data) + b"\r\n")
            else:
                self.sock.sendall(data)
        except OSError as error:
            self.send_error = error
            return False
        self.sent += len(data)
        return True

    def send_wire(self, data: bytes, payload: int) -> bool:
        """Send raw framed bytes that carry ``payload`` payload bytes."""
        try:
            self.sock.sendall(data)
        except OSError as error:
            self.send_error = error
            return False
        self.sent += payload
        return True

    def finish_chunked(self) -> bool:
        try:
            self.sock.sendall(b"0\r\n\r\n")
        except OSError as error:
            self.send_error = error
            return False
        return True

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
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = 0 if head_only else int(headers.get("content-length", "0"))
            while len(rest) < length and time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            return RawResponse(status, headers, rest[:length])
        except (TimeoutError, ConnectionError, OSError):
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


# --------------------------------------------------------------------------
# Worker processes: who holds a connection (/proc/net/tcp + /proc/<pid>/fd)
# --------------------------------------------------------------------------


def file_snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            try:
                snapshot[str(path.relative_to(root))] = path.stat().st_size
            except FileNotFoundError:
                continue
    return snapshot


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
