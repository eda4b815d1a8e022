"""The registry contract (registry/base.py), on both registries as the app builds them.

Records, leases, release requests and the concatenation index behave the
same on the embedded registry and on Redis: the views rely on nothing
else. tests/storage/test_unit_registry.py runs the same promises on real Redis
deployments; here they are checked in-process, on the registry an endpoint
was built with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from resumable.protocol import Locked, new_upload_id
from resumable.records import UploadRecord
from resumable.registry import HeartbeatResult, LeaseLost, Registry, ReleaseState

from .harness import Endpoint


@pytest.fixture
def registry(endpoint: Endpoint) -> Registry:
    return endpoint.registry


def _new(registry: Registry, length: int | None = 10, **fields: Any) -> UploadRecord:
    record = UploadRecord(id=new_upload_id(), length=length, metadata="a YQ==", created=1.0,
                          **fields)
    registry.create(record)
    return record


def test_a_created_record_reads_back_whole(registry: Registry) -> None:
    record = _new(registry, expires=2.5)
    assert registry.get(record.id) == record
    assert registry.store.read_record(record.id) == record  # the durable copy
    deferred = _new(registry, length=None, concat="partial")
    assert registry.get(deferred.id) == deferred
    assert registry.get(new_upload_id()) is None


def test_one_holder_at_a_time(registry: Registry) -> None:
    record = _new(registry)
    assert not registry.is_locked(record.id)
    lease = registry.acquire(record.id)
    assert registry.is_locked(record.id) and lease.is_valid()
    assert registry.try_acquire(record.id) is None
    started = time.monotonic()
    with pytest.raises(Locked):
        registry.acquire(record.id, wait=0.05)
    assert time.monotonic() - started >= 0.05
    lease.release()
    assert not registry.is_locked(record.id)
    again = registry.try_acquire(record.id)
    assert again is not None
    again.release()


def test_save_commits_under_the_lease_only(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    record.offset, record.expires = 4, 99.0
    registry.save(lease, record)
    assert registry.get(record.id) == record
    assert registry.store.read_record(record.id) == record
    lease.release()
    record.offset = 6
    with pytest.raises(LeaseLost):
        registry.save(lease, record)
    assert registry.get(record.id).offset == 4  # type: ignore[union-attr]


def test_release_requests_reach_the_holder(registry: Registry) -> None:
    record = _new(registry)
    assert not registry.request_release(record.id, hard=True)  # nobody holds it
    assert registry.release_state(record.id) is ReleaseState.UNLOCKED
    lease = registry.acquire(record.id)
    assert lease.heartbeat() is HeartbeatResult.HELD
    assert registry.release_state(record.id) is ReleaseState.PENDING

    assert registry.request_release(record.id, hard=False)
    assert lease.heartbeat() is HeartbeatResult.SOFT_RELEASE
    lease.acknowledge()
    assert registry.release_state(record.id) is ReleaseState.ACKNOWLEDGED
    assert lease.heartbeat() is HeartbeatResult.HELD

    assert registry.request_release(record.id, hard=True)
    assert registry.request_release(record.id, hard=False)  # never downgrades a hard one
    assert lease.heartbeat() is HeartbeatResult.HARD_RELEASE
    lease.release()
    assert registry.release_state(record.id) is ReleaseState.UNLOCKED
    second = registry.acquire(record.id)
    assert second.heartbeat() is HeartbeatResult.HELD  # the new holder starts clean
    second.release()


def _holder_answering(
    lease: Any, request: HeartbeatResult, answer: Callable[[], None]
) -> threading.Thread:
    """A holder, on a thread of its own, that answers the first ``request`` it reads."""

    def holder() -> None:
        deadline = time.monotonic() + 5
        while lease.heartbeat() is not request:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        answer()

    thread = threading.Thread(target=holder)
    thread.start()
    return thread


def test_a_newcomer_takes_the_lock_from_a_cooperating_holder(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    thread = _holder_answering(lease, HeartbeatResult.HARD_RELEASE, lease.release)
    registry.acquire(record.id, wait=5).release()
    thread.join()


def test_a_reader_waits_for_the_holder_to_commit(registry: Registry) -> None:
    record = _new(registry)
    registry.await_holder_commit(record.id, wait=5)  # nobody holds it: at once
    lease = registry.acquire(record.id)

    def commit() -> None:
        record.offset = 7
        registry.save(lease, record)
        lease.acknowledge()

    thread = _holder_answering(lease, HeartbeatResult.SOFT_RELEASE, commit)
    started = time.monotonic()
    registry.await_holder_commit(record.id, wait=5)
    assert time.monotonic() - started < 4
    assert registry.get(record.id).offset == 7  # type: ignore[union-attr]
    thread.join()
    assert registry.is_locked(record.id)  # a reader never takes the lock away
    lease.release()


def test_a_deleted_upload_is_gone_with_its_bytes(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    registry.delete_upload(lease, record)
    lease.release()
    assert registry.get(record.id) is None
    assert registry.store.read_record(record.id) is None
    with pytest.raises(FileNotFoundError):
        registry.store.open_data(record.id)
    assert record.id not in set(registry.store.upload_ids())


def test_the_concatenation_index(registry: Registry) -> None:
    part = _new(registry, concat="partial")
    finals = [
        _new(registry, concat=f"final;{part.id}", parts=[part.id]) for _ in range(2)
    ]
    for final in finals:
        registry.add_waiting(final.id, [part.id])
    assert registry.waiting_finals(part.id) == sorted(final.id for final in finals)
    registry.remove_waiting(finals[0].id, [part.id])
    assert registry.waiting_finals(part.id) == [finals[1].id]

    lease = registry.acquire(finals[1].id)
    registry.delete_upload(lease, finals[1])  # a final leaves the index of its parts
    lease.release()
    assert registry.waiting_finals(part.id) == []

    registry.add_waiting(finals[0].id, [part.id])
    lease = registry.acquire(part.id)
    registry.delete_upload(lease, part)  # a deleted part takes its index along
    lease.release()
    assert registry.waiting_finals(part.id) == []
