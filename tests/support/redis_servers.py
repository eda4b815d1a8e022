"""Private Redis deployments: one redis-server, a Cluster, a master with a Sentinel.

Standard library only (inline commands on a socket), so the benchmarks start
their Redis with the same code as the tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .processes import free_port
from .waiting import wait_until


class RedisServer:
    """A private redis-server on a free port that keeps nothing on disk.

    ``extra`` adds command-line options (``--cluster-enabled yes``,
    ``--replicaof …``); ``sentinel`` runs ``redis-server <conf> --sentinel``
    with ``extra`` as the lines of its config file instead. ``stop`` is a
    SIGKILL, as a crash: a restart on the same port comes back empty, or with
    what a ``SAVE`` kept.
    """

    def __init__(self, workdir: Path, extra: Iterable[str] = (), sentinel: bool = False):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir = workdir
        self.port = free_port()
        self.extra = list(extra)
        self.sentinel = sentinel
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.sentinel:
            conf = self.workdir / "sentinel.conf"
            conf.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1", *self.extra]) + "\n")
            return ["redis-server", str(conf), "--sentinel"]
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            *self.extra,
        ]

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A session of its own: a Ctrl-C meant for the test run or a benchmark does
        # not reach it before their clean-up stops it.
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_until(self.ping, 10):
            self.stop()
            raise RuntimeError("redis-server did not answer PING within 10 s")
        return self

    def ping(self) -> bool:
        return self.ask(b"PING").startswith(b"+PONG")

    def ask(self, command: bytes) -> bytes:
        """One inline command's raw answer (empty when the server cannot be reached)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(command + b"\r\n")
                return sock.recv(65536)
        except OSError:
            return b""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class RedisCluster:
    """Three redis-server masters in cluster mode, joined by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, size: int = 3):
        self.nodes = [
            RedisServer(
                workdir / f"node{i}",
                # The bus port is the client port + 10000 unless given: not always free.
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-port", str(free_port())],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        if not wait_until(
            lambda: all(b"cluster_state:ok" in n.ask(b"CLUSTER INFO") for n in self.nodes), 30
        ):
            raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, its replicas (one unless asked) and one sentinel watching them as ``MASTER``.

    ``failover()`` makes the sentinel promote a replica and waits until it
    names the new master, as a master's crash would (without waiting for the
    crash to be noticed).
    """

    MASTER = "uploads"

    def __init__(self, workdir: Path, replicas: int = 1):
        self.workdir = workdir
        self.master = RedisServer(workdir / "master")
        self.replicas = [RedisServer(workdir / f"replica-{n}") for n in range(replicas)]
        self.sentinel: RedisServer | None = None

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://{self.sentinel.address}/{self.MASTER}/0"

    def start(self) -> RedisSentinel:
        self.master.start()
        for replica in self.replicas:
            replica.extra = ["--replicaof", "127.0.0.1", str(self.master.port)]
            replica.start()
            if not wait_until(
                lambda r=replica: b"master_link_status:up" in r.ask(b"INFO replication"), 30
            ):
                raise RuntimeError("a replica did not connect to its master")
        self.sentinel = RedisServer(
            self.workdir / "sentinel",
            [
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 1",
                f"sentinel down-after-milliseconds {self.MASTER} 2000",
                f"sentinel failover-timeout {self.MASTER} 10000",
            ],
            sentinel=True,
        ).start()
        if not wait_until(lambda: self.master_port() == self.master.port, 30):
            raise RuntimeError("the sentinel does not see the master")
        if not wait_until(lambda: b"num-slaves" in self._master_state()
                          and self._replicas_known(), 30):
            raise RuntimeError("the sentinel does not see the replicas")
        return self

    def _master_state(self) -> bytes:
        assert self.sentinel is not None
        return self.sentinel.ask(f"SENTINEL MASTER {self.MASTER}".encode())

    def _replicas_known(self) -> bool:
        assert self.sentinel is not None
        answer = self.sentinel.ask(f"SENTINEL REPLICAS {self.MASTER}".encode())
        return all(str(replica.port).encode() in answer for replica in self.replicas)

    def master_port(self) -> int | None:
        assert self.sentinel is not None
        answer = self.sentinel.ask(
            f"SENTINEL GET-MASTER-ADDR-BY-NAME {self.MASTER}".encode()
        ).split(b"\r\n")
        return int(answer[4]) if len(answer) > 4 and answer[4].isdigit() else None

    def failover(self, timeout: float = 30) -> None:
        """Promote the replica; return once the sentinel names it and it takes writes."""
        assert self.sentinel is not None
        old = self.master_port()
        answers: list[bytes] = []

        def asked() -> bool:  # -NOGOODSLAVE until the sentinel has fresh word from the replica
            assert self.sentinel is not None
            answers.append(self.sentinel.ask(f"SENTINEL FAILOVER {self.MASTER}".encode()))
            return answers[-1].startswith(b"+OK")

        if not wait_until(asked, timeout, 0.5):
            raise RuntimeError(f"SENTINEL FAILOVER answered {answers[-1]!r}")
        if not wait_until(lambda: self.master_port() not in (None, old), timeout):
            raise RuntimeError("the sentinel did not promote the replica")
        promoted = next(server for server in [self.master, *self.replicas]
                        if server.port == self.master_port())
        if not wait_until(lambda: b"role:master" in promoted.ask(b"INFO replication"), timeout):
            raise RuntimeError("the promoted replica did not become a master")

    def stop(self) -> None:
        for server in (self.sentinel, *self.replicas, self.master):
            if server is not None:
                server.stop()
