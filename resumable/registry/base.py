"""What every registry backend provides: records, offsets, locks, release requests.

The lock protocol (docs/architecture.md, invariants 2 and 3):

* A writer (PATCH, DELETE, concatenation) *acquires* the upload's lock. If it
  is held, the newcomer posts a **hard** release request and waits up to
  ``lock_wait`` for the holder to commit what it has and let go; then 423.
* A reader (HEAD) posts a **soft** request instead: the holder commits every
  byte it has received, acknowledges, and keeps going. So dashboards can poll
  HEAD without breaking running uploads, and a client retrying past a dead
  connection still learns every byte that arrived; its following PATCH then
  frees the stuck holder with a hard request.
* A request rings the holder's doorbell (wakeups.py): the holder wakes at
  once, whether it is waiting for bytes or copying them, and reads its
  mailbox. Between requests it reads nothing; a Redis holder also renews
  its lease (and reads its mailbox) every ``interval`` seconds, an embedded
  one never needs to (the kernel keeps an flock for as long as it lives).
  Commits are conditional on still holding the lease, and a holder whose
  lease may have run out (paused past its TTL) stops before writing.
"""

from __future__ import annotations

import enum
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from .. import metrics
from ..ledger import FinishLedger
from ..protocol import Locked, TusError, UploadRejected
from ..records import UploadRecord
from ..store import Store, UploadWriter
from .wakeups import Silent, Wakeup

POLL_SECONDS = 0.01
#: A holder usually answers a soft request within a few milliseconds: the
#: requester looks this soon first, then every POLL_SECONDS.
FIRST_LOOK_SECONDS = 0.003
REPEAT_REQUEST_SECONDS = 0.5


class HeartbeatResult(enum.Enum):
    """What a holder finds at its heartbeat."""

    HELD = "held"
    SOFT_RELEASE = "soft"  # a reader wants the newest offset committed
    HARD_RELEASE = "hard"  # a writer wants the lock
    LOST = "lost"  # the lease expired and someone else may own the upload


class ReleaseState(enum.Enum):
    """What a request waiting on a holder finds (see ``Registry.await_holder_commit``)."""

    UNLOCKED = "unlocked"  # nobody holds the upload: its record is final for now
    ACKNOWLEDGED = "acknowledged"  # the holder committed what it had, for a soft request
    PENDING = "pending"  # held, and not answered yet


class RegistryUnavailable(Exception):
    """The registry's backend cannot be reached now: nothing was changed; the app answers 503.

    Backends translate their own client's errors into this one, so no layer
    above the registry knows which client library a backend uses.
    """


class LeaseLost(Exception):
    """The lock is no longer ours: stop writing, commit nothing."""


class Lease(ABC):
    """The right to write one upload, until released or lost."""

    upload_id: str
    #: Seconds between renewals of the lease (inf when it needs none).
    interval: float
    #: Rung when a release request is posted for this upload.
    wakeup: Wakeup | Silent

    @abstractmethod
    def heartbeat(self) -> HeartbeatResult:
        """Renew the lease and read release requests addressed to it."""

    @abstractmethod
    def acknowledge(self) -> None:
        """Tell the soft requester we committed and keep going."""

    @abstractmethod
    def is_valid(self) -> bool:
        """Cheap local check, before each write: can the lease still be ours?"""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up (no-op if it was lost)."""

    def take_writer(self) -> UploadWriter | None:
        """The writer opened with the lease (the caller closes it), or None."""
        return None


class BirthLease(Lease):
    """The right to write the upload a POST is creating, before anyone can know it.

    Its id is random and unpublished until the ``201`` answer, so no other
    request can reach it and no lock is taken; its record is published by
    its first commit. A creation with data so costs one record write and no
    lock files or round trips, which is most of the price of a small upload.
    The writer the store made with the upload stays open for the append that
    follows, which saves opening it a second time.
    """

    interval = math.inf  # nothing to renew

    def __init__(self, upload_id: str, writer: UploadWriter):
        self.upload_id = upload_id
        self.wakeup = Silent()
        #: Whether a commit has written its record: others may know the upload now.
        self.published = False
        self.writer: UploadWriter | None = writer

    def take_writer(self) -> UploadWriter | None:
        writer, self.writer = self.writer, None
        return writer

    def heartbeat(self) -> HeartbeatResult:
        return HeartbeatResult.HELD

    def acknowledge(self) -> None:
        """Nobody can have asked."""

    def is_valid(self) -> bool:
        return True

    def release(self) -> None:
        """Nothing is locked; the writer is closed if no append took it."""
        writer = self.take_writer()
        if writer is not None:
            writer.close()


class Registry(ABC):
    """Upload records and their locks."""

    def __init__(
        self, store: Store, lock_ttl: float, lock_wait: float, renewal_interval: float
    ):
        self.store = store
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        #: Seconds between a holder's lease renewals (where leases need renewing).
        self.renewal_interval = renewal_interval
        #: Owed post-finish events, when a receiver wants them (lifecycle.py).
        self.owed_finishes: FinishLedger | None = None

    def problem(self) -> str | None:
        """Why the registry cannot serve now (for /readyz), or None."""
        return None

    def finish_owed(self, upload_id: str) -> bool:
        """Whether the upload's post-finish is still owed to a receiver."""
        ledger = self.owed_finishes
        return ledger is not None and ledger.get(upload_id) is not None

    @abstractmethod
    def finish_ledger(self) -> FinishLedger:
        """Where owed post-finish events are kept, beside this registry's records."""

    # -- records ---------------------------------------------------------------

    def create(self, record: UploadRecord) -> None:
        """Make a new upload exist, empty: its data file, then its record."""
        self.store.create(record.id).close()
        try:
            self.put_record(record)
        except BaseException:
            self.store.delete(record.id)  # a refused creation leaves nothing behind
            raise

    def create_with_data(
        self, record: UploadRecord, append: Callable[[Lease, UploadRecord], UploadRecord]
    ) -> UploadRecord:
        """Make a new upload exist with the bytes ``append`` streams into it.

        ``append`` gets a BirthLease: no lock is taken, and the record is
        written by its first commit. When ``append`` ends early with a
        TusError, what it committed stays: the upload exists at that offset
        and the error goes on to the answer, which names it. When the
        upload's finish was refused (UploadRejected) it is deleted, and any
        other error leaves nothing.
        """
        lease = BirthLease(record.id, self.store.create(record.id))
        try:
            record = append(lease, record)
        except UploadRejected:
            lease.release()
            if lease.published:  # earlier commits made it known: delete it like a DELETE
                self._delete_published(record.id)
            else:
                self.store.delete(record.id)
            raise
        except BaseException as error:
            lease.release()
            if not lease.published:  # a TusError keeps what came; anything else, nothing
                if isinstance(error, TusError):
                    self.put_record(record)
                else:
                    self.store.delete(record.id)
            raise
        lease.release()  # closes the data file if no append took it
        if not lease.published:
            self.put_record(record)
        return record

    def _delete_published(self, upload_id: str) -> None:
        lease = self.acquire(upload_id)
        try:
            record = self.get(upload_id)
            if record is not None:
                self.delete_upload(lease, record)
        finally:
            lease.release()

    @abstractmethod
    def put_record(self, record: UploadRecord) -> None:
        """Write the record whole, unconditionally (creation, or a birth lease's commits)."""

    @abstractmethod
    def get(self, upload_id: str) -> UploadRecord | None:
        """The record, or None when no such upload exists."""

    def save(self, lease: Lease, record: UploadRecord) -> None:
        """Commit offset/length changes; raises LeaseLost unless ``lease`` holds."""
        if isinstance(lease, BirthLease):
            self.put_record(record)
            lease.published = True
            return
        self.save_locked(lease, record)

    @abstractmethod
    def save_locked(self, lease: Lease, record: UploadRecord) -> None:
        """``save`` for a lease taken through the lock."""

    @abstractmethod
    def delete_locked(self, lease: Lease) -> None:
        """Forget the upload, then remove it from the store; LeaseLost unless ``lease`` holds."""

    # -- concatenation: which finals wait for a partial ----------------------

    @abstractmethod
    def add_waiting(self, final_id: str, part_ids: list[str]) -> None:
        """Remember that ``final_id`` completes when these partials do."""

    @abstractmethod
    def waiting_finals(self, part_id: str) -> list[str]:
        """Finals that listed ``part_id`` and may still be waiting for it."""

    @abstractmethod
    def remove_waiting(self, final_id: str, part_ids: list[str]) -> None:
        """Forget ``final_id`` in the index of each part."""

    @abstractmethod
    def drop_waiting_index(self, part_id: str) -> None:
        """Forget which finals listed ``part_id`` (the part is gone)."""

    def remove_leftovers(self, older_than: float) -> int:
        """Remove what crashes left of the registry's own (files of the embedded one)."""
        return 0

    def delete_upload(self, lease: Lease, record: UploadRecord) -> None:
        """Delete an upload and its entries in the concatenation index.

        A finished upload's owed post-finish is confirmed first: once the
        record is gone, only the confirmation tells the upload did finish.
        """
        if record.is_complete and self.owed_finishes is not None:
            self.owed_finishes.confirm(record.id)
        self.delete_locked(lease)
        if record.is_final:
            self.remove_waiting(record.id, record.parts)
        elif record.is_partial:
            self.drop_waiting_index(record.id)

    # -- locks -----------------------------------------------------------------

    @abstractmethod
    def try_acquire(self, upload_id: str) -> Lease | None:
        """The lock if it is free right now."""

    @abstractmethod
    def request_release(self, upload_id: str, hard: bool) -> bool:
        """Post a release request to the current holder; False if none holds it."""

    @abstractmethod
    def release_state(self, upload_id: str) -> ReleaseState:
        """Whether the upload is held, and if so whether a soft request was acknowledged."""

    @abstractmethod
    def is_locked(self, upload_id: str) -> bool:
        """Whether some request holds the upload now."""

    def acquire(self, upload_id: str, wait: float | None = None) -> Lease:
        """The lock, asking its holder to let go; Locked after ``wait`` seconds."""
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        next_request = 0.0
        waited = False
        while True:
            lease = self.try_acquire(upload_id)
            if lease is not None:
                return lease
            if not waited:
                waited = True
                metrics.count_lock_wait()
            now = time.monotonic()
            if now >= next_request:
                # Asked again now and then: the lock may have passed to
                # another newcomer, which our first request did not address.
                self.request_release(upload_id, hard=True)
                next_request = now + REPEAT_REQUEST_SECONDS
            if now >= deadline:
                metrics.count_locked()
                raise Locked("another request is writing this upload; retry shortly")
            time.sleep(POLL_SECONDS)

    def await_holder_commit(self, upload_id: str, wait: float | None = None) -> None:
        """Before answering HEAD: get the holder's newest offset committed.

        Returns once the upload is unlocked or its holder acknowledged our
        soft request, or after ``wait`` (a dead holder whose lease has not run
        out yet); the committed offset is truthful in every case.
        """
        if not self.request_release(upload_id, hard=False):
            return  # nobody holds it
        now = time.monotonic()
        deadline = now + (self.lock_wait if wait is None else wait)
        next_request = now + REPEAT_REQUEST_SECONDS
        pause = FIRST_LOOK_SECONDS
        while now < deadline:
            time.sleep(pause)
            pause = POLL_SECONDS
            if self.release_state(upload_id) is not ReleaseState.PENDING:
                return
            now = time.monotonic()
            if now >= next_request:
                # The lock may have changed hands, and a new holder starts
                # with an empty mailbox: ask it too.
                self.request_release(upload_id, hard=False)
                next_request = now + REPEAT_REQUEST_SECONDS
