"""Fixtures: private Redis deployments and the server under gunicorn, per backend.

A test taking ``backend`` runs once per registry: ``embedded`` and ``redis``
(one redis-server), or the backends its module lists in ``BACKENDS``
(``redis-cluster``: three nodes in a Redis Cluster; ``redis-sentinel``: a
master, a replica and a sentinel; ``s3`` and ``redis-s3``: the embedded or
the Redis registry with uploads kept in moto's S3 server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .support import (
    MotoS3,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    Server,
    TusClient,
    split_backend,
)

BACKENDS = ("embedded", "redis")
#: The Redis deployment each Redis backend runs on: the session fixture that starts it.
REDIS_FIXTURES = {
    "redis": "redis_server",
    "redis-cluster": "redis_cluster",
    "redis-sentinel": "redis_sentinel",
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    sentinel = RedisSentinel(tmp_path_factory.mktemp("redis-sentinel")).start()
    yield sentinel
    sentinel.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url_for(request: pytest.FixtureRequest) -> Callable[[str], str | None]:
    """redis_url_for(backend) -> the URL of its Redis deployment (None: embedded)."""

    def url(backend: str) -> str | None:
        name = REDIS_FIXTURES.get(split_backend(backend)[0])
        return None if name is None else request.getfixturevalue(name).url

    return url


@pytest.fixture(scope="session")
def start_server(
    tmp_path_factory: pytest.TempPathFactory, redis_url_for, request: pytest.FixtureRequest
):
    """Factory: start_server(backend, **settings) -> running Server, stopped at the end.

    ``default_data_dir=True`` runs it from a fresh working directory with the
    default, relative data directory.
    """
    started: list[Server] = []

    def start(
        backend: str,
        workers: int = 2,
        default_data_dir: bool = False,
        nofile: int | None = None,
        **settings: object,
    ) -> Server:
        redis_url = redis_url_for(backend)
        if split_backend(backend)[1] == "s3":
            settings = {**request.getfixturevalue("s3").settings(), **settings}
        if default_data_dir:
            data_dir = tmp_path_factory.mktemp(f"workdir-{backend}") / "data"
        else:
            data_dir = tmp_path_factory.mktemp(f"data-{backend}")
        server = Server(
            data_dir,
            redis_url=redis_url,
            workers=workers,
            default_data_dir=default_data_dir,
            nofile=nofile,
            **settings,
        ).start()
        started.append(server)
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
