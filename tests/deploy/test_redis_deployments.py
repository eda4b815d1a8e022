"""Redis beyond one server: the URL forms, a Cluster that comes late, a Sentinel
failover, a Redis that comes back with less than it acknowledged.

The registry contract (tests/storage/test_unit_registry.py, also on Sentinel), the
protocol table (tests/protocol/test_protocol.py) and the killed-worker faults
(tests/faults/test_process_faults.py) also run on a Redis Cluster; this
module covers what only these deployments have.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from resumable.filestore import FileStore
from resumable.protocol import new_upload_id
from resumable.records import UploadRecord
from resumable.redis_url import parse_redis_url, redacted
from resumable.registry import RegistryUnavailable
from resumable.registry.redis import RedisRegistry, connect

from ..support import (
    OFFSET_STREAM,
    TUS,
    MiB,
    Pattern,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    Server,
    TusClient,
    assert_no_traceback,
    pattern_bytes,
    request_head,
    upload_id,
    wait_until,
)
from ..support.resumer import Resumer, Tally


@pytest.mark.parametrize(
    "url, kind, nodes, master, db",
    [
        ("redis://cache:6379/2", "server", (), "", 0),
        ("unix:///run/redis.sock?db=1", "server", (), "", 0),
        ("redis+sentinel://s1:26379,s2,[::1]:26380/uploads", "sentinel",
         (("s1", 26379), ("s2", 26379), ("::1", 26380)), "uploads", 0),
        ("redis+sentinel://:pw@s1:26379/uploads/3", "sentinel", (("s1", 26379),), "uploads", 3),
        ("redis+cluster://n1:7000,n2:7001", "cluster", (("n1", 7000), ("n2", 7001)), "", 0),
        ("rediss+cluster://n1", "cluster", (("n1", 6379),), "", 0),
    ],
)
def test_a_redis_url_names_its_deployment(
    url: str, kind: str, nodes: tuple, master: str, db: int
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.nodes, target.master, target.db) == (kind, nodes, master, db)
    assert target.tls == url.startswith("rediss")


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://cache:6379", "must start with"),
        ("redis+sentinel://s1:26379", "master's name"),
        ("redis+sentinel://s1:26379/uploads/x", "must be a number"),
        ("redis+sentinel://s1:port/uploads", "not host:port"),
        ("redis+cluster://n1:7000/0", "no databases"),
    ],
)
def test_a_malformed_redis_url_says_why(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_redis_url(url)


def test_logs_never_show_a_redis_password() -> None:
    assert redacted("redis://u:secret@cache:6379/0") == "redis://u:***@cache:6379/0"
    shown = redacted("redis+sentinel://:secret@s1:26379,s2:26379/m?sentinel_password=other")
    assert "secret" not in shown and "other" not in shown
    assert shown.startswith("redis+sentinel://:***@s1:26379,s2:26379/m")


def test_a_cluster_that_comes_late_is_used_once_it_is_up(tmp_path: Path) -> None:
    """A worker starting while the Cluster is away still starts (gunicorn would
    stop the whole server if it could not): requests answer 503 with
    Retry-After, and once the nodes are up and joined the same workers serve."""
    cluster = RedisCluster(tmp_path / "cluster")  # ports chosen, nothing started
    server = Server(tmp_path / "data", redis_url=cluster.url, workers=1).start()
    try:
        away = requests.post(server.endpoint, headers={**TUS, "Upload-Length": "5"}, timeout=30)
        assert away.status_code == 503, away.text
        assert away.headers.get("Retry-After")
        assert "Redis is unreachable" in server.log()
        cluster.start()
        created = requests.post(server.endpoint, headers={**TUS, "Upload-Length": "5"}, timeout=30)
        assert created.status_code == 201, created.text
        url = created.headers["Location"]
        patched = requests.patch(
            url,
            data=b"hello",
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM},
            timeout=30,
        )
        assert patched.status_code == 204, patched.text
        assert requests.get(url, timeout=30).content == b"hello"
        assert_no_traceback(server)
    finally:
        server.stop()
        cluster.stop()


def test_with_wait_replicas_nothing_counts_that_no_replica_has(tmp_path: Path) -> None:
    """A master that lost its replica (as one deposed by a failover has) may
    take a write that the new master never sees. With --redis-wait-replicas
    a lock, a commit and a deletion count only once a replica has them:
    otherwise the registry says Redis is unavailable (503) and no lock stays."""
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica", ["--replicaof", "127.0.0.1", str(master.port)])
    replica.start()
    try:
        assert wait_until(lambda: b"state=online" in master.ask(b"INFO replication"), 30)
        registry = RedisRegistry(FileStore(tmp_path / "data"), connect(master.url, 4), "t:",
                                 lock_ttl=5.0, lock_wait=0.5, renewal_interval=0.5, wait_replicas=1)
        record = UploadRecord(id=new_upload_id(), length=10, created=1.0)
        registry.create(record)
        lease = registry.acquire(record.id)
        record.offset = 4
        registry.save(lease, record)  # the replica has it: counts
        assert registry.get(record.id).offset == 4

        assert replica.ask(b"REPLICAOF NO ONE").startswith(b"+OK")
        assert wait_until(lambda: b"connected_slaves:0" in master.ask(b"INFO replication"), 30)
        record.offset = 8
        with pytest.raises(RegistryUnavailable, match="replicas"):
            registry.save(lease, record)
        with pytest.raises(RegistryUnavailable):
            lease.heartbeat()
        lease.release()
        with pytest.raises(RegistryUnavailable):
            registry.acquire(record.id, wait=0)
        assert not registry.is_locked(record.id), "a lock no replica has was left behind"
    finally:
        replica.stop()
        master.stop()


SENTINEL_UPLOADS = 10
SENTINEL_SIZE = 12 * MiB
SENTINEL_RATE = 2 * MiB  # bytes per second per upload: about six seconds each


def test_uploads_running_across_a_sentinel_failover_finish_byte_exact(tmp_path: Path) -> None:
    """Ten uploads stream at 2 MiB/s each while Sentinel promotes the replica.

    Requests that meet the switch may answer 503 (the old master refuses
    writes once demoted); clients resume as tus clients do. Every upload must
    finish byte-exact, no acknowledged offset may go back, nothing else 5xx.
    """
    sentinel = RedisSentinel(tmp_path / "sentinel", replicas=2).start()
    server = Server(tmp_path / "data", redis_url=sentinel.url, workers=2, lock_ttl=4).start()
    tally = Tally("sentinel failover")
    tally.allowed_5xx = frozenset({503})
    blobs = [Pattern(SENTINEL_SIZE, seed=7, offset=i * 4096, name=f"upload {i}")
             for i in range(SENTINEL_UPLOADS)]
    streaming = threading.Event()

    def transfer(index: int) -> None:
        client = Resumer(server.endpoint, tally, rng=random.Random(index), deadline=120,
                         rate=SENTINEL_RATE, chunked=index % 2 == 1,
                         on_patch=lambda begins: begins and streaming.set())
        url = client.create(blobs[index])
        client.finish(url, blobs[index])
        client.verify(url, blobs[index])

    try:
        old_master = sentinel.master_port()
        with ThreadPoolExecutor(SENTINEL_UPLOADS) as pool:
            futures = [pool.submit(transfer, i) for i in range(SENTINEL_UPLOADS)]
            assert streaming.wait(30), "no PATCH started"
            time.sleep(2.0)  # every upload well inside its body
            sentinel.failover()
            tally.fault()
            for future in futures:
                future.result()
        print("\n" + tally.line(), tally.statuses, flush=True)
        assert sentinel.master_port() not in (None, old_master)
        tally.assert_clean()
        assert tally.verified == SENTINEL_UPLOADS
        assert_no_traceback(server)
    finally:
        server.stop()
        sentinel.stop()


@contextlib.contextmanager
def on_private_redis(
    tmp_path: Path, workers: int, **settings: object
) -> Iterator[tuple[RedisServer, Server, TusClient]]:
    """A server on a redis-server of the test's own, which the test may stop and restart."""
    redis_server = RedisServer(tmp_path / "redis").start()
    server = Server(tmp_path / "data", redis_url=redis_server.url, workers=workers, **settings)
    try:
        server.start()
        yield redis_server, server, TusClient(server.endpoint)
    finally:
        server.stop()
        redis_server.stop()


@pytest.mark.parametrize("store", ["file", "s3"])
def test_redis_back_from_an_older_snapshot_gives_no_acknowledged_offset_back(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """Redis restarts from a snapshot older than the last commit (as a failover to
    a replica that missed it looks): the record says 4 MiB where 9 MiB were
    acknowledged. The first read on the new server checks the store's durable
    record and moves the offset up; the upload finishes byte-exact."""
    settings = request.getfixturevalue("s3").settings() if store == "s3" else {}
    with on_private_redis(tmp_path, 2, **settings) as (redis_server, server, tus):
        data = pattern_bytes(12 * MiB, seed=21)
        url = tus.new_upload(len(data))
        assert tus.patch(url, 0, data[: 4 * MiB]).status_code == 204
        assert redis_server.ask(b"SAVE").startswith(b"+OK")
        assert tus.patch(url, 4 * MiB, data[4 * MiB : 9 * MiB]).status_code == 204
        redis_server.stop()  # SIGKILL: the snapshot is what comes back
        redis_server.start()
        key = f"{server.redis_prefix}upload:{{{upload_id(url)}}}"
        raw = redis.Redis.from_url(redis_server.url)
        assert int(raw.hget(key, "offset")) == 4 * MiB  # Redis really went back

        assert wait_until(lambda: tus.head(url).status_code == 200, 10)
        assert tus.offset(url) == 9 * MiB
        assert raw.hget(key, "server") == raw.info("server")["run_id"].encode()
        assert tus.patch(url, 9 * MiB, data[9 * MiB :]).status_code == 204
        assert tus.get(url).content == data
        assert_no_traceback(server)


def test_a_sidecar_ahead_of_redis_is_never_cut_behind_it(tmp_path: Path) -> None:
    """A crash between the sidecar write and the Redis commit leaves the sidecar ahead,
    with its bytes in the file. A PATCH from Redis's older offset must not cut those
    bytes: were they cut and the request ended before its commit, a Redis rebuilt from
    the sidecar would later send the client on past bytes the file no longer holds."""
    with on_private_redis(tmp_path, 1) as (redis_server, server, tus):
        data = pattern_bytes(8 * MiB, seed=33)
        url = tus.new_upload(len(data))
        assert tus.patch(url, 0, data[: 4 * MiB]).status_code == 204
        # The crash's leftovers: 1 MiB more in the file, and a sidecar saying so.
        store = FileStore(tmp_path / "data")
        with open(store.data_path(upload_id(url)), "ab") as file:
            file.write(data[4 * MiB : 5 * MiB])
        record = store.read_record(upload_id(url))
        assert record is not None and record.offset == 4 * MiB
        record.offset = 5 * MiB
        store.write_record(record)
        assert tus.offset(url) == 4 * MiB  # Redis's view: the commit never reached it

        # A PATCH from that offset whose client goes away before sending its body.
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request_head(server, "PATCH", url, {
                **TUS, "Upload-Offset": str(4 * MiB), "Content-Type": OFFSET_STREAM,
                "Content-Length": str(MiB)}))
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                sock.recv(4096)
        time.sleep(0.5)
        assert store.data_path(upload_id(url)).stat().st_size == 5 * MiB  # nothing was cut

        redis.Redis.from_url(redis_server.url).flushall()  # Redis loses everything
        offset = tus.offset(url)
        assert offset == 5 * MiB
        assert tus.patch(url, offset, data[offset:]).status_code == 204
        assert tus.get(url).content == data
