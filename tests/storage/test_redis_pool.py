"""The Redis registry under more concurrent requests per worker than redis-py's default pool.

redis-py's default pool holds 100 connections and refuses the 101st at once
("Too many connections"), which the server answered with 503. A gthread
worker runs up to --threads requests, and when many start together every
one of them waits on Redis with a connection checked out. One worker here
serves 200 uploads streaming at once, 100 HEADs beside them, and 200
creations at once: none may be answered 503.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from ..support import Server, SizedBody, TusClient

UPLOADS = 200
PIECE = 4096
PIECES = 4


@pytest.fixture(scope="module")
def one_worker(start_server) -> Server:
    return start_server("redis", workers=1)


def released_together(count: int, work: Callable[[int], int]) -> Counter:
    """Run ``work(i)`` in ``count`` threads released at once; a count of their results."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as error:  # noqa: BLE001 - a failed request is a result too
            results[index] = type(error).__name__

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return Counter(results)


def slow_body() -> Iterator[bytes]:
    for _ in range(PIECES):
        yield b"p" * PIECE
        time.sleep(0.3)


def test_many_concurrent_requests_on_one_worker_get_no_503(one_worker: Server) -> None:
    endpoint = one_worker.endpoint

    creations = released_together(
        UPLOADS, lambda i: TusClient(endpoint).create(PIECE * PIECES).status_code
    )
    urls = [TusClient(endpoint).new_upload(PIECE * PIECES) for _ in range(UPLOADS)]

    heads: Counter = Counter()

    def poll_heads() -> None:
        heads.update(
            released_together(100, lambda i: TusClient(endpoint).head(urls[i]).status_code)
        )

    poller = threading.Timer(0.4, poll_heads)
    poller.start()
    patches = released_together(
        UPLOADS,
        lambda i: TusClient(endpoint)
        .patch(urls[i], 0, SizedBody(slow_body(), PIECE * PIECES))
        .status_code,
    )
    poller.join(60)
    offsets = Counter(TusClient(endpoint).offset(url) for url in urls)
    print(
        f"one worker, Redis registry: {UPLOADS} creations at once {dict(creations)}; "
        f"{UPLOADS} PATCHes streaming at once {dict(patches)}; 100 HEADs meanwhile "
        f"{dict(heads)}; offsets after {dict(offsets)}"
    )
    assert creations == Counter({201: UPLOADS})
    assert patches == Counter({204: UPLOADS})
    assert heads == Counter({200: 100})
    assert offsets == Counter({PIECE * PIECES: UPLOADS})
    assert "Too many connections" not in one_worker.log()
