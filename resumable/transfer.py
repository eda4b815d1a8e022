"""Streaming a request body into an upload while holding its lock.

This is the one loop every byte goes through: read a slice of the body into
a reused buffer, check the lease is still ours (a clock comparison), write
the slice, feed the checksum. Nothing else happens per slice but three
comparisons (a clock against the next deadline, a flag for the doorbell, a
flag for the process's stop).
The offset is committed when ``commit_bytes`` arrived or ``commit_seconds``
passed with bytes to commit; the lease is renewed every ``lease.interval``
(Redis only); release requests are read when the doorbell rings. While no
byte arrives the thread sleeps until the next of these deadlines, a ring, or
the process's stop (stopping.py): an idle upload costs nothing between them.

A body must keep moving: it is cut (``408``, bytes kept) when no byte comes
for ``--read-timeout`` seconds, and when a window of that many seconds
brings fewer than ``--min-body-rate`` bytes per second on average, so a
client trickling a byte now and then cannot hold a thread for ever.

How a body ends decides what is kept (docs/architecture.md, invariants 1, 4, 5).
In code the early endings are ``_ENDINGS``, one row each; the first three rows
are settled where ``_Run.stream`` finds them:

========================  ==============================  ==========
ending                    bytes kept                      answer
========================  ==============================  ==========
body complete             all (checksum must match)       204 / 460
more than the length      up to the length                413
process stopping          all received                    204
client gone / stalled     all received                    400 / 408
newer request took over   all received                    423
lease lost                only what was committed before  423
disk full                 all written                     507
========================  ==============================  ==========

With ``Upload-Checksum`` nothing is committed before the digest matched, so
every ending but the first keeps none of the request's bytes. The header's
digest is computed as the body streams. A digest announced as a trailer
(``Trailer: Upload-Checksum``, checksum-trailer) names its algorithm only
after the last byte, so that one is verified by reading the request's bytes
back from the file, which the page cache still holds.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import mmap
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import digests
from .body import ClientDisconnected, MalformedBody, RequestBody, open_body
from .checksum import Checksum, parse_checksum
from .events import POST_RECEIVE, HookAnswer
from .expiry import ExpiryPolicy
from .files import is_disk_full
from .lifecycle import Lifecycle, refusal
from .protocol import (
    BadRequest,
    ChecksumMismatch,
    InsufficientStorage,
    Locked,
    OffsetConflict,
    PayloadTooLarge,
    RequestTimeout,
)
from .records import UploadRecord
from .registry import HeartbeatResult, Lease, LeaseLost, Registry
from .settings import Settings
from .stopping import this_process
from .store import Store, StoredAhead, UploadWriter

#: Bytes of the request's body this request stored, in its WSGI environ (request log, metrics).
BYTES_RECEIVED = "resumable.bytes_received"


class _HandOver(Exception):
    """A newer request asked for the lock."""


class _Stopping(Exception):
    """The process is stopping (stopping.py): the body ends where it is."""


class _StoppedByHook(Exception):
    """A post-receive receiver stopped the upload (lifecycle.py)."""


@dataclass(frozen=True)
class _Ending:
    """How a body that ended early is settled: one row of the module docstring's table."""

    #: Whether the exception ends the body this way.
    matches: Callable[[BaseException], bool]
    #: What of the request's bytes is kept (it commits them, or not).
    keep: Callable[[_Run], None]
    #: What is answered: an error to raise, or the exception itself.
    answer: Callable[[_Run, BaseException], BaseException]
    #: Whether the rest of a small body is read so the connection stays usable.
    drain: bool = False


def _with_offset(run: _Run, error: BaseException) -> BaseException:
    assert isinstance(error, RequestTimeout)
    error.headers.update(run._offset_header())
    return error


#: The early endings, first match wins. The body complete, too long (413) and a
#: checksum mismatch (460) are settled where they are found, in _Run.stream.
_ENDINGS = (
    _Ending(
        lambda e: isinstance(e, ClientDisconnected),
        lambda run: run._keep_or_discard(),
        lambda run, e: BadRequest(f"connection closed inside the body: {e}"),
    ),
    _Ending(
        lambda e: isinstance(e, MalformedBody),
        lambda run: run._keep_or_discard(),
        lambda run, e: BadRequest(str(e)),
    ),
    _Ending(
        lambda e: isinstance(e, RequestTimeout),
        lambda run: run._keep_or_discard(),
        _with_offset,
    ),
    _Ending(
        lambda e: isinstance(e, _HandOver),
        lambda run: run._keep_or_discard(),
        lambda run, e: Locked(
            "a newer request for this upload took it over", run._offset_header()
        ),
    ),
    _Ending(  # nothing may be committed: the app answers 423 like every lost lease
        lambda e: isinstance(e, LeaseLost),
        lambda run: None,
        lambda run, e: e,
        drain=True,
    ),
    _Ending(
        is_disk_full,
        lambda run: run._make_room_and_keep(),
        lambda run, e: InsufficientStorage(
            f"storage is full; {run.record.offset} bytes are stored, retry later",
            run._offset_header(),
        ),
        drain=True,
    ),
)


def _ending_of(error: BaseException) -> _Ending | None:
    return next((ending for ending in _ENDINGS if ending.matches(error)), None)


#: Bytes given back on a full disk so the offset can still be committed.
ROOM_ON_FULL_DISK = 64 * 1024
#: How far ahead of a large body's bytes disk blocks are reserved: at first,
#: and at most (the window grows with what the request has written).
PREALLOCATE_FIRST = 1024 * 1024
PREALLOCATE_BYTES = 64 * 1024 * 1024


class BufferPool:
    """Reused read buffers: a request borrows one, so no slice allocates.

    Buffers are anonymous memory maps, not bytearrays: a bytearray is zeroed
    (every page touched) when made, while a map's pages become resident only
    when a read fills them. Hundreds of slow uploads, each receiving a few
    KiB per read into its own 1 MiB buffer, then cost what they hold, not
    1 MiB each. At most ``keep`` idle buffers are kept; others are unmapped.
    """

    def __init__(self, size: int, keep: int = 16):
        self.size = size
        self.keep = keep
        self.free: list[mmap.mmap] = []
        self.lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self.lock:
            if self.free:
                return self.free.pop()
        return mmap.mmap(-1, self.size)

    def give(self, buffer: mmap.mmap) -> None:
        with self.lock:
            if len(self.free) < self.keep:
                self.free.append(buffer)
                return
        try:
            buffer.close()
        except BufferError:
            pass  # a view of it is still alive (a traceback); freed with it


@dataclass
class Appender:
    settings: Settings
    registry: Registry
    store: Store
    pool: BufferPool
    expiry: ExpiryPolicy
    lifecycle: Lifecycle

    def append(
        self,
        environ: dict[str, Any],
        lease: Lease,
        record: UploadRecord,
        limit: int | None,
        checksum: Checksum | None,
        trailer_checksum: bool = False,
    ) -> UploadRecord:
        """Stream the request body onto ``record`` at its offset; commit; return it.

        ``limit`` is how many bytes this request may add (None: no bound).
        Raises a TusError after keeping what the table above says.
        """
        run = _Run(self, lease, record, checksum, trailer_checksum, environ)
        body = open_body(environ, run)
        try:
            return run.stream(body, limit)
        finally:
            environ[BYTES_RECEIVED] = environ.get(BYTES_RECEIVED, 0) + run.written


class _Run:
    """State of one append: kept apart so the loop reads locals, not lookups.

    It is also the body reader's waiter (body.Waiter): its doorbell is the
    lease's, its next wait the nearest deadline, its ``on_idle`` the timers.
    """

    def __init__(
        self,
        appender: Appender,
        lease: Lease,
        record: UploadRecord,
        checksum: Checksum | None,
        trailer_checksum: bool,
        environ: dict[str, Any],
    ):
        self.settings = appender.settings
        self.environ = environ
        #: Told of progress and of the finish, when receivers want them.
        self.lifecycle = appender.lifecycle
        reports = self.lifecycle.wants(POST_RECEIVE)
        self.progress_interval = self.settings.progress_interval if reports else math.inf
        #: A receiver's answer that stopped the upload (set from a delivery thread).
        self.stopped_by: HookAnswer | None = None
        self.registry = appender.registry
        self.store = appender.store
        self.pool = appender.pool
        self.expiry = appender.expiry
        self.lease = lease
        self.record: UploadRecord = record
        self.checksum = checksum
        self.trailer_checksum = trailer_checksum
        #: Bytes are only staged (never committed early) while a digest is due.
        self.staged = checksum is not None or trailer_checksum
        self.start = record.offset
        self.written = 0
        self.reported = 0  # ``written`` at the last post-receive
        now = time.monotonic()
        self.last_data = now
        #: The current --min-body-rate window: when it ends, and ``written`` at its start.
        self.window_end = now + self.settings.read_timeout
        self.window_start_written = 0
        self.window_minimum = self.settings.min_body_rate * self.settings.read_timeout
        self.committed = 0
        self.wakeup = lease.wakeup
        self.stopping = this_process()
        self.next_renewal = now + lease.interval
        #: When bytes that arrived by then are committed (not while staged).
        self.commit_due = math.inf if self.staged else now + self._commit_interval()
        self.next_progress = now + self.progress_interval
        self.next_check = now  # the nearest deadline the copy loop must see (_schedule)
        self._schedule()
        self.writer: UploadWriter | None = None

    # -- the loop --------------------------------------------------------------

    def stream(self, body: RequestBody, limit: int | None) -> UploadRecord:
        buffer = self.pool.take()
        view = memoryview(buffer)
        drain = False  # read the rest of a small body the client is still sending
        try:
            self.writer = self.lease.take_writer() or self._open_writer()
            self.writer.keepalive = self._keep_lease
            if self.trailer_checksum:
                self.writer.hold()
            try:
                overflow = self._loop(body, view, limit)
            except _Stopping:
                declared = body.declared_length
                if declared is None or self.written < declared:
                    return self._stopped()
                overflow = False  # the stop came with the body's last byte: end as usual
            except _StoppedByHook:
                self._stopped()
                assert self.stopped_by is not None
                stopped = refusal(POST_RECEIVE, self.stopped_by)
                stopped.headers.update(self._offset_header())
                raise stopped from None
            if overflow:
                drain = True
                self._keep_or_discard()
                raise PayloadTooLarge(
                    "body is longer than the upload's remaining length", self._offset_header()
                )
            if self.checksum is not None and not self.checksum.matches():
                self._discard()
                raise ChecksumMismatch("Upload-Checksum does not match the body")
            if self.trailer_checksum:
                self._verify_trailer(body, view)
            self._commit()
            return self.record
        except Exception as error:
            ending = _ending_of(error)
            if ending is None:
                raise
            drain = ending.drain
            ending.keep(self)
            answer = ending.answer(self, error)
            if answer is error:
                raise
            raise answer from None
        finally:
            try:
                if self.writer is not None:
                    self.writer.close()
                view.release()
                self.pool.give(buffer)
            finally:
                body.release(drain)  # whatever failed above, hand the connection back

    def _loop(self, body: RequestBody, view: memoryview, limit: int | None) -> bool:
        """Copy the body to the writer; True when it ran past ``limit``."""
        writer = self.writer
        assert writer is not None
        declared = body.declared_length
        target = writer.splice_target()
        if (
            body.can_splice
            and target is not None
            and self.checksum is None
            and not self.trailer_checksum
            and declared is not None
            and (limit is None or declared <= limit)
        ):
            self._splice_loop(body, writer, target, len(view))
            return False
        write = writer.write
        lease = self.lease
        checksum = self.checksum
        commit_every = None if self.staged else self.settings.commit_bytes
        wakeup = self.wakeup
        stopping = self.stopping
        room = limit
        size = len(view)
        while True:
            if room is None:
                n = body.readinto(view)
            else:
                n = body.readinto(view[: min(size, room + 1)])
            if n == 0:
                return False
            accepted = n if room is None or n <= room else room
            if accepted:
                if not lease.is_valid():
                    raise LeaseLost(self.record.id)
                chunk = view[:accepted]
                write(chunk)
                if checksum is not None:
                    checksum.update(chunk)
                self.written += accepted
                if room is not None:
                    room -= accepted
                if commit_every is not None and self.written - self.committed >= commit_every:
                    self._commit()
            if accepted < n:
                return True
            now = time.monotonic()
            self.last_data = now
            if now >= self.next_check or wakeup.rung or stopping.is_set:
                self._heartbeat(now)

    def _splice_loop(
        self, body: RequestBody, writer: UploadWriter, target: int, size: int
    ) -> None:
        """The same loop for a body that fits: bytes moved by the kernel alone,
        into the writer's ``splice_target``.

        Only without a checksum (a digest needs the bytes in user space) and
        when Content-Length already shows the body fits, so it cannot overrun.
        """
        lease = self.lease
        commit_every = self.settings.commit_bytes
        wakeup = self.wakeup
        stopping = self.stopping
        # Room is reserved ahead of the bytes (writer.reserve), never
        # beyond the declared body, in steps as large as what this request has
        # already written (from 1 MiB up to PREALLOCATE_BYTES), so the reservation
        # reaches at most twice the bytes written plus 1 MiB: a thousand slow
        # clients declaring gigabytes reserve about what they sent.
        end = self.start + (body.declared_length or 0)
        reserved = self.start

        def check_lease() -> None:
            if not lease.is_valid():
                raise LeaseLost(self.record.id)

        while True:
            if reserved < end and self.start + self.written + size > reserved:
                ahead = min(PREALLOCATE_BYTES, max(PREALLOCATE_FIRST, self.written))
                step = min(ahead, end - reserved)
                reserved = reserved + step if writer.reserve(reserved, step) else end
            n = body.splice_into(target, size, check_lease)
            if n == 0:
                return
            self.written += n
            if self.written - self.committed >= commit_every:
                self._commit()
            now = time.monotonic()
            self.last_data = now
            if now >= self.next_check or wakeup.rung or stopping.is_set:
                self._heartbeat(now)

    # -- timers ------------------------------------------------------------------

    def _commit_interval(self) -> float:
        """``commit_seconds`` give or take half: uploads that started together
        (a reconnecting fleet, a restart) would otherwise commit together,
        every one creating a sidecar in the same directory at the same instant."""
        return self.settings.commit_seconds * random.uniform(0.5, 1.5)

    @property
    def wake_fd(self) -> int:
        return self.wakeup.fd

    @property
    def stop_fd(self) -> int:
        return self.stopping.fd

    def next_wait(self) -> float:
        """Seconds the body reader may sleep without a byte: to the nearest deadline.

        A commit is a reason to wake only when bytes wait for it.
        """
        due = min(self.next_renewal, self.window_end, self.last_data + self.settings.read_timeout)
        if self.written > self.committed:
            due = min(due, self.commit_due)
        return due - time.monotonic()

    def on_idle(self) -> None:
        """Called by the body reader when rung or due while no byte arrives."""
        now = time.monotonic()
        self._heartbeat(now)
        if now - self.last_data >= self.settings.read_timeout:
            self._stalled()

    def _schedule(self) -> None:
        """The nearest deadline the copy loop checks: renewal, the rate window, a commit,
        a progress report."""
        self.next_check = min(
            self.next_renewal, self.window_end, self.commit_due, self.next_progress
        )

    def _stalled(self) -> None:
        raise RequestTimeout(
            f"no body bytes for {self.settings.read_timeout:g} s; kept what arrived"
        )

    def _heartbeat(self, now: float) -> None:
        """Whatever is due or asked: the stop, the rate check, renewal and requests, a commit."""
        if self.stopping.is_set:
            raise _Stopping()
        if self.stopped_by is not None:
            raise _StoppedByHook()
        if now >= self.next_progress:
            self._report_progress(now)
        if now >= self.window_end:
            self._check_rate(now)
        state = self._renew(now, asked=self.wakeup.answer())
        if state is HeartbeatResult.HARD_RELEASE:
            raise _HandOver()
        if not self.staged and (state is HeartbeatResult.SOFT_RELEASE or now >= self.commit_due):
            if self.written > self.committed:
                self._commit()
            else:
                self.commit_due = now + self._commit_interval()
        if state is HeartbeatResult.SOFT_RELEASE:
            self.lease.acknowledge()
        self._schedule()

    def _report_progress(self, now: float) -> None:
        """post-receive, when bytes came since the last one; its answer may stop us."""
        self.next_progress = now + self.progress_interval
        if self.written == self.reported:
            return
        self.reported = self.written
        received = dataclasses.replace(self.record, offset=self.start + self.written)
        event_id = f"{self.record.id}.post-receive.{received.offset}"
        self.lifecycle.tell(POST_RECEIVE, received, self.environ, event_id, self._answered)

    def _answered(self, answer: HookAnswer) -> None:
        """A post-receive answer (on a delivery thread): stop at the loop's next look."""
        if answer.stop_upload:
            self.stopped_by = answer
            self.next_check = 0.0
            self.wakeup.ring()

    def _renew(self, now: float, asked: bool = False) -> HeartbeatResult:
        """Renew the lease when due (or when a release request rang): the mailbox's state.

        Raises LeaseLost when the lock is no longer ours.
        """
        state = HeartbeatResult.HELD
        if asked or now >= self.next_renewal:
            state = self.lease.heartbeat()  # renews (Redis) and reads the mailbox
            self.next_renewal = now + self.lease.interval
        if state is HeartbeatResult.LOST:
            raise LeaseLost(self.record.id)
        return state

    def _keep_lease(self) -> None:
        """While the store works for us (a slow part, completing an object): renew when due.

        Release requests wait for the loop; a lease that is lost ends the wait.
        """
        self._renew(time.monotonic())
        if not self.lease.is_valid():
            raise LeaseLost(self.record.id)

    def _check_rate(self, now: float) -> None:
        """At the end of a --read-timeout window: did it bring the minimum?"""
        received = self.written - self.window_start_written
        if received == 0 and now - self.last_data >= self.settings.read_timeout:
            self._stalled()
        if received < self.window_minimum:
            raise RequestTimeout(
                f"the body brought {received} bytes in {self.settings.read_timeout:g} s, under "
                f"the minimum of {self.settings.min_body_rate} bytes/s; kept what arrived"
            )
        self.window_start_written = self.written
        self.window_end = now + self.settings.read_timeout

    # -- endings -----------------------------------------------------------------

    def _open_writer(self) -> UploadWriter:
        """The store's writer at the recorded offset; a store found ahead moves it up (409)."""
        try:
            return self.store.open_writer(self.record.id, self.start)
        except StoredAhead as ahead:
            self.record.offset = ahead.offset
            self.expiry.stamp(self.record, time.time())
            # Its representation digest was not checked before the crash either.
            digests.verify(self.store, self.record)
            # The store completed the upload before a crash took the commit: the
            # finish is announced now (its ledger entry may have been dropped since).
            with self.lifecycle.finishing_commit(
                self.record, self.environ, self.record.is_complete
            ):
                self.registry.save(self.lease, self.record)
            raise OffsetConflict(
                f"the upload's offset is {ahead.offset}", self._offset_header()
            ) from None

    def _commit(self) -> None:
        offset = self.start + self.written
        now = time.time()
        # The record as the registry will save it, so a store that keeps it
        # with the bytes (S3) need not write it twice.
        settled = dataclasses.replace(self.record, offset=offset)
        self.expiry.stamp(settled, now)
        # A refused or failed pre-finish leaves the upload's last bytes unacknowledged.
        finishes = settled.is_complete and self.record.offset < offset
        with self.lifecycle.finishing_commit(settled, self.environ, finishes):
            if self.written > self.committed:
                if not self.lease.is_valid():
                    # A store's own record (S3's) is written by settle: never by a
                    # holder that may have been replaced.
                    raise LeaseLost(self.record.id)
                self._writer().settle(settled)
            if finishes:
                digests.verify(self.store, settled)
                self.record.digest = settled.digest
            self.record.offset = offset
            self.expiry.stamp(self.record, now)
            self.registry.save(self.lease, self.record)
        self.committed = self.written
        if not self.staged:
            self.commit_due = time.monotonic() + self._commit_interval()
        self._schedule()

    def _stopped(self) -> UploadRecord:
        """The process stops: the body ends here, cut short, and what arrived is kept.

        Every byte read from the socket was written before the stop was
        seen, so committing now stores and acknowledges all of them. The
        answer is a success with the offset reached (204, or 201 for a
        creation): the client resumes from it, on another server or after
        the restart. The rest of the body stays unread, so the answer says
        ``Connection: close`` (``body.release``). A lease lost meanwhile
        answers 423 like any other; with a digest due nothing is kept.
        """
        if self.staged:
            self._discard()
        elif self.written > self.committed:
            self._commit()
        return self.record

    def _discard(self) -> None:
        """Drop this request's bytes: the offset stays where it was."""
        self._writer().cut(self.start)
        self.written = 0
        self.record.offset = self.start

    def _verify_trailer(self, body: RequestBody, view: memoryview) -> None:
        value = body.trailers.get("upload-checksum")
        if value is None:
            self._discard()
            raise ChecksumMismatch("the Upload-Checksum trailer never arrived")
        try:
            checksum = parse_checksum(value)
        except BadRequest:
            self._discard()
            raise
        assert checksum is not None
        writer = self._writer()
        position, end = self.start, self.start + self.written
        while position < end:
            n = writer.read_back(position, view[: min(len(view), end - position)])
            if n <= 0:
                raise OSError(errno.EIO, "upload file is shorter than the bytes just written")
            checksum.update(view[:n])
            position += n
        if not checksum.matches():
            self._discard()
            raise ChecksumMismatch("Upload-Checksum trailer does not match the body")

    def _make_room_and_keep(self) -> None:
        """On a full disk: give back the last few blocks written, then commit.

        Committing writes a new sidecar, which needs a free block that the
        data file may just have taken. The bytes given back were never
        acknowledged; the client sends them again from the committed offset.
        """
        if self.staged:
            self._discard()
            return
        end = self.start + self.written
        aligned = (end // ROOM_ON_FULL_DISK - 1) * ROOM_ON_FULL_DISK
        keep_until = max(self.start + self.committed, aligned)
        self.written = self._writer().cut(keep_until) - self.start
        if self.written > self.committed:
            self._commit()

    def _writer(self) -> UploadWriter:
        assert self.writer is not None, "the append opened no writer"
        return self.writer

    def _offset_header(self) -> dict[str, str]:
        return {"Upload-Offset": str(self.record.offset)}

    def _keep_or_discard(self) -> None:
        """Keep or drop this request's bytes after it ended early.

        Called while another ending is being handled, so a lease lost
        meanwhile must not replace that answer: then there is nothing we
        may commit, and the newer holder cuts the file back to its offset.
        """
        if self.staged:
            self._discard()
        elif self.written > self.committed:
            try:
                self._commit()
            except LeaseLost:
                pass
