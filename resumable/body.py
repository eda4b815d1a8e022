"""Request bodies read in bounded slices, so a writer can be interrupted.

A PATCH may stream for hours, and a client whose network died leaves the
server blocked in a read of a socket that will never deliver again. tus
clients retry within a second, so the server must notice a *release request*
from the retry, or a stalled client, while it waits for bytes. WSGI offers
only a blocking ``read()``; so under gunicorn this module takes the request's
socket (``environ["gunicorn.socket"]``) and reads the body itself:

* waiting in ``poll`` on the socket and on the holder's doorbell (an
  eventfd rung when a release request is posted), with a timeout that is
  the holder's next deadline, and calling the holder's ``on_idle`` when it
  is rung or due, so it can renew its lock, answer the request and enforce
  its timeouts; a silent client costs no wake-up in between;
* with ``SO_RCVLOWAT`` raised while a body of known length streams, so a
  slow client wakes its thread once per 64 KiB, not once per packet (bytes
  below the mark are taken whenever the holder wakes anyway, so a ``HEAD``
  still sees every byte that arrived);
* with ``recv_into`` straight into the caller's reused buffer (no copies,
  no allocation per chunk);
* decoding ``Transfer-Encoding: chunked`` itself, which also hands the
  trailers to the application (gunicorn keeps them out of WSGI's reach).
  The framing is held to RFC 9112 §7.1 and the trailers to the rules for
  header fields, as strictly as gunicorn's own parser: a request that the
  front door would refuse must not pass through this side door, where a
  proxy in front may have read the same bytes differently.

gunicorn has already parsed the headers and may hold the first body bytes in
its read buffer; they are taken from there, and whatever follows the body
(a pipelined request) is given back, and gunicorn's own reader is told the
body is consumed so keep-alive goes on. When the body is left half read, the
connection is marked failed and gunicorn closes it.

Anywhere else (a test client, another WSGI server) the body is read from
``wsgi.input`` with plain blocking reads.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .files import write_all

try:
    from gunicorn.http.body import Body as GunicornBody
    from gunicorn.http.body import ChunkedReader, LengthReader
except ImportError:  # pragma: no cover - gunicorn is a dependency
    GunicornBody = ChunkedReader = LengthReader = None

MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 16 * 1024
#: An unread remainder up to this size is drained to keep the connection
#: (gunicorn does the same for bodies the app never opened); a larger one
#: closes it rather than read what nobody will keep.
DRAIN_LIMIT = 64 * 1024
DRAIN_SECONDS = 1.0
#: Bodies from this size on go socket → pipe → file (see SocketSource.splice_to).
SPLICE_MIN_BYTES = 256 * 1024
PIPE_SIZE = 1024 * 1024

# The grammar of a chunk line and a trailer field (RFC 9112 §7.1, RFC 9110
# §5.5 and §5.6). BWS is allowed only around the ";" and "=" of an extension:
# whitespace before or after a bare size is refused, because parsers that
# skip it and parsers that do not disagree on where a chunk ends. The
# quantifiers are possessive: nothing here needs backtracking, and a hostile
# line then costs one pass instead of one per way to split it.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_QDTEXT = rb"[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]"
_QUOTED_PAIR = rb"\\[\t \x21-\x7e\x80-\xff]"
_QUOTED_STRING = rb'"(?:' + _QDTEXT + rb"|" + _QUOTED_PAIR + rb')*+"'
_BWS = rb"[ \t]*+"
_VALUE = rb"(?:" + _TOKEN + rb"|" + _QUOTED_STRING + rb")"
_EXTENSION = _BWS + rb";" + _BWS + _TOKEN + rb"(?:" + _BWS + rb"=" + _BWS + _VALUE + rb")?"
#: A whole chunk line without its CRLF; more than 16 hex digits cannot be a
#: size anyone means to send (and would not fit in 64 bits).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:" + _EXTENSION + rb")*+")
#: A trailer field line: no whitespace before the colon; the value's
#: surrounding OWS is stripped afterwards (a regex doing it would backtrack).
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")


def _open_pipe() -> tuple[int, int, int]:
    """A pipe for splicing, enlarged so one splice moves up to 1 MiB."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
        size = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
    return read_end, write_end, size



class BodyError(Exception):
    """The body ended otherwise than the request said it would."""


class ClientDisconnected(BodyError):
    pass


class MalformedBody(BodyError):
    pass


class RequestBody:
    """A request body: ``readinto`` returns 0 at its end."""

    #: Content-Length, or None for a chunked body.
    declared_length: int | None = None
    #: Trailer fields of a chunked body (lower-cased names), once it ended.
    trailers: dict[str, str]

    #: Whether ``splice_into`` can move this body to a file inside the kernel.
    can_splice: bool = False

    def readinto(self, view: memoryview) -> int:
        raise NotImplementedError

    def splice_into(self, fd: int, count: int, before_write: Callable[[], None]) -> int:
        """Move up to ``count`` body bytes to ``fd`` at its position; 0 at the end.

        ``before_write`` runs once bytes have arrived and before any reaches
        the file (the writer's lease check: the wait may have been long).
        """
        raise NotImplementedError

    def release(self, drain: bool) -> None:
        """Hand the connection back once the request is done with the body.

        A body not read to its end is drained when ``drain`` is set and the
        rest is small (so the client, still sending, reads the answer instead
        of a reset), else the connection is closed after the answer.
        """


class StreamBody(RequestBody):
    """Plain blocking reads from ``wsgi.input`` (non-gunicorn servers)."""

    def __init__(self, stream: io.RawIOBase, length: int | None):
        self.stream = stream
        self.declared_length = length
        self.remaining = length
        self.trailers = {}

    def readinto(self, view: memoryview) -> int:
        want = len(view) if self.remaining is None else min(len(view), self.remaining)
        if want == 0:
            return 0
        try:
            data = self.stream.read(want)
        except OSError as error:
            # uWSGI, mod_wsgi and Werkzeug's own server report a reset connection
            # (and Werkzeug bad chunked framing) by raising, not by ending the stream.
            raise ClientDisconnected(f"reading the body failed: {error}") from error
        if not data:
            if self.remaining is not None:
                raise ClientDisconnected("body ended before Content-Length")
            return 0
        view[: len(data)] = data
        if self.remaining is not None:
            self.remaining -= len(data)
        return len(data)


class Waiter(Protocol):
    """What the body reader needs from the request's holder while no byte arrives."""

    # The fds are only read: a class attribute or a property provides them.

    @property
    def wake_fd(self) -> int:
        """An fd that becomes readable when the holder must act (its doorbell); -1: none."""

    @property
    def stop_fd(self) -> int:
        """An fd that turns readable, and stays so, when the process stops (stopping.py); -1
        or absent: none. A waiter that has one must end the body in ``on_idle`` once it is."""

    def next_wait(self) -> float:
        """Seconds until ``on_idle`` must run even if nothing happens."""

    def on_idle(self) -> None:
        """Rung, or a deadline is due: renew, answer requests, enforce timeouts (may raise)."""


class Deadline:
    """A waiter for reading what is left of a body: give up at ``deadline``."""

    wake_fd = -1
    stop_fd = -1  # a drain is short: it ends by itself

    def __init__(self, deadline: float):
        self.deadline = deadline

    def next_wait(self) -> float:
        return self.deadline - time.monotonic()

    def on_idle(self) -> None:
        if time.monotonic() >= self.deadline:
            raise ClientDisconnected("gave up draining the body")


#: The most ``SO_RCVLOWAT`` asks for: one wake-up per this many bytes of a slow body.
LOW_WATER = 64 * 1024
#: The longest single poll, so a clock jump cannot stall a reader for long.
MAX_POLL_MS = 60_000
_READY = select.POLLIN | select.POLLHUP | select.POLLERR


class SocketSource:
    """A socket with a push-back buffer, read when bytes are there or the holder must act."""

    def __init__(self, sock: socket.socket, buffered: bytes, waiter: Waiter):
        self.sock = sock
        self.fileno = sock.fileno()
        self.pending = bytearray(buffered)
        self.pipe: tuple[int, int, int] | None = None
        #: Bytes were taken from the socket and then dropped: the body's
        #: count is off, so it must not be drained, only closed.
        self.lost_bytes = False
        #: The low-water mark wanted, and the one the socket has: it is set
        #: only before a poll, so a body that came whole with its headers
        #: (most small ones) costs no socket call at all.
        self.lowat = 1
        self.socket_lowat = 1
        #: gunicorn's timeout, saved when the socket is first made non-blocking.
        self.previous_timeout: float | None = None
        self.armed = False
        self.use(waiter)

    def use(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.poller = select.poll()
        self.poller.register(self.fileno, select.POLLIN)
        for fd in (waiter.wake_fd, getattr(waiter, "stop_fd", -1)):
            if fd >= 0:
                self.poller.register(fd, select.POLLIN)

    def _arm(self) -> None:
        """Make the socket non-blocking before the first read of it."""
        if not self.armed:
            self.previous_timeout = self.sock.gettimeout()
            self.sock.setblocking(False)
            self.armed = True

    def set_low_water(self, count: int) -> None:
        """Have poll report the socket readable only once ``count`` bytes are there."""
        self.lowat = max(1, min(count, LOW_WATER))

    def _apply_low_water(self, count: int) -> None:
        if count != self.socket_lowat:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
                self.socket_lowat = count
            except OSError:
                pass  # not supported here: every packet wakes the reader

    def wait(self) -> bool:
        """Wait for the socket; False when the holder is rung or due instead."""
        timeout = self.waiter.next_wait()
        if timeout <= 0:
            return False
        self._apply_low_water(self.lowat)
        events = self.poller.poll(min(MAX_POLL_MS, int(timeout * 1000) + 1))
        return any(fd == self.fileno and mask & _READY for fd, mask in events)

    def readinto(self, view: memoryview) -> int:
        if self.pending:
            n = min(len(view), len(self.pending))
            view[:n] = self.pending[:n]
            del self.pending[:n]
            return n
        return self.recv_into(view)

    def recv_into(self, view: memoryview) -> int:
        """One read from the socket itself, letting the holder act while it is silent.

        When the holder is rung or due, the bytes that have arrived (below
        the low-water mark) are taken first and returned; the holder acts
        after writing them, so what it commits includes them.
        """
        self._arm()
        waited = False
        while True:
            try:
                return self.sock.recv_into(view)
            except BlockingIOError:
                if waited:
                    self.waiter.on_idle()
            except (ConnectionError, OSError) as error:
                raise ClientDisconnected(str(error)) from None
            waited = not self.wait()

    def readline(self, limit: int, too_long: str = "chunked body line is too long") -> bytes:
        """One CRLF-terminated line of at most ``limit`` bytes (without the CRLF).

        The LF is looked for only within the first ``limit`` + 2 bytes, so
        the limit holds however the line arrives: a long line that came in
        one read is refused like one that trickles in. A bare LF is an error;
        a bare CR stays in the line, where the caller's grammar refuses it.
        """
        pending = self.pending
        stop = limit + 2  # the line, its CR and its LF
        searched = 0
        scratch: memoryview | None = None
        while True:
            end = pending.find(b"\n", searched, stop)
            if end >= 0:
                if end == 0 or pending[end - 1] != 0x0D:
                    raise MalformedBody("chunked body line does not end with CRLF")
                line = bytes(pending[: end - 1])
                del pending[: end + 1]
                return line
            if len(pending) >= stop:
                raise MalformedBody(too_long)
            searched = len(pending)
            # Read the socket, not the pending bytes: those are the line's
            # beginning, and handing them back would loop without end.
            if scratch is None:
                scratch = memoryview(bytearray(4096))
            n = self.recv_into(scratch)
            if n == 0:
                raise ClientDisconnected("connection closed inside a chunked body")
            pending += scratch[:n]

    def splice_to(self, fd: int, count: int, before_write: Callable[[], None]) -> int:
        """Move up to ``count`` bytes from the socket to ``fd``, never through Python.

        socket → pipe → file with ``os.splice``: the kernel moves the TCP
        buffers' pages into the pipe and copies them once into the page
        cache, where ``recv`` + ``write`` copies twice through user space.
        Returns 0 when the peer closed.
        """
        if self.pending:
            n = min(count, len(self.pending))
            before_write()
            write_all(fd, memoryview(self.pending)[:n])
            del self.pending[:n]
            return n
        self._arm()
        if self.pipe is None:
            self.pipe = _open_pipe()
        pipe_read, pipe_write, pipe_size = self.pipe
        waited = False
        while True:
            try:
                n = os.splice(
                    self.fileno,
                    pipe_write,
                    min(count, pipe_size),
                    flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                )
                break
            except BlockingIOError:
                if waited:
                    self.waiter.on_idle()
            except OSError as error:
                raise ClientDisconnected(str(error)) from None
            waited = not self.wait()
        if n == 0:
            return 0
        moved = 0
        try:
            before_write()
            while moved < n:
                moved += os.splice(pipe_read, fd, n - moved, flags=os.SPLICE_F_MOVE)
        except BaseException:
            self._close_pipe()  # it may still hold bytes; never reuse it
            self.lost_bytes = True  # read from the socket, counted nowhere
            raise
        return n

    def _close_pipe(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.pipe = None

    def restore(self) -> None:
        """Give the socket back as gunicorn had it: its timeout, and a low-water mark of 1."""
        self._close_pipe()
        self._apply_low_water(1)
        if self.armed:
            try:
                self.sock.settimeout(self.previous_timeout)
            except OSError:
                pass
            self.armed = False


class _GunicornBody(RequestBody):
    """Shared by both framings: adoption of gunicorn's socket and buffers."""

    def __init__(self, environ: dict[str, Any], waiter: Waiter):
        self.wsgi_input = environ["wsgi.input"]
        self.reader = self.wsgi_input.reader
        unreader = _unreader_of(self.reader)
        assert unreader is not None  # open_body adopts only a body that has one
        self.unreader = unreader
        self.source = SocketSource(
            environ["gunicorn.socket"], self.unreader.take_buffered(), waiter
        )
        self.trailers = {}
        self.ended = False

    def release(self, drain: bool) -> None:
        if not self.ended and drain and not self.source.lost_bytes and self._rest_is_small():
            self._drain()
        self.source.restore()
        if self.ended:
            # Bytes read past the body belong to the next request.
            if self.source.pending:
                self.unreader.unread(bytes(self.source.pending))
            self._mark_consumed()
        else:
            _give_up_connection(self.wsgi_input)

    def _drain(self) -> None:
        """Read and drop up to DRAIN_LIMIT bytes for DRAIN_SECONDS at most."""
        deadline = Deadline(time.monotonic() + DRAIN_SECONDS)
        self.source.use(deadline)
        self.source.set_low_water(1)
        scratch = memoryview(bytearray(16 * 1024))
        dropped = 0
        try:
            while not self.ended and dropped <= DRAIN_LIMIT:
                dropped += self.readinto(scratch)
                deadline.on_idle()
        except BodyError:
            pass

    def _mark_consumed(self) -> None:
        raise NotImplementedError

    def _rest_is_small(self) -> bool:
        """Whether what is left of the body may be worth draining."""
        return True


class GunicornLengthBody(_GunicornBody):
    def __init__(self, environ: dict[str, Any], waiter: Waiter):
        super().__init__(environ, waiter)
        self.declared_length = self.reader.length
        self.remaining: int = self.reader.length
        self.ended = self.remaining == 0
        self.source.set_low_water(self.remaining)
        # Plain TCP only (TLS bytes must be decrypted in user space), and only
        # when the body is large enough for a pipe to pay off.
        self.can_splice = (
            hasattr(os, "splice")
            and type(self.source.sock) is socket.socket
            and self.remaining >= SPLICE_MIN_BYTES
        )

    def splice_into(self, fd: int, count: int, before_write: Callable[[], None]) -> int:
        if self.remaining == 0:
            self.ended = True
            return 0
        return self._count(self.source.splice_to(fd, min(count, self.remaining), before_write))

    def readinto(self, view: memoryview) -> int:
        if self.remaining == 0:
            self.ended = True
            return 0
        if len(view) > self.remaining:
            view = view[: self.remaining]
        return self._count(self.source.readinto(view))

    def _count(self, n: int) -> int:
        """Account for ``n`` bytes that arrived; none before the end is a disconnect."""
        if n == 0:
            raise ClientDisconnected("connection closed before Content-Length bytes arrived")
        self.remaining -= n
        if self.remaining == 0:
            self.ended = True
        elif self.remaining < self.source.lowat:
            self.source.set_low_water(self.remaining)  # the last bytes must wake it too
        return n

    def _mark_consumed(self) -> None:
        self.reader.length = 0

    def _rest_is_small(self) -> bool:
        return self.remaining <= DRAIN_LIMIT


class GunicornChunkedBody(_GunicornBody):
    """A chunked body; its socket keeps a low-water mark of 1 (its length is unknown)."""

    def __init__(self, environ: dict[str, Any], waiter: Waiter):
        super().__init__(environ, waiter)
        self.chunk_left = 0
        self.started = False

    def readinto(self, view: memoryview) -> int:
        if self.ended:
            return 0
        if self.chunk_left == 0:
            if self.started:
                self.source.readline(0, "chunk data is longer than its size line says")
            self.started = True
            self.chunk_left = self._read_chunk_size()
            if self.chunk_left == 0:
                self._read_trailers()
                self.ended = True
                return 0
        if len(view) > self.chunk_left:
            view = view[: self.chunk_left]
        n = self.source.readinto(view)
        if n == 0:
            raise ClientDisconnected("connection closed inside a chunk")
        self.chunk_left -= n
        return n

    def _read_chunk_size(self) -> int:
        """The size of the next chunk; its extensions are checked, then ignored."""
        line = self.source.readline(
            MAX_CHUNK_LINE, f"chunk-size line is too long (over {MAX_CHUNK_LINE} bytes)"
        )
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise MalformedBody(_chunk_line_fault(line))
        return int(match.group(1), 16)

    def _read_trailers(self) -> None:
        """Trailer fields up to the empty line, MAX_TRAILERS bytes at most.

        The section's lines with their CRLFs count (not the empty line that
        ends it); each line may only use what is left, so a section over the
        limit is refused before more of it is kept, however it is buffered.
        """
        used = 0
        too_large = f"trailer section is too large (over {MAX_TRAILERS} bytes)"
        while True:
            line = self.source.readline(max(0, MAX_TRAILERS - used - 2), too_large)
            if not line:
                return
            used += len(line) + 2
            match = _FIELD_LINE.fullmatch(line)
            if match is None:
                raise MalformedBody(_field_line_fault(line))
            name, value = match.groups()
            self.trailers[name.decode("ascii").lower()] = value.strip(b" \t").decode("latin-1")

    def _mark_consumed(self) -> None:
        self.reader.parser = None
        self.reader.buf = io.BytesIO()


def _chunk_line_fault(line: bytes) -> str:
    """Why a chunk line that does not parse is refused (only on the error path)."""
    digits = len(line) - len(line.lstrip(b"0123456789abcdefABCDEF"))
    if digits > 16:
        return "chunk size has more than 16 hex digits"
    if digits == 0 or not line[digits:].lstrip(b" \t").startswith(b";"):
        return "invalid chunk size"
    return "invalid chunk extension"


def _field_line_fault(line: bytes) -> str:
    """Why a trailer line that does not parse is refused (only on the error path)."""
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding in the trailer section"
    return "malformed trailer field"


class _Unreader(Protocol):
    """What is used of gunicorn's read buffer (gunicorn.http.unreader.Unreader)."""

    def take_buffered(self) -> bytes: ...

    def unread(self, data: bytes) -> None: ...


def _unreader_of(reader: object) -> _Unreader | None:
    """gunicorn's read buffer behind a body reader (chunked keeps it on the request)."""
    unreader: _Unreader | None = getattr(reader, "unreader", None)
    if unreader is None:
        unreader = getattr(getattr(reader, "req", None), "unreader", None)
    if unreader is None or not hasattr(unreader, "take_buffered"):
        return None
    return unreader


def open_body(environ: dict[str, Any], waiter: Waiter) -> RequestBody:
    """The request's body, read from gunicorn's socket when it is there."""
    stream = environ["wsgi.input"]
    if (
        GunicornBody is not None
        and isinstance(stream, GunicornBody)
        and environ.get("gunicorn.socket") is not None
        and stream.buf.tell() == 0
        and _unreader_of(stream.reader) is not None
    ):
        if isinstance(stream.reader, LengthReader):
            return GunicornLengthBody(environ, waiter)
        if isinstance(stream.reader, ChunkedReader) and stream.reader.parser is not None:
            return GunicornChunkedBody(environ, waiter)
    length = environ.get("CONTENT_LENGTH")
    declared = int(length) if length and length.isdigit() else None
    if declared is None and not environ.get("wsgi.input_terminated"):
        declared = 0  # no length and no terminated stream: no body we can find the end of
    return StreamBody(stream, declared)


def abandon_unread_body(environ: dict[str, Any]) -> None:
    """After an early error answer: do not let gunicorn read a large body to its end."""
    stream = environ.get("wsgi.input")
    if GunicornBody is None or not isinstance(stream, GunicornBody) or stream.failed:
        return
    reader = stream.reader
    if isinstance(reader, LengthReader) and reader.length > DRAIN_LIMIT:
        _give_up_connection(stream)
    elif isinstance(reader, ChunkedReader) and reader.parser is not None:
        _give_up_connection(stream)


#: The gunicorn request this thread serves, set by resumable's worker (worker.py).
serving = threading.local()


def _give_up_connection(stream: object) -> None:
    """The body will not be read to its end: close the connection after the answer.

    gunicorn closes it anyway once it sees the body failed, but only after
    answering "Connection: keep-alive": a client that sends its next request
    on that connection at once then gets no answer at all. Marking the
    request makes the answer say "Connection: close".
    """
    stream.failed = True  # type: ignore[attr-defined]
    request = getattr(serving, "request", None)
    if request is not None:
        request.must_close = True
