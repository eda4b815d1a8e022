"""Fixtures: a private redis-server and the server under gunicorn, per backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import RedisServer, Server, TusClient

BACKENDS = ("embedded", "redis")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
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
        redis_url = None
        if backend == "redis":
            redis_url = request.getfixturevalue("redis_server").url
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
    for server in started:
        server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(backend: str, start_server) -> Server:
    """A 2-worker server with Tus-Max-Size 1000000000, per backend, per module."""
    return start_server(backend, max_size=1_000_000_000)


@pytest.fixture
def tus(server: Server) -> TusClient:
    return TusClient(server.endpoint)
