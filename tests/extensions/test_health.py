"""/healthz and /readyz of a real server, with its Redis and its data directory failing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests

from ..support import RedisServer, Server, wait_until


def _ready(server: Server) -> int:
    try:
        return requests.get(server.url + "/readyz", timeout=5).status_code
    except requests.RequestException:
        return 0


def test_readyz_follows_redis(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    server = Server(tmp_path / "data", redis_url=redis.url).start()
    try:
        assert _ready(server) == 200
        redis.stop()
        started = time.monotonic()
        assert wait_until(lambda: _ready(server) == 503, 5, 0.1)
        print(f"/readyz answered 503 {time.monotonic() - started:.2f} s after Redis stopped")
        answer = requests.get(server.url + "/readyz", timeout=5).json()
        assert answer["status"] == "unavailable" and "registry" in answer["problems"]
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        redis.start()  # the same port: the URL the server was given
        assert wait_until(lambda: _ready(server) == 200, 10, 0.1)
    finally:
        server.stop()
        redis.stop()


def test_readyz_follows_the_data_directory(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    uploads = tmp_path / "data" / "uploads"
    try:
        assert _ready(server) == 200
        os.chmod(uploads, 0o500)  # read-only: no upload can be stored
        if os.access(uploads, os.W_OK):  # root ignores modes: take the folder away instead
            os.chmod(uploads, 0o700)
            uploads.rename(tmp_path / "data" / "gone")
        assert _ready(server) == 503
        problem = requests.get(server.url + "/readyz", timeout=5).json()["problems"]["store"]
        assert "not writable" in problem
    finally:
        if (tmp_path / "data" / "gone").exists():
            (tmp_path / "data" / "gone").rename(uploads)
        os.chmod(uploads, 0o700)
        server.stop()


def test_health_endpoints_can_be_left_out(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", health=False).start()
    try:
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 404
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 404
    finally:
        server.stop()
