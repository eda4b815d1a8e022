"""Fixtures: private Redis deployments and the server under gunicorn, per backend.

A test taking ``backend`` runs once per registry: ``embedded`` and ``redis``
(one redis-server), or the backends its module lists in ``BACKENDS``
(``redis-cluster``: three nodes in a Redis Cluster; ``redis-sentinel``: a
master, a replica and a sentinel; ``s3`` and ``redis-s3``: the embedded or
the Redis registry with uploads kept in moto's S3 server). With a
``proxied-`` prefix (``proxied-redis-s3``) the backend is served by two
replicas behind nginx with the shipped config, each with its own data
directory when uploads live in S3, sharing one otherwise.

The fixtures serve every subpackage of tests/ (the helpers they use are in
support/): ``guarded_client`` makes clients held to the suite's rule of no 5xx
and no traceback in the server's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support import (
    HOSTED,
    PROXIED,
    HostedApp,
    MotoS3,
    Proxied,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    Server,
    TusClient,
    assert_no_traceback,
    guarded,
    split_backend,
)

BACKENDS = ("embedded", "redis")
#: The Redis deployment each Redis registry of a backend runs on.
REDIS_DEPLOYMENTS: dict[str, type[RedisServer | RedisCluster | RedisSentinel]] = {
    "redis": RedisServer,
    "redis-cluster": RedisCluster,
    "redis-sentinel": RedisSentinel,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``backend`` by the module's BACKENDS, unless the test names its own."""
    if "backend" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "backend" in (names.split(",") if isinstance(names, str) else names):
            return
    metafunc.parametrize("backend", getattr(metafunc.module, "BACKENDS", BACKENDS), scope="module")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the real clients the run drove, once each, also under -q and across
    xdist workers (whose own output the terminal never shows): a test adds
    ``("client under test", "<name> <version>")`` to its user properties."""
    named: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == "client under test" and value not in named:
                    named.append(value)
    for value in named:
        terminalreporter.write_line(f"client under test: {value}")


@pytest.fixture(scope="session")
def redis_deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], RedisServer | RedisCluster | RedisSentinel]]:
    """redis_deployment(kind) -> the session's Redis deployment of that kind (``redis``,
    ``redis-cluster``, ``redis-sentinel``): started when first asked for, as a Cluster
    or a Sentinel takes seconds, and stopped at the end of the session."""
    started: dict[str, RedisServer | RedisCluster | RedisSentinel] = {}

    def deployment(kind: str) -> RedisServer | RedisCluster | RedisSentinel:
        if kind not in started:
            started[kind] = REDIS_DEPLOYMENTS[kind](tmp_path_factory.mktemp(kind)).start()
        return started[kind]

    yield deployment
    for running in started.values():
        running.stop()


@pytest.fixture(scope="session")
def redis_server(redis_deployment: Callable[[str], RedisServer]) -> RedisServer:
    """The session's redis-server, shared by every test that needs one Redis."""
    return redis_deployment("redis")


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url_for(redis_deployment: Callable[[str], RedisServer]) -> Callable[[str], str | None]:
    """redis_url_for(backend) -> the URL of its Redis deployment (None: embedded)."""

    def url(backend: str) -> str | None:
        registry = split_backend(backend)[0]
        return redis_deployment(registry).url if registry in REDIS_DEPLOYMENTS else None

    return url


@pytest.fixture(scope="session")
def start_server(
    tmp_path_factory: pytest.TempPathFactory, redis_url_for, request: pytest.FixtureRequest
):
    """Factory: start_server(backend, **settings) -> running Server, stopped at the end.

    ``default_data_dir=True`` runs it from a fresh working directory with the
    default, relative data directory.
    """
    started: list[Server | Proxied] = []

    def start(
        backend: str,
        workers: int = 2,
        default_data_dir: bool = False,
        nofile: int | None = None,
        **settings: object,
    ) -> Server | Proxied:
        redis_url = redis_url_for(backend)
        on_s3 = split_backend(backend)[1] == "s3"
        if on_s3:
            settings = {**request.getfixturevalue("s3").settings(), **settings}

        def data_dir() -> Path:
            if default_data_dir:
                return tmp_path_factory.mktemp(f"workdir-{backend}") / "data"
            return tmp_path_factory.mktemp(f"data-{backend}")

        def replica(directory: Path, **extra: object) -> Server:
            if backend.startswith(HOSTED):
                return HostedApp(directory, redis_url=redis_url, workers=workers,
                                 **{**settings, **extra})
            return Server(directory, redis_url=redis_url, workers=workers,
                          default_data_dir=default_data_dir, nofile=nofile,
                          **{**settings, **extra})

        server: Server | Proxied
        if backend.startswith(PROXIED):
            if redis_url is None and on_s3:
                raise ValueError("replicas share uploads through Redis and a store")
            shared = data_dir()
            # What compose sets for its replicas: one Redis prefix, a trusted proxy.
            extra: dict[str, object] = {"trust_proxy": True}
            if redis_url is not None:
                extra["redis_prefix"] = f"proxied-{shared.name}:"
            server = Proxied(
                [replica(data_dir() if on_s3 else shared, **extra) for _ in range(2)],
                tmp_path_factory.mktemp(f"nginx-{backend}"),
            )
        else:
            server = replica(data_dir())
        started.append(server.start())
        return server

    yield start
    for server in started:  # all stop at once: each may take seconds to let go
        server.terminate()
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(backend: str, start_server) -> Server:
    """A 2-worker server with Tus-Max-Size 1000000000, per backend, per module."""
    return start_server(backend, max_size=1_000_000_000)


@pytest.fixture
def tus(server: Server) -> TusClient:
    return TusClient(server.endpoint)


@pytest.fixture
def guarded_client() -> Iterator[Callable[[Server | Proxied], TusClient]]:
    """Factory: guarded_client(server) -> a client whose every 5xx fails the test.

    At the end of the test each such server's log, from when its client was
    made, must hold no traceback.
    """
    made: list[tuple[Server | Proxied, TusClient, int]] = []

    def make(server: Server | Proxied) -> TusClient:
        client = guarded(server)
        made.append((server, client, len(server.log())))
        return client

    yield make
    for server, client, log_start in made:
        client.session.close()
        assert_no_traceback(server, log_start)
