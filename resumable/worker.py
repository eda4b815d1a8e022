"""The gunicorn worker of ``resumable serve``: gthread, plus a deadline for request headers.

gunicorn's gthread worker gives a connection to a thread once its first bytes
arrive; the thread then reads the request line and headers with blocking
reads that have no deadline. gunicorn bounds the *size* of a request's head,
not the time it takes, so a client sending one byte every few seconds holds
a thread for as long as it cares to, and a few dozen such clients hold them
all. Here each thread arms a deadline of ``--header-timeout`` seconds when it
starts on a request; one watchdog thread per worker answers ``408`` to a
connection still sending its headers at its deadline and shuts down the
socket's read side, which ends the blocked read (gunicorn then sees the
client gone and closes the connection). Request bodies have their own rules
(``--read-timeout`` and ``--min-body-rate``, in ``transfer.py``).

gunicorn's worker accepts connections while it has fewer than
``worker_connections`` open, counting the kept-alive ones parked in its
poller; a connection accepted while every thread holds an upload waits in the
pool's queue until one of them ends, which for a long upload is hours, while
the other workers have threads to spare. Here a worker accepts only while a
thread is free, and leaves the rest to the others (or the listen backlog).

gunicorn also closes a connection that will not be kept alive on the
worker's main thread, lingering up to two seconds to drain what the client
still sends (so the answer is not cut by a reset). The main thread is the
one that accepts and dispatches every connection: a dozen slow clients
answered with an error then stalled the whole worker for half a minute.
Those closes run on a small pool of their own here.

On SIGTERM (a stop, or this worker's turn in a graceful reload) gunicorn stops
accepting and gives its connections ``--shutdown-timeout`` seconds; a running
PATCH would use all of it and then be killed. The exit signal also begins the
process's stop (stopping.py), which ends every running transfer's body at
once: it commits what arrived and answers, and the worker exits as soon as the
answers are out. SIGQUIT and SIGINT (a quick stop) and the loss of the master
do the same. A stopping worker also closes its copies of the listening
sockets, so that once the master has closed its own a new connection is
refused (and tried elsewhere) instead of waiting in the backlog for a reset;
and a connection still sending its request head (or nothing yet) gets
:data:`STOP_HEAD_GRACE` seconds more at most, as gunicorn gives kept-alive ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import math
import os
import select
import socket
import threading
import time
from collections import OrderedDict
from concurrent import futures
from types import FrameType
from typing import TYPE_CHECKING, Any

from gunicorn.workers.gthread import ThreadWorker

from . import stopping
from .body import serving
from .settings import Settings

if TYPE_CHECKING:  # gunicorn's internals, named only for the reader (gunicorn is untyped)
    from gunicorn.http.message import Request
    from gunicorn.workers.gthread import TConn

log = logging.getLogger("resumable")

#: Threads that close connections, each lingering up to two seconds.
CLOSING_THREADS = 8
#: How long a thread that answered on a kept-alive connection waits for the
#: next request itself before handing the connection back to the main
#: thread's poller (see :func:`_next_request_soon`).
NEXT_REQUEST_WAIT = 0.02
#: Seconds a stopping worker still gives a connection to send its request head.
STOP_HEAD_GRACE = 2.0

HEADER_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 37\r\n"
    b"\r\n"
    b"request headers took too long to send"
)


class HeaderDeadlines:
    """Connections reading their headers, oldest first, and the watchdog that cuts them.

    Every deadline is "now + the same timeout", so arming order is deadline
    order and an ordered dict is the whole schedule: arm appends, disarm
    removes by key, and the watchdog only ever looks at the first entry.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        #: No deadline lies beyond this (set when the worker stops, see :meth:`hasten`).
        self.latest = math.inf
        self.armed: OrderedDict[int, tuple[float, socket.socket]] = OrderedDict()
        self.changed = threading.Condition()
        self.tokens = itertools.count()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._watch, name="header-deadlines", daemon=True)
        self.thread.start()

    def arm(self, sock: socket.socket) -> int:
        token = next(self.tokens)
        with self.changed:
            was_empty = not self.armed
            self.armed[token] = (min(time.monotonic() + self.timeout, self.latest), sock)
            if was_empty:
                self.changed.notify()
        return token

    def hasten(self, latest: float) -> None:
        """No deadline, armed or to come, later than ``latest``: the worker is stopping.

        Every deadline capped at one instant keeps them in order.
        """
        with self.changed:
            self.latest = min(self.latest, latest)
            for token in list(self.armed):
                deadline, sock = self.armed[token]
                self.armed[token] = (min(deadline, self.latest), sock)
            self.changed.notify()

    def disarm(self, token: int) -> bool:
        """Stop watching; False when the watchdog already cut the connection."""
        with self.changed:
            return self.armed.pop(token, None) is not None

    def _watch(self) -> None:
        while True:
            with self.changed:
                while True:
                    if not self.armed:
                        self.changed.wait()
                        continue
                    token, (deadline, sock) = next(iter(self.armed.items()))
                    delay = deadline - time.monotonic()
                    if delay <= 0:
                        del self.armed[token]
                        break
                    self.changed.wait(delay)
            cut(sock)


def _next_request_soon(conn: TConn) -> bool:
    """Whether the connection's next request arrives within :data:`NEXT_REQUEST_WAIT`.

    gunicorn hands a kept-alive connection back to the main thread, which
    polls it and hands it to a thread again when it turns readable: three
    handovers of the interpreter lock per request, each waiting for busy
    threads to yield it. A client sending requests back to back (tus chunks,
    a burst of small uploads) is served faster by the thread that just
    answered it, sleeping in ``poll`` without the lock meanwhile.
    """
    if conn.parser.unreader.buf.getvalue():
        return True  # a drain read into the next request already
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    try:
        return bool(poller.poll(NEXT_REQUEST_WAIT * 1000))
    except OSError:
        return False


def cut(sock: socket.socket) -> None:
    """Answer 408 if the socket takes it at once, then end the thread's blocked read."""
    with contextlib.suppress(OSError):
        sock.send(HEADER_TIMEOUT_RESPONSE, socket.MSG_DONTWAIT)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)


#: glibc malloc arenas in a worker that stores to S3 (mallopt's M_ARENA_MAX is -8).
#: glibc gives a thread that meets contention an arena of its own, up to eight per
#: core, and each keeps what it freed: the part-sending threads and the request
#: threads of a worker streaming 16 uploads to S3 left 110-120 MiB resident; two
#: arenas kept it at 95-100 MiB and one at 88 MiB (benchmarks/s3_compare.py), with
#: no loss of throughput: the GIL serialises most allocations anyway.
S3_MALLOC_ARENAS = 1
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas for the threads to come, unless MALLOC_ARENA_MAX
    is set (the operator's choice wins). False where it cannot (not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def warn_if_worker_cuts_uploads(environ: dict[str, Any]) -> None:
    """Warn when the server kills long requests: gunicorn's default ``sync`` worker.

    It serves one request at a time and is killed when a request outlasts
    ``--timeout`` (30 s by default), so a PATCH of a large file or over a slow
    link is cut and every other upload waits. It is recognised by gunicorn's
    environ (a ``gunicorn.socket`` without threads), at a process's first
    request of the endpoint: an app is built before its worker serves.
    """
    if "gunicorn.socket" in environ and not environ.get("wsgi.multithread"):
        log.warning(
            "gunicorn's sync worker cuts uploads longer than its --timeout and serves one "
            "at a time: run gunicorn with --worker-class "
            "resumable.worker.ResumableThreadWorker --threads 256 (see README)"
        )


class ResumableThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gthread worker with :class:`HeaderDeadlines` around each request's head."""

    def init_process(self) -> None:
        # resumable serve hands its Settings over; under another app, the default.
        settings = getattr(self.app, "settings", None) or Settings()
        if settings.s3_bucket:
            limit_malloc_arenas(S3_MALLOC_ARENAS)
        timeout = settings.header_timeout
        self.header_deadlines = HeaderDeadlines(timeout)
        self.header_deadlines.start()
        self.closer = futures.ThreadPoolExecutor(CLOSING_THREADS, thread_name_prefix="closer")
        #: Connections handed to the pool and not finished: running or queued.
        self.busy_threads = 0
        super().init_process()

    def begin_stop(self) -> None:
        """Running transfers end their bodies and answer; heads get a short grace."""
        stopping.begin()
        self.header_deadlines.hasten(time.monotonic() + STOP_HEAD_GRACE)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM, in the main thread; gunicorn then waits for the connections."""
        self.begin_stop()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGQUIT, SIGINT: the process exits once its threads end, so have transfers end."""
        self.begin_stop()
        super().handle_quit(sig, frame)

    def is_parent_alive(self) -> bool:
        """An orphaned worker stops like one sent SIGTERM (nobody would ever kill it)."""
        alive: bool = super().is_parent_alive()
        if not alive:
            self.begin_stop()
        return alive

    def enqueue_req(self, conn: TConn) -> None:
        self.busy_threads += 1  # main thread only, as is finish_request
        super().enqueue_req(conn)

    def set_accept_enabled(self, enabled: bool) -> None:
        """gunicorn's rule (room for another connection) and a free thread to serve it.

        Stopping, the worker's copies of the listeners close at once, not when
        it exits: gunicorn disables accepting right after its main loop ends.
        """
        super().set_accept_enabled(enabled and self.busy_threads < self.cfg.threads)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()

    def accept(self, listener: socket.socket) -> None:
        if not self.alive:
            return None  # stopping: the listener may be closed, and nothing new is taken
        super().accept(listener)
        if self.busy_threads >= self.cfg.threads:
            self.set_accept_enabled(False)  # at once: more may be waiting to be accepted

    def finish_request(self, conn: TConn, fs: futures.Future[object]) -> None:
        """Like gunicorn's, but a lingering close does not block the main thread."""
        self.busy_threads -= 1
        try:
            closing = fs.cancelled() or not fs.result()
        except Exception:  # noqa: BLE001 - gunicorn's own handling closes at once
            closing = False
        if not closing:
            super().finish_request(conn, fs)
            return
        self.nr_conns -= 1
        self.closer.submit(conn.close, True)
        return None

    def handle(self, conn: TConn) -> object:  # keep-alive (bool), or gunicorn's _DEFER
        """Serve ``conn`` while each next request follows within :data:`NEXT_REQUEST_WAIT`."""
        while True:
            conn.header_deadline = self.header_deadlines.arm(conn.sock)
            try:
                keep = super().handle(conn)
            finally:
                self.header_deadlines.disarm(conn.header_deadline)
            if keep is not True or not self.alive or not _next_request_soon(conn):
                return keep

    def handle_request(self, req: Request, conn: TConn) -> bool:
        # The head is parsed: from here on the body's own timeouts apply.
        if not self.header_deadlines.disarm(conn.header_deadline):
            return False  # cut at the deadline an instant ago: already answered 408
        serving.request = req  # so an unread body can make the answer say "close"
        try:
            keep: bool = super().handle_request(req, conn)
            return keep
        finally:
            serving.request = None
