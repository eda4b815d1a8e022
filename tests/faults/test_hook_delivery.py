"""post-finish is never lost: workers killed while uploads finish, every finish announced.

Two instances of two workers each share Redis and a data directory; 30
clients upload through both (each request to either, at random) while
workers are SIGKILLed, at least ten times. A worker may die after the commit
that finished an upload and before its post-finish went out: the ledger
(resumable/ledger.py) keeps it owed and another process delivers it. Every
finished upload must have a post-finish at the receiver; duplicates are
allowed (at least once) and reported.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

from ..support import OFFSET_STREAM, TUS, HookReceiver, Server, pattern_bytes, wait_until

UPLOADS = 30
SIZE = 1024 * 1024
CHUNK = 128 * 1024
MIN_KILLS = 10


def _upload(servers: list[Server], seed: int) -> str | None:
    """Create and finish one upload through random instances, resuming after every failure."""
    data = pattern_bytes(SIZE, seed)
    session = requests.Session()
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        try:
            response = session.post(random.choice(servers).endpoint, timeout=10,
                                    headers={**TUS, "Upload-Length": str(SIZE)})
            if response.status_code == 201:
                url = response.headers["Location"]
        except requests.RequestException:
            session = requests.Session()
        if url is None:
            time.sleep(0.2)
    if url is None:
        return None
    path = url.split("/files/", 1)[1]
    offset = 0
    while offset < SIZE and time.monotonic() < deadline:
        base = random.choice(servers).endpoint
        try:
            response = session.patch(
                base + path, data=data[offset : offset + CHUNK], timeout=10,
                headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM})
            if response.status_code == 204:
                offset = int(response.headers["Upload-Offset"])
                time.sleep(0.05)
                continue
        except requests.RequestException:
            session = requests.Session()
        time.sleep(0.2)
        try:
            head = session.head(random.choice(servers).endpoint + path, headers=TUS, timeout=10)
            if head.status_code == 200:
                offset = int(head.headers["Upload-Offset"])
        except requests.RequestException:
            session = requests.Session()
    return path if offset == SIZE else None


def _killer(servers: list[Server], stop: threading.Event, kills: list[int]) -> None:
    while not stop.wait(0.6):
        server = random.choice(servers)
        workers = server.worker_pids()
        if workers:
            victim = random.choice(workers)
            try:
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)
            except ProcessLookupError:
                pass


def test_every_finished_upload_gets_its_post_finish(redis_server, tmp_path: Path) -> None:
    receiver = HookReceiver()
    shared = tmp_path / "data"
    settings = {
        "redis_prefix": "delivery:",
        "hooks_http": receiver.url,
        "hooks_enabled_events": "post-finish",
        "hooks_http_timeout": 2,
        "hooks_http_retries": 1,
        "hooks_http_backoff": 0.2,
        "lock_ttl": 3,
        "lock_wait": 1,
    }
    servers = [Server(shared, redis_url=redis_server.url, workers=2, **settings).start()
               for _ in range(2)]
    stop = threading.Event()
    kills: list[int] = []
    killer = threading.Thread(target=_killer, args=(servers, stop, kills), daemon=True)
    try:
        killer.start()
        with ThreadPoolExecutor(6) as pool:
            finished = [p for p in pool.map(lambda s: _upload(servers, s), range(UPLOADS))
                        if p is not None]
        while len(kills) < MIN_KILLS:  # every kill counts while uploads ran; top up if few
            time.sleep(0.2)
        stop.set()
        killer.join()
        assert len(finished) == UPLOADS, f"only {len(finished)} uploads finished"

        def announced() -> Counter:
            return Counter(e["payload"]["Event"]["Upload"]["ID"]
                           for e in receiver.events("post-finish"))

        wait_until(lambda: set(finished) <= set(announced()), 60, 0.5)
        counts = announced()
        missing = [upload_id for upload_id in finished if counts[upload_id] == 0]
        duplicates = sum(count - 1 for count in counts.values() if count > 1)
        print(f"{UPLOADS} uploads, {len(kills)} worker kills: {len(finished) - len(missing)} "
              f"post-finish delivered, {duplicates} duplicates, {len(missing)} missing")
        assert not missing, f"post-finish never came for {missing}"
        assert set(counts) <= set(finished), "a post-finish for an upload that did not finish"
        ids = {e["headers"]["Idempotency-Key"] for e in receiver.events("post-finish")}
        assert ids == {f"{upload_id}.post-finish" for upload_id in finished}
        ledger = redis.Redis.from_url(redis_server.url)
        assert wait_until(lambda: ledger.hlen("delivery:post-finish") == 0, 20), \
            "owed post-finish events stay in the ledger after delivery"
    finally:
        stop.set()
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()
        receiver.close()
