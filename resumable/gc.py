"""Garbage collection: expired uploads, finals whose partials are gone, crash leftovers.

Safe to run while servers serve and on several hosts at once: an upload is
deleted only under its own lock, after its expiry is checked again under that
lock, so a PATCH that slid the expiry meanwhile wins. Leftover files (a
temporary sidecar of a crashed rename, a data file whose creation never got
its sidecar, lock files of deleted uploads) are removed only once they are
older than ``grace`` seconds, so a request still making them is never raced.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .concat import Concatenator
from .expiry import ExpiryPolicy
from .lifecycle import Lifecycle
from .records import UploadRecord
from .registry import Registry
from .store import Store

log = logging.getLogger("resumable.gc")

GRACE_SECONDS = 3600.0


@dataclass
class Report:
    expired: int = 0
    leftovers: int = 0
    locked: int = 0
    #: Owed post-finish events delivered (lifecycle.py).
    announced: int = 0

    def __str__(self) -> str:
        return (
            f"deleted {self.expired} expired uploads and {self.leftovers} leftover files; "
            f"{self.locked} expired uploads were busy and stay for the next run"
            + (f"; delivered {self.announced} owed post-finish events" if self.announced else "")
        )


def collect(
    registry: Registry,
    store: Store,
    expiry: ExpiryPolicy,
    max_size: int = 0,
    now: float | None = None,
    grace: float = GRACE_SECONDS,
    lifecycle: Lifecycle | None = None,
) -> Report:
    now = time.time() if now is None else now
    report = Report()
    concatenator = Concatenator(registry, store, expiry, max_size, lifecycle)

    def doomed(record: UploadRecord | None) -> bool:
        if record is None:
            return False
        if record.is_final and not record.is_complete:
            return concatenator.is_orphaned(record, now)
        return expiry.is_expired(record, now, registry.finish_owed)

    for upload_id in list(store.upload_ids()):
        record = registry.get(upload_id)
        if record is None:
            # A sidecar the registry disowns: a deletion that crashed between
            # forgetting the record and removing the files.
            store.delete(upload_id)
            report.leftovers += 1
            continue
        if record.is_final and not record.is_complete and not doomed(record):
            # A join lost when a process stopped: done here if nobody read
            # the final since.
            concatenator.complete(upload_id)
            continue
        if not doomed(record):
            continue
        lease = registry.try_acquire(upload_id)
        if lease is None:
            report.locked += 1
            continue
        try:
            record = registry.get(upload_id)
            if record is not None and doomed(record):
                registry.delete_upload(lease, record)
                report.expired += 1
                log.info("deleted expired upload %s", upload_id)
        finally:
            lease.release()
    report.leftovers += store.remove_leftovers(now - grace)
    report.leftovers += registry.remove_leftovers(now - grace)
    if lifecycle is not None:
        report.announced = lifecycle.sweep()
    return report


class CollectorThread:
    """Collections every ``interval`` seconds on a daemon thread of this process.

    For the endpoint mounted in an app (extension.py), where no ``resumable
    serve`` runs a collector process beside the workers. Started on the
    endpoint's first request, so it lives in the serving process, not in a
    server's master before it forks. Every process runs one: collections are
    safe side by side (see above), and each process finds little once one
    has passed.
    """

    def __init__(self, collect_once: Callable[[], Report], interval: float):
        self.collect_once = collect_once
        self.interval = interval
        self.started_in = 0  # the pid it runs in: a fork needs its own
        self.lock = threading.Lock()

    def ensure_started(self) -> None:
        if self.started_in == os.getpid():
            return
        with self.lock:
            if self.started_in == os.getpid():
                return
            self.started_in = os.getpid()
            threading.Thread(target=self._run, name="resumable-gc", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                report = self.collect_once()
                if report.expired or report.leftovers:
                    log.info("%s", report)
            except Exception as error:  # noqa: BLE001 - the loop must outlive one failed round
                log.warning("garbage collection failed: %s", error)
