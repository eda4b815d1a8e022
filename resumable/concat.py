"""Concatenation: a final upload made of partial uploads, joined by the kernel.

A final may be created before its partials finish (concatenation-unfinished).
It is joined by :meth:`Concatenator.complete` under the final's own lock:

* at its creation, inside the ``POST``, when every partial is already complete;
* otherwise by :class:`BackgroundJoins` once the ``PATCH`` that completes its
  last partial has answered: a client's ``PATCH`` never waits for the joins
  of other people's finals;
* and whenever the final is read (``HEAD``, ``GET``) or collected (gc), the
  safety net after a crash or a stop that lost a pending background join.

Joining twice is harmless: the second call finds the final complete and stops.

Amplification is bounded by two rules: a final lists each partial at most once
(so its size is at most the bytes really uploaded into its parts), and no
final may be larger than ``--max-size`` (or 2^63-1 bytes without one), checked
when the final is created, when a listed partial declares a deferred length
(under the final's lock, so two partials declaring at once cannot both pass)
and again, definitively, when joining. So no request causes more than
``--max-size`` bytes to be written.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .expiry import ExpiryPolicy
from .lifecycle import Lifecycle
from .protocol import (
    MAX_UPLOAD_LENGTH,
    BadRequest,
    Locked,
    NotFound,
    PayloadTooLarge,
    UploadRejected,
    is_valid_upload_id,
)
from .records import UploadRecord
from .registry import HeartbeatResult, Lease, LeaseLost, Registry
from .store import Store

log = logging.getLogger("resumable")


def parse_final(value: str, base_path: str, max_parts: int) -> list[str]:
    """``final;<url> <url> …`` → the partial ids in order, each listed once."""
    kind, semicolon, rest = value.partition(";")
    if kind.strip() != "final" or not semicolon:
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    urls = rest.split()
    if not urls:
        raise BadRequest("Upload-Concat final lists no uploads")
    if len(urls) > max_parts:
        raise BadRequest(f"Upload-Concat final may list at most {max_parts} uploads")
    part_ids = [upload_id_from_url(url, base_path) for url in urls]
    seen: set[str] = set()
    for part_id in part_ids:
        if part_id in seen:
            # A repeated part would be copied once per listing: one small
            # partial listed a thousand times makes one request write a
            # thousand copies. Repeating a part has no use a client needs.
            raise BadRequest(f"Upload-Concat final lists upload {part_id} more than once")
        seen.add(part_id)
    return part_ids


def upload_id_from_url(url: str, base_path: str) -> str:
    """The id of an upload URL: absolute, host-relative, or a bare id.

    Only the path counts (the client may know us under another host, e.g.
    behind a proxy); it must end in ``<base path><id>``.
    """
    try:
        path = unquote(urlsplit(url).path)
    except ValueError:  # e.g. unbalanced brackets of an IPv6 host
        raise NotFound(f"{url!r} is not an upload URL") from None
    if is_valid_upload_id(path):
        return path
    prefix, _, upload_id = path.rpartition("/")
    if not (prefix + "/").endswith(base_path) or not is_valid_upload_id(upload_id):
        raise NotFound(f"{url} is not an upload of this server")
    return upload_id


def final_length(parts: list[UploadRecord]) -> int | None:
    """Sum of the parts' lengths, once every one is known."""
    if any(part.length is None for part in parts):
        return None
    return sum(part.length for part in parts)  # type: ignore[misc]


@dataclass
class Concatenator:
    registry: Registry
    store: Store
    expiry: ExpiryPolicy
    #: ``--max-size``; 0 means no limit but the protocol's 2^63-1.
    max_size: int = 0
    #: pre-finish and post-finish of a joined final (lifecycle.py), when hooks are set.
    lifecycle: Lifecycle | None = None

    @property
    def size_limit(self) -> int:
        return self.max_size or MAX_UPLOAD_LENGTH

    def check_size(self, total: int, final_id: str | None = None) -> None:
        """The one rule on a final's size: 413 above ``size_limit``."""
        if total > self.size_limit:
            which = f"final upload {final_id}" if final_id else "the final upload"
            raise PayloadTooLarge(f"{which} would be larger than {self.size_limit} bytes")

    def load_parts(self, part_ids: list[str]) -> list[UploadRecord]:
        """The partials for a new final: each must exist and be a partial."""
        records = []
        for part_id in part_ids:
            record = self.registry.get(part_id)
            if record is None:
                raise NotFound(f"partial upload {part_id} does not exist")
            if not record.is_partial:
                raise BadRequest(f"upload {part_id} is not a partial upload")
            records.append(record)
        return records

    def complete(self, final_id: str, wait: float = 0.0) -> UploadRecord | None:
        """Join the final's parts if all are complete; its record, or None if gone.

        Nothing is locked unless the parts look ready, so polling a waiting
        final costs reads only. ``wait`` is how long to wait for a join that
        another request is running (it ends soon, and the caller wants its
        result); 0 gives up at once.
        """
        final = self.registry.get(final_id)
        if final is None or final.is_complete or self._ready_parts(final) is None:
            return final
        if wait == 0:
            lease = self.registry.try_acquire(final_id)
            if lease is None:  # someone else is joining it right now
                return self.registry.get(final_id)
        else:
            try:
                lease = self.registry.acquire(final_id, wait=wait)
            except Locked:
                return self.registry.get(final_id)
        try:
            return self._join(lease, final_id)
        finally:
            lease.release()

    def _ready_parts(self, final: UploadRecord) -> list[UploadRecord] | None:
        """The final's parts when every one exists and is complete, else None."""
        parts = []
        for part_id in final.parts:
            part = self.registry.get(part_id)
            if part is None or not part.is_complete:
                return None
            parts.append(part)
        return parts

    def _join(self, lease: Lease, final_id: str) -> UploadRecord | None:
        """The copy itself, under the final's lock, after checking again."""
        final = self.registry.get(final_id)
        if final is None or final.is_complete:
            return final
        parts = self._ready_parts(final)
        if parts is None:
            return final
        lengths = [part.length for part in parts]
        total = sum(lengths)  # type: ignore[arg-type]
        if total > self.size_limit:
            # Two deferred partials can declare their lengths at the same
            # moment (or while the final was being created): this is the
            # check nothing can race. The final can never complete; gc
            # collects it.
            log.warning(
                "final upload %s is never joined: its parts add up to %d bytes, over %d",
                final_id,
                total,
                self.size_limit,
            )
            return final

        def keep_lease() -> None:
            # A long copy outlives a Redis lock's TTL unless renewed;
            # a lost lease means another request took over: stop.
            if lease.heartbeat() is HeartbeatResult.LOST:
                raise LeaseLost(final_id)

        try:
            self.store.concatenate(final_id, final.parts, lengths, keep_lease)  # type: ignore[arg-type]
        except FileNotFoundError:
            return final  # a part was deleted meanwhile: it can never be joined
        final.length = final.offset = total
        self.expiry.stamp(final, time.time())
        if self.lifecycle is None:
            self.registry.save(lease, final)
        else:
            try:
                with self.lifecycle.finishing_commit(final, None):
                    self.registry.save(lease, final)
            except UploadRejected:
                self.registry.delete_upload(lease, final)  # refused: it will never be joined
                raise
        self.registry.remove_waiting(final_id, final.parts)
        return final

    def save_length(self, lease: Lease, record: UploadRecord, length: int) -> None:
        """Save an upload's late (deferred) length; for a partial, within its finals' limit.

        Every waiting final that lists a partial is locked (in id order, so
        two declarations never deadlock) while the sizes are added up and the
        length saved: a second partial of the same final declaring at the
        same moment waits, then sees this length.
        """
        finals = sorted(self.registry.waiting_finals(record.id)) if record.is_partial else []
        leases: list[Lease] = []
        try:
            for final_id in finals:
                leases.append(self.registry.acquire(final_id))
            for final_id in finals:
                final = self.registry.get(final_id)
                if final is None or final.is_complete:
                    continue
                total = 0
                for listed in final.parts:
                    if listed == record.id:
                        total += length
                    else:
                        other = self.registry.get(listed)
                        total += (other.length or 0) if other is not None else 0
                self.check_size(total, final_id)
            record.length = length
            self.expiry.stamp(record, time.time())
            self.registry.save(lease, record)
        finally:
            for final_lease in leases:
                final_lease.release()

    def is_orphaned(self, final: UploadRecord, now: float) -> bool:
        """A waiting final that can never complete: a partial gone or expired, or too large."""
        if final.is_complete:
            return False
        parts = []
        for part_id in final.parts:
            part = self.registry.get(part_id)
            if part is None or self.expiry.is_expired(part, now):
                return True
            parts.append(part)
        total = final_length(parts)
        return total is not None and total > self.size_limit

    def complete_waiting(self, part_id: str) -> None:
        """After ``part_id`` completed: complete every final that waited for it."""
        for final_id in self.registry.waiting_finals(part_id):
            self.complete(final_id, wait=self.registry.lock_wait)


class BackgroundJoins:
    """Joins of waiting finals, run by one thread per process, off the request path.

    The ``PATCH`` that completes a partial only hands the partial's id over
    and answers. One thread per process runs the joins one after another, so
    however many finals wait, a worker copies one at a time. A join still
    queued when the process stops is not lost: the final is joined when it
    is next read or collected.
    """

    def __init__(self, concatenator: Concatenator):
        self.concatenator = concatenator
        self.queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def submit(self, part_id: str) -> None:
        with self.lock:
            # Threads do not survive fork: a worker forked from a process
            # that started one needs its own.
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.queue = queue.SimpleQueue()
                self.pid = os.getpid()
                self.thread = threading.Thread(
                    target=self._run, args=(self.queue,), name="resumable-joins", daemon=True
                )
                self.thread.start()
            self.queue.put(part_id)

    def _run(self, pending: queue.SimpleQueue[str]) -> None:
        while True:
            part_id = pending.get()
            try:
                self.concatenator.complete_waiting(part_id)
            except Exception as error:  # noqa: BLE001 - the thread must outlive one failure
                log.warning("joining the finals waiting for %s failed for now: %s", part_id, error)
