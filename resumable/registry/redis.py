"""Redis registry: records, offsets and locks shared by every worker and host.

Keys (all under the configured prefix; ``{<id>}`` is written with its braces,
a hash tag, so every key of one upload lives in one Redis Cluster slot and
each script below touches one slot only):

* ``upload:{<id>}`` – hash: ``offset``, ``length`` ('' while deferred),
  ``expires``, ``finished``, ``meta`` (JSON of the fields that never change)
  and ``server``, the run id of the Redis server that wrote it last;
* ``lock:{<id>}`` – the holder's random token, with a TTL the holder renews;
* ``release:{<id>}`` – the mailbox: ``hard:<token>``, ``soft:<token>`` or
  ``ack:<token>`` (see :mod:`resumable.registry.base`);
* channel ``wake:<process>`` – a release request for an upload held by
  that process, published with the request: a token is ``<process>.<random>``,
  and each process's doorbell thread subscribes to its own channel;
* ``gone:{<id>}`` – tombstone of a deleted upload, so a stale durable record read in a
  race cannot bring the record back;
* ``waiting:{<part id>}`` – set of the final uploads waiting for that partial upload.

Every step that must see the lock and act on it at once is a Lua script, so
no other client can slip in between the check and the change. redis-py sends
a command again when its connection broke (a failover, a restarted node), so
a script may run twice: each is written to give the same answer the second
time (``ACQUIRE`` knows its own token).

The store's durable copy of the record (the file store's sidecar, S3's
info object) is written before each commit reaches Redis, so it holds at
least every offset Redis may show; if Redis loses its data the record is
rebuilt from it (docs/architecture.md, invariant 8). Redis can also lose
only its newest writes: a restart from an older snapshot, a failover to a
replica that had not received them (WAIT narrows this, it cannot close
it). Each record therefore names the server that wrote it (its run id,
read inside the script): a record read from another server than the one
that wrote it is checked once against the durable copy and moved up to
it, so an acknowledged offset never goes back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from redis import BlockingConnectionPool
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from ..ledger import FinishLedger, RedisLedger
from ..records import UploadRecord
from ..redis_url import parse_redis_url
from ..store import Store
from .base import HeartbeatResult, Lease, LeaseLost, Registry, RegistryUnavailable, ReleaseState
from .wakeups import Doorbells, Wakeup

TOMBSTONE_SECONDS = 7 * 24 * 3600

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

REQUEST_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if ARGV[1] == 'hard' then
  redis.call('SET', KEYS[2], 'hard:' .. holder, 'PX', ARGV[2])
elseif redis.call('GET', KEYS[2]) ~= 'hard:' .. holder then
  redis.call('SET', KEYS[2], 'soft:' .. holder, 'PX', ARGV[2])
end
local dot = string.find(holder, '.', 1, true)
if dot then
  redis.call('PUBLISH', ARGV[3] .. string.sub(holder, 1, dot - 1), ARGV[4])
end
return 1
"""

HEARTBEAT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local request = redis.call('GET', KEYS[2])
if request == 'hard:' .. ARGV[1] then return 2 end
if request == 'soft:' .. ARGV[1] then return 3 end
return 1
"""

ACKNOWLEDGE = """
if redis.call('GET', KEYS[2]) == 'soft:' .. ARGV[1] then
  redis.call('SET', KEYS[2], 'ack:' .. ARGV[1], 'PX', ARGV[2])
end
return 1
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  local request = redis.call('GET', KEYS[2])
  if request and string.sub(request, -string.len(ARGV[1])) == ARGV[1] then
    redis.call('DEL', KEYS[2])
  end
  return 1
end
return 0
"""

#: Lua: ``run_id()``, the id of the server running the script (new at every
#: start, another on a promoted replica); '' where INFO is not offered (fakeredis).
_RUN_ID_FUNCTION = """
local function run_id()
  local info = redis.pcall('INFO', 'server')
  if type(info) ~= 'string' then return '' end
  return string.match(info, 'run_id:(%x+)') or ''
end
"""

PUBLISH = _RUN_ID_FUNCTION + """
redis.call('HSET', KEYS[1], 'offset', ARGV[1], 'length', ARGV[2], 'expires', ARGV[3],
           'finished', ARGV[4], 'meta', ARGV[5], 'server', run_id())
return 1
"""

READ = _RUN_ID_FUNCTION + """
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then
  table.insert(fields, 'reader')
  table.insert(fields, run_id())
end
return fields
"""

REPAIR = _RUN_ID_FUNCTION + """
local offset = redis.call('HGET', KEYS[1], 'offset')
if not offset then return 0 end
if ARGV[1] == '1' and tonumber(offset) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'length', ARGV[3], 'expires', ARGV[4],
             'finished', ARGV[5])
end
redis.call('HSET', KEYS[1], 'server', run_id())
return 1
"""

SAVE = _RUN_ID_FUNCTION + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'offset', ARGV[2], 'length', ARGV[3], 'expires', ARGV[4],
           'finished', ARGV[5], 'server', run_id())
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) == 'soft:' .. ARGV[1] then
  redis.call('SET', KEYS[3], 'ack:' .. ARGV[1], 'PX', ARGV[6])
end
return 1
"""

DELETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], 'deleted', 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""

REBUILD = _RUN_ID_FUNCTION + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'offset', ARGV[1], 'length', ARGV[2], 'expires', ARGV[3],
           'finished', ARGV[4], 'meta', ARGV[5], 'server', run_id())
return 1
"""

#: redis-py's errors for "Redis cannot be reached now" (its TimeoutError is not a
#: ConnectionError; Sentinel's MasterNotFoundError is one; a Cluster without a
#: master for a slot answers CLUSTERDOWN, and one whose nodes all went away
#: raises SlotNotCoveredError, a RedisClusterException).
_UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    RedisClusterException,
)

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _reason(error: BaseException) -> str:
    """A short reason: redis-py's Sentinel error appends the repr of every sentinel client."""
    text = str(error) or type(error).__name__
    if isinstance(error, MasterNotFoundError):
        return text.split(" : ", 1)[0] + " (no sentinel answered, or none knows that master)"
    return text


@contextlib.contextmanager
def unreachable_as_unavailable() -> Iterator[None]:
    """Raise RegistryUnavailable where redis-py raises a connection or timeout error."""
    try:
        yield
    except _UNREACHABLE as error:
        raise RegistryUnavailable(_reason(error)) from error


def _neutral(method: _Method) -> _Method:
    """Raise RegistryUnavailable where redis-py raises a connection or timeout error."""

    @functools.wraps(method)
    def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except _UNREACHABLE as error:
            raise RegistryUnavailable(_reason(error)) from error

    return translated  # type: ignore[return-value]


#: The heartbeat script's answer → what it means.
_HEARTBEAT_RESULTS = {
    0: HeartbeatResult.LOST,
    1: HeartbeatResult.HELD,
    2: HeartbeatResult.HARD_RELEASE,
    3: HeartbeatResult.SOFT_RELEASE,
}


def _optional(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def _hash_fields(record: UploadRecord) -> dict[str, str]:
    meta = {
        "id": record.id,
        "metadata": record.metadata,
        "concat": record.concat,
        "parts": record.parts,
        "created": record.created,
    }
    if record.digest is not None:
        meta["digest"] = record.digest
    return {
        "offset": str(record.offset),
        "length": _optional(record.length),
        "expires": _optional(record.expires),
        "finished": _optional(record.finished),
        "meta": json.dumps(meta, separators=(",", ":")),
    }


def _from_hash(fields: dict[bytes, bytes]) -> UploadRecord:
    meta = json.loads(fields[b"meta"])
    length = fields.get(b"length", b"")
    expires = fields.get(b"expires", b"")
    finished = fields.get(b"finished", b"")
    return UploadRecord(
        id=meta["id"],
        length=int(length) if length else None,
        offset=int(fields[b"offset"]),
        metadata=meta.get("metadata"),
        concat=meta.get("concat"),
        parts=list(meta.get("parts") or []),
        created=float(meta.get("created") or 0.0),
        expires=float(expires) if expires else None,
        finished=float(finished) if finished else None,
        digest=meta.get("digest"),
    )


class RedisLease(Lease):
    def __init__(
        self,
        registry: RedisRegistry,
        upload_id: str,
        token: str,
        acquired_at: float,
        wakeup: Wakeup,
    ):
        self.registry = registry
        self.upload_id = upload_id
        self.token = token
        self.wakeup = wakeup
        self.ttl_ms = int(registry.lock_ttl * 1000)
        self.interval = registry.renewal_interval
        self._valid_until = acquired_at + registry.lock_ttl
        self.released = False
        #: A soft request was read and not acknowledged yet: the next commit
        #: acknowledges it in the same script, saving the holder a round trip.
        self.asked_soft = False

    def keys(self) -> list[str]:
        return [
            self.registry.key("lock", self.upload_id),
            self.registry.key("release", self.upload_id),
        ]

    @_neutral
    def heartbeat(self) -> HeartbeatResult:
        sent_at = time.monotonic()
        state = _HEARTBEAT_RESULTS[
            int(self.registry.confirmed("heartbeat", self.keys(), [self.token, self.ttl_ms]))
        ]
        if state is HeartbeatResult.LOST:
            self._valid_until = 0.0
        else:
            self._valid_until = sent_at + self.registry.lock_ttl
        self.asked_soft = state is HeartbeatResult.SOFT_RELEASE
        return state

    @_neutral
    def acknowledge(self) -> None:
        """Acknowledge a soft request, unless the commit that answered it already did."""
        if self.asked_soft:
            self.asked_soft = False
            self.registry.scripts["acknowledge"](self.keys(), [self.token, self.ttl_ms])

    def is_valid(self) -> bool:
        # The renewal was sent at sent_at; Redis expires the key no earlier
        # than sent_at + ttl. Keep a margin so a paused process stops first.
        return time.monotonic() < self._valid_until - self.registry.safety_margin

    @_neutral
    def release(self) -> None:
        if not self.released:
            self.released = True
            self.registry.doorbells.remove(self.upload_id, self.wakeup)
            self.wakeup.close()
            self.registry.scripts["release"](self.keys(), [self.token])


#: Seconds a request waits for a free connection of its worker's pool before 503.
POOL_WAIT_SECONDS = 10.0
#: Connections beyond one per request thread: the background joins, and room.
SPARE_CONNECTIONS = 16
#: How long one command may take, and connecting to a node may take.
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0

class ClusterOnFirstUse:
    """A Redis Cluster client made when a command first needs it, not when a worker starts.

    redis-py asks the cluster for its slots while the client is made. Made
    at start, a worker booting while the cluster is away would fail, and
    gunicorn stops the whole server when a worker cannot boot; with one
    server or Sentinel a worker starts anyway and answers 503 until Redis is
    back. Made here, the first command fails the same way instead, and the
    next one tries again.
    """

    def __init__(self, make: Callable[[], RedisCluster]):
        self._make = make
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def client(self) -> RedisCluster:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
        return self._client

    def register_script(self, script: bytes) -> Script:
        return Script(self, script)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)


#: Milliseconds a confirmed write waits for its replicas (see RedisRegistry.confirmed).
REPLICA_WAIT_MS = 1000

#: A Redis client for one server or a Sentinel-watched master, or a Cluster client.
Client = redis.Redis | RedisCluster | ClusterOnFirstUse


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (connections follow the master it names) that waits when full.

    redis-py's Sentinel pool, like its default pool, refuses a connection past
    its size at once; this one waits for a free connection like the pool for
    one server does.
    """


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def connect(url: str, concurrency: int = 0) -> Client:
    """A client for up to ``concurrency`` threads at once, failing fast when Redis is down.

    redis-py's default pool holds 100 connections and refuses the 101st at
    once; a worker runs up to --threads requests, each needing a connection
    for the moment of a command. So each pool (one per server; for a Cluster,
    one per node) has room for every thread, and a request that still finds
    it exhausted waits for a connection (a command takes a millisecond)
    instead of answering 503.
    """
    target = parse_redis_url(url)
    pool_options: dict[str, Any] = {
        "max_connections": max(concurrency, 1) + SPARE_CONNECTIONS,
        "timeout": POOL_WAIT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 30,
    }
    login: dict[str, Any] = {"username": target.username, "password": target.password}
    # redis-py leaves ClusterNode, Sentinel and master_for unannotated (type: ignore below).
    if target.kind == "cluster":
        # redis-py gives each node the pool class asked for only when the
        # client is made from a URL: the first node's, the others as seeds.
        (host, port), *seeds = target.nodes
        scheme = "rediss" if target.tls else "redis"
        return ClusterOnFirstUse(
            lambda: RedisCluster(
                url=f"{scheme}://{_bracketed(host)}:{port}",
                startup_nodes=[ClusterNode(h, p) for h, p in seeds],  # type: ignore[no-untyped-call]
                connection_pool_class=BlockingConnectionPool,
                **login,
                **pool_options,
            )
        )
    if target.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            sentinel_kwargs={
                "password": target.sentinel_password,
                "ssl": target.tls,
                "socket_timeout": SOCKET_TIMEOUT,
                "socket_connect_timeout": CONNECT_TIMEOUT,
            },
        )
        return sentinel.master_for(  # type: ignore[no-untyped-call, no-any-return]
            target.master,
            connection_pool_class=_SentinelBlockingPool,
            db=target.db,
            ssl=target.tls,
            **login,
            **pool_options,
        )
    return redis.Redis(connection_pool=BlockingConnectionPool.from_url(url, **pool_options))


def ping_problem(url: str) -> str | None:
    """Why Redis at ``url`` cannot be reached now, or None when it answers."""
    client = connect(url)
    try:
        client.ping()
    except _UNREACHABLE as error:
        return _reason(error)
    finally:
        client.close()
    return None


class RedisRegistry(Registry):
    #: Seconds to wait for a subscription's confirmation, and between attempts.
    SUBSCRIBE_SECONDS = 2.0
    RESUBSCRIBE_SECONDS = 1.0

    def __init__(
        self,
        store: Store,
        client: Client,
        prefix: str,
        lock_ttl: float,
        lock_wait: float,
        renewal_interval: float,
        wait_replicas: int = 0,
    ):
        super().__init__(store, lock_ttl, lock_wait, renewal_interval)
        self.redis = client
        #: Replicas a lock, a commit or a deletion must reach before it counts.
        self.wait_replicas = wait_replicas
        self.prefix = prefix
        self.doorbells = Doorbells(self._listen, "resumable-doorbells")
        self.process = ""  # this process's name in tokens and channels (see process_name)
        self.process_pid = 0
        self.safety_margin = max(renewal_interval, lock_ttl / 10)
        self.scripts = {
            name: self.redis.register_script(source.encode())
            for name, source in (
                ("acquire", ACQUIRE),
                ("request_release", REQUEST_RELEASE),
                ("heartbeat", HEARTBEAT),
                ("acknowledge", ACKNOWLEDGE),
                ("release", RELEASE),
                ("save", SAVE),
                ("delete", DELETE),
                ("rebuild", REBUILD),
                ("publish", PUBLISH),
                ("read", READ),
                ("repair", REPAIR),
            )
        }

    def confirmed(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script that takes or keeps a lock, or changes what was acknowledged.

        Redis replicates asynchronously: a failover loses the master's newest
        writes, and a master deposed by one takes writes for seconds before it
        learns it is a replica, all of them lost. A lock taken there lets two
        writers in, an offset committed there goes back. With ``wait_replicas``
        the script's connection then sends WAIT: the change counts only once
        that many replicas have it (a deposed master has none), otherwise the
        request is answered 503 and the client retries on the new master.
        """
        if not self.wait_replicas:
            return self.scripts[script](keys, args)
        with self.redis.pipeline(transaction=False) as pipe:
            self.scripts[script](keys, args, client=pipe)
            pipe.wait(self.wait_replicas, REPLICA_WAIT_MS)
            result, replicas = pipe.execute()
        if replicas < self.wait_replicas:
            self._follow_master()
            raise RegistryUnavailable(
                f"the write reached {replicas} of the {self.wait_replicas} replicas it needs; "
                "the master may have been deposed"
            )
        return result

    def _follow_master(self) -> None:
        """Behind Sentinel: ask who the master is now; connections to another go.

        redis-py asks only when it opens a connection, so pooled connections
        to a deposed master would otherwise serve stale reads until it is
        reconfigured as a replica, which takes Sentinel seconds.
        """
        pool = getattr(self.redis, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            # get_master_address is unannotated in redis-py.
            with contextlib.suppress(*_UNREACHABLE):
                pool.get_master_address()  # type: ignore[no-untyped-call]

    def key(self, kind: str, upload_id: str) -> str:
        return f"{self.prefix}{kind}:{{{upload_id}}}"

    def finish_ledger(self) -> FinishLedger:
        return RedisLedger(self.redis, self.prefix, unreachable_as_unavailable)

    def problem(self) -> str | None:
        try:
            self.redis.ping()
        except _UNREACHABLE as error:
            return f"Redis: {_reason(error)}"
        return None

    # -- records ---------------------------------------------------------------

    @_neutral
    def put_record(self, record: UploadRecord) -> None:
        self.store.write_record(record)
        values = _hash_fields(record)
        self.scripts["publish"](
            [self.key("upload", record.id)],
            [values[name] for name in ("offset", "length", "expires", "finished", "meta")],
        )

    def _read(self, upload_id: str) -> dict[bytes, bytes]:
        """The record's hash, and under ``reader`` the run id of the server answering."""
        answer = self.scripts["read"]([self.key("upload", upload_id)], [])
        return dict(zip(answer[::2], answer[1::2], strict=True))

    @_neutral
    def get(self, upload_id: str) -> UploadRecord | None:
        fields = self._read(upload_id)
        if fields:
            if fields.get(b"server") == fields[b"reader"]:
                return _from_hash(fields)
            return self._checked(upload_id, _from_hash(fields))
        durable = self.store.read_record(upload_id)
        if durable is None:
            return None
        values = _hash_fields(durable)
        rebuilt = self.scripts["rebuild"](
            [self.key("upload", upload_id), self.key("gone", upload_id)],
            [
                values["offset"],
                values["length"],
                values["expires"],
                values["finished"],
                values["meta"],
            ],
        )
        if rebuilt:
            return durable
        fields = self._read(upload_id)
        return _from_hash(fields) if fields else None

    def _checked(self, upload_id: str, record: UploadRecord) -> UploadRecord | None:
        """A record written by another Redis server: the durable copy says if it went back.

        Once per record and server: the repair stamps it with this server.
        An upload whose durable copy is gone was deleted (the deletion was
        lost with the newest writes): it stays unknown.
        """
        durable = self.store.read_record(upload_id)
        if durable is None:
            return None
        ahead = durable.offset > record.offset or (
            durable.offset == record.offset
            and (
                (record.length is None and durable.length is not None)
                or (record.finished is None and durable.finished is not None)
            )
        )
        values = _hash_fields(durable)
        self.scripts["repair"](
            [self.key("upload", upload_id)],
            ["1" if ahead else "0", values["offset"], values["length"], values["expires"],
             values["finished"]],
        )
        fields = self._read(upload_id)
        return _from_hash(fields) if fields else None

    @_neutral
    def save_locked(self, lease: Lease, record: UploadRecord) -> None:
        """The durable record first, then Redis: the store then holds every offset
        Redis may show, even one whose WAIT failed (its bytes are stored)."""
        assert isinstance(lease, RedisLease)
        if not lease.is_valid():
            raise LeaseLost(f"lost the lock on {record.id}")
        self.store.write_record(record)
        saved = self.confirmed(
            "save",
            [self.key("lock", record.id), self.key("upload", record.id),
             self.key("release", record.id)],
            [
                lease.token,
                record.offset,
                _optional(record.length),
                _optional(record.expires),
                _optional(record.finished),
                lease.ttl_ms if lease.asked_soft else "",
            ],
        )
        if not saved:
            raise LeaseLost(f"lost the lock on {record.id}")
        lease.asked_soft = False

    @_neutral
    def delete_locked(self, lease: Lease) -> None:
        assert isinstance(lease, RedisLease)
        upload_id = lease.upload_id
        deleted = self.confirmed(
            "delete",
            [
                self.key("lock", upload_id),
                self.key("upload", upload_id),
                self.key("gone", upload_id),
            ],
            [lease.token, TOMBSTONE_SECONDS],
        )
        if not deleted:
            raise LeaseLost(f"lost the lock on {upload_id}")
        self.store.delete(upload_id)

    # -- concatenation -----------------------------------------------------------

    @_neutral
    def add_waiting(self, final_id: str, part_ids: list[str]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for part_id in set(part_ids):
                pipe.sadd(self.key("waiting", part_id), final_id)
            pipe.execute()

    @_neutral
    def waiting_finals(self, part_id: str) -> list[str]:
        # redis-py types members as bytes | str; without decode_responses they are bytes.
        return sorted(m.decode() for m in self.redis.smembers(self.key("waiting", part_id)))  # type: ignore[union-attr]

    @_neutral
    def remove_waiting(self, final_id: str, part_ids: list[str]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for part_id in set(part_ids):
                pipe.srem(self.key("waiting", part_id), final_id)
            pipe.execute()

    @_neutral
    def drop_waiting_index(self, part_id: str) -> None:
        self.redis.delete(self.key("waiting", part_id))

    # -- locks -----------------------------------------------------------------

    @_neutral
    def try_acquire(self, upload_id: str) -> Lease | None:
        token = f"{self.process_name()}.{secrets.token_hex(16)}"
        wakeup = Wakeup()
        # Reachable before the lock is ours: a request may follow at once.
        self.doorbells.add(upload_id, wakeup)
        sent_at = time.monotonic()
        keys = [self.key("lock", upload_id), self.key("release", upload_id)]
        try:
            if self.confirmed("acquire", keys, [token, int(self.lock_ttl * 1000)]):
                return RedisLease(self, upload_id, token, sent_at, wakeup)
        except RegistryUnavailable:
            # Taken where no replica saw it (a master deposed by a failover),
            # or Redis went away: give it back if it is ours, then say so.
            with contextlib.suppress(*_UNREACHABLE):
                self.scripts["release"](keys, [token])
            self.doorbells.remove(upload_id, wakeup)
            wakeup.close()
            raise
        except BaseException:
            self.doorbells.remove(upload_id, wakeup)
            wakeup.close()
            raise
        self.doorbells.remove(upload_id, wakeup)
        wakeup.close()
        return None

    @_neutral
    def request_release(self, upload_id: str, hard: bool) -> bool:
        keys = [self.key("lock", upload_id), self.key("release", upload_id)]
        args = [
            "hard" if hard else "soft",
            int(self.lock_ttl * 1000),
            f"{self.prefix}wake:",
            upload_id,
        ]
        return bool(self.scripts["request_release"](keys, args))

    # -- doorbells: a pub/sub channel per process ----------------------------------

    def process_name(self) -> str:
        """Random per process (pids repeat across hosts), new in a forked child."""
        if self.process_pid != os.getpid():
            self.process = secrets.token_hex(8)
            self.process_pid = os.getpid()
        return self.process

    def _listen(self, doorbells: Doorbells) -> None:
        """Receive this process's release requests; reconnect while Redis is away."""
        channel = f"{self.prefix}wake:{self.process_name()}"
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel)
                pubsub.get_message(timeout=self.SUBSCRIBE_SECONDS)  # the confirmation
                doorbells.listening()
                follow_at = time.monotonic() + 1.0
                while True:
                    # A bounded wait (one wake-up a second for the whole
                    # process): a blocking read would trip the socket timeout.
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        doorbells.ring(message["data"].decode("ascii", "replace"))
                    if time.monotonic() >= follow_at:
                        self._follow_master()
                        follow_at = time.monotonic() + 1.0
            except _UNREACHABLE:
                # Holders still read their mailbox at every lease renewal.
                doorbells.listening()
                time.sleep(self.RESUBSCRIBE_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    @_neutral
    def release_state(self, upload_id: str) -> ReleaseState:
        with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            pipe.exists(self.key("lock", upload_id))
            pipe.get(self.key("release", upload_id))
            locked, value = pipe.execute()
        if not locked:
            return ReleaseState.UNLOCKED
        if value and value.startswith(b"ack:"):
            return ReleaseState.ACKNOWLEDGED
        return ReleaseState.PENDING

    @_neutral
    def is_locked(self, upload_id: str) -> bool:
        return bool(self.redis.exists(self.key("lock", upload_id)))
