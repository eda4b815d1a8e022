"""Fixtures of the fast tier: an endpoint per test, once per registry.

The Redis registry is reached the way ``resumable serve`` reaches Redis, by
``--redis-url``: the URL names a fakeredis server (with Lua, so the
registry's scripts run) listening on a free local port for this test only.
Nothing of the registry or of its Redis client is replaced.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from resumable.app import create_app
from resumable.settings import Settings

from .harness import MAX_SIZE, Endpoint

REGISTRIES = ("embedded", "fakeredis")


@pytest.fixture
def fake_redis_url() -> Iterator[str]:
    """A fakeredis server of this test's own; stopping it ends every connection to it."""
    server = fakeredis.TcpFakeServer(("127.0.0.1", 0))
    # A short poll interval: stopping the server waits for the next poll.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="fakeredis", daemon=True
    )
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=REGISTRIES)
def registry_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_endpoint(
    registry_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., Endpoint]:
    """make_endpoint(**settings) -> an endpoint on this test's registry kind.

    Defaults: ``--max-size`` MAX_SIZE, a short ``--lock-wait`` and few
    threads; settings come from the arguments alone, never from
    ``RESUMABLE_*`` variables.
    """
    made = 0

    def make(**overrides: Any) -> Endpoint:
        nonlocal made
        made += 1
        values: dict[str, Any] = {
            "data_dir": str(tmp_path / f"data{made}"),
            "max_size": MAX_SIZE,
            "lock_wait": 0.3,
            # The test client serves one request at a time (a few threads in the tests
            # that race requests): a Redis pool sized for 2048 threads only costs its making.
            "threads": 8,
        }
        if registry_kind == "fakeredis":
            values["redis_url"] = request.getfixturevalue("fake_redis_url")
            values["redis_prefix"] = f"fast{made}:"
        values.update(overrides)
        return Endpoint(create_app(Settings(**values)), registry_kind)

    return make


@pytest.fixture
def endpoint(make_endpoint: Callable[..., Endpoint]) -> Endpoint:
    return make_endpoint()
