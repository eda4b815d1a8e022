"""The registry contract, on every backend: embedded, fakeredis and real Redis deployments.

The real Redis is what proves atomicity (the Lua scripts run in Redis
itself); fakeredis keeps the same checks fast while developing. A Redis
Cluster proves every script touches one hash slot, and Sentinel that the
client follows the master it names; both are reached through the same
``connect`` as ``resumable serve`` uses.
"""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
import redis

from resumable.expiry import ExpiryPolicy
from resumable.filestore import FileStore
from resumable.protocol import Locked, new_upload_id
from resumable.records import UploadRecord
from resumable.registry import (
    HeartbeatResult,
    LeaseLost,
    Registry,
    RegistryUnavailable,
    ReleaseState,
)
from resumable.registry.embedded import EmbeddedRegistry
from resumable.registry.redis import RedisLease, RedisRegistry, connect
from resumable.registry.wakeups import Silent

from ..support import free_port


def _embedded_registry(tmp_path) -> EmbeddedRegistry:
    return EmbeddedRegistry(
        FileStore(tmp_path), tmp_path, lock_ttl=1.0, lock_wait=0.5, renewal_interval=0.05
    )


REDIS_KINDS = ["fakeredis", "redis", "redis-cluster", "redis-sentinel"]


def _redis_registry(kind: str, request: pytest.FixtureRequest, tmp_path) -> RedisRegistry:
    store = FileStore(tmp_path)
    if kind == "fakeredis":
        client = fakeredis.FakeRedis()
    elif kind == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
    else:
        client = connect(request.getfixturevalue("redis_url_for")(kind), concurrency=8)
    prefix = f"unit{new_upload_id()[:8]}:"
    return RedisRegistry(store, client, prefix, lock_ttl=1.0, lock_wait=0.5, renewal_interval=0.05)


@pytest.fixture(params=["embedded", *REDIS_KINDS])
def registry(request: pytest.FixtureRequest, tmp_path) -> Registry:
    if request.param == "embedded":
        return _embedded_registry(tmp_path)
    return _redis_registry(request.param, request, tmp_path)


@pytest.fixture(params=REDIS_KINDS)
def redis_registry(request: pytest.FixtureRequest, tmp_path) -> RedisRegistry:
    return _redis_registry(request.param, request, tmp_path)


def _new(registry: Registry, length: int | None = 10) -> UploadRecord:
    record = UploadRecord(id=new_upload_id(), length=length, metadata="a YQ==", created=1.0)
    registry.create(record)
    return record


def test_create_get_roundtrip(registry: Registry) -> None:
    record = _new(registry)
    assert registry.get(record.id) == record
    assert registry.get(new_upload_id()) is None


def test_one_holder_at_a_time(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    assert registry.is_locked(record.id)
    assert registry.try_acquire(record.id) is None
    started = time.monotonic()
    with pytest.raises(Locked):
        registry.acquire(record.id, wait=0.2)
    assert time.monotonic() - started >= 0.2
    lease.release()
    assert not registry.is_locked(record.id)
    registry.acquire(record.id).release()


def test_hard_request_reaches_the_holder_and_new_holder_starts_clean(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    assert lease.heartbeat() is HeartbeatResult.HELD
    assert registry.request_release(record.id, hard=True)
    assert lease.heartbeat() is HeartbeatResult.HARD_RELEASE
    lease.release()
    second = registry.acquire(record.id)
    assert second.heartbeat() is HeartbeatResult.HELD
    second.release()


def test_soft_request_is_acknowledged_and_never_downgrades_hard(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    assert registry.release_state(record.id) is ReleaseState.PENDING
    assert registry.request_release(record.id, hard=False)
    assert registry.release_state(record.id) is ReleaseState.PENDING
    assert lease.heartbeat() is HeartbeatResult.SOFT_RELEASE
    lease.acknowledge()
    assert registry.release_state(record.id) is ReleaseState.ACKNOWLEDGED
    assert lease.heartbeat() is HeartbeatResult.HELD
    registry.request_release(record.id, hard=True)
    registry.request_release(record.id, hard=False)
    assert lease.heartbeat() is HeartbeatResult.HARD_RELEASE
    lease.release()
    assert registry.release_state(record.id) is ReleaseState.UNLOCKED


def _entries(root) -> dict[str, int]:
    """Every file under ``root`` with its inode: what a create, rename or unlink changes."""
    return {str(path.relative_to(root)): path.stat().st_ino for path in root.rglob("*")}


def test_embedded_requests_and_commits_leave_the_directories_alone(tmp_path) -> None:
    """A HEAD's soft request, its acknowledgement, a hard request and a commit write
    into files that exist: under heavy writeback a file system stalls directory
    operations (each rename or unlink) for seconds, so none may be on that path."""
    registry = _embedded_registry(tmp_path)
    record = _new(registry)
    lease = registry.acquire(record.id)
    before = _entries(tmp_path)
    for _ in range(3):
        assert registry.request_release(record.id, hard=False)
        assert lease.heartbeat() is HeartbeatResult.SOFT_RELEASE
        record.offset += 1
        registry.save(lease, record)
        assert _entries(tmp_path) == before
        lease.acknowledge()
        assert registry.release_state(record.id) is ReleaseState.ACKNOWLEDGED
        assert _entries(tmp_path) == before
    assert registry.request_release(record.id, hard=True)
    assert lease.heartbeat() is HeartbeatResult.HARD_RELEASE
    assert _entries(tmp_path) == before
    lease.release()
    registry.acquire(record.id).release()
    assert _entries(tmp_path) == before
    assert registry.get(record.id).offset == 3


def test_no_release_request_without_a_holder(registry: Registry) -> None:
    record = _new(registry)
    assert not registry.request_release(record.id, hard=True)


def test_acquire_frees_a_cooperating_holder(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)

    def holder() -> None:
        while lease.heartbeat() is not HeartbeatResult.HARD_RELEASE:
            time.sleep(0.01)
        lease.release()

    thread = threading.Thread(target=holder)
    thread.start()
    registry.acquire(record.id, wait=2).release()
    thread.join()


def test_save_commits_only_under_the_lease(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    record.offset = 4
    registry.save(lease, record)
    assert registry.get(record.id).offset == 4
    assert registry.store.read_record(record.id).offset == 4
    lease.release()
    if isinstance(registry, RedisRegistry):
        record.offset = 6
        with pytest.raises(LeaseLost):
            registry.save(lease, record)
        assert registry.get(record.id).offset == 4


def test_redis_lease_expires_and_its_holder_knows(redis_registry: RedisRegistry) -> None:
    registry = redis_registry
    record = _new(registry)
    lease = registry.acquire(record.id)
    assert lease.is_valid()
    time.sleep(1.1)
    assert not lease.is_valid()  # local check, before Redis is even asked
    other = registry.acquire(record.id, wait=0)
    assert lease.heartbeat() is HeartbeatResult.LOST
    record.offset = 9
    with pytest.raises(LeaseLost):
        registry.save(lease, record)
    other.release()


def test_delete_locked_removes_the_upload_for_good(registry: Registry) -> None:
    record = _new(registry)
    lease = registry.acquire(record.id)
    registry.delete_locked(lease)
    lease.release()
    assert registry.get(record.id) is None
    assert not registry.store.data_path(record.id).exists()


def test_redis_record_rebuilt_from_sidecar_after_flush(redis_registry: RedisRegistry) -> None:
    registry = redis_registry
    record = _new(registry)
    lease = registry.acquire(record.id)
    record.offset = 7
    registry.save(lease, record)
    lease.release()
    for key in registry.redis.scan_iter(registry.prefix + "*"):
        registry.redis.delete(key)
    assert registry.get(record.id) == record


def test_forget_cleans_the_concatenation_index(registry: Registry) -> None:
    part = _new(registry)
    part.concat = "partial"
    final = UploadRecord(id=new_upload_id(), length=10, concat=f"final;{part.id}", parts=[part.id])
    registry.create(final)
    registry.add_waiting(final.id, [part.id])
    assert registry.waiting_finals(part.id) == [final.id]
    lease = registry.acquire(final.id)
    registry.delete_upload(lease, final)
    lease.release()
    assert registry.waiting_finals(part.id) == []
    other = UploadRecord(id=new_upload_id(), length=10, concat=f"final;{part.id}", parts=[part.id])
    registry.add_waiting(other.id, [part.id])
    lease = registry.acquire(part.id)
    registry.delete_upload(lease, part)
    lease.release()
    assert registry.waiting_finals(part.id) == []


def test_gc_removes_files_of_a_crashed_deletion(redis_registry: RedisRegistry) -> None:
    """Record forgotten (tombstoned) but the crash left its files: gc removes them."""
    from resumable.gc import collect

    registry = redis_registry
    record = _new(registry)
    lease = registry.acquire(record.id)
    registry.scripts["delete"](
        [
            registry.key("lock", record.id),
            registry.key("upload", record.id),
            registry.key("gone", record.id),
        ],
        [lease.token, 60],
    )  # the first half of a deletion, as if the process died right after it
    lease.release()
    assert registry.store.sidecar_path(record.id).exists()
    report = collect(registry, registry.store, ExpiryPolicy(unfinished=3600, finished=0))
    assert report.leftovers >= 1
    assert not registry.store.sidecar_path(record.id).exists()
    assert not registry.store.data_path(record.id).exists()


def test_an_unreachable_redis_raises_the_neutral_error(tmp_path, redis_server) -> None:
    """Callers see RegistryUnavailable (answered 503), never redis-py's own errors, from
    the registry and from a lease alike; and nothing is half-done meanwhile."""
    reachable = RedisRegistry(
        FileStore(tmp_path), connect(redis_server.url), "neutral:", lock_ttl=5.0,
        lock_wait=0.5, renewal_interval=1.0,
    )
    record = _new(reachable)
    lease = reachable.acquire(record.id)
    unreachable = RedisRegistry(
        FileStore(tmp_path), connect(f"redis://127.0.0.1:{free_port()}/0"), "neutral:",
        lock_ttl=5.0, lock_wait=0.5, renewal_interval=1.0,
    )
    for call in (
        lambda: unreachable.get(record.id),
        lambda: unreachable.try_acquire(record.id),
        lambda: unreachable.await_holder_commit(record.id),
        lambda: unreachable.release_state(record.id),
        lambda: unreachable.create(UploadRecord(id=new_upload_id(), length=1, created=1.0)),
    ):
        with pytest.raises(RegistryUnavailable):
            call()
    stranded = RedisLease(unreachable, record.id, lease.token, time.monotonic(), Silent())
    with pytest.raises(RegistryUnavailable):
        stranded.heartbeat()
    assert reachable.get(record.id) == record  # nothing changed meanwhile
    lease.release()
