"""An upload whose client has gone quiet costs its worker nothing until something happens.

Holders used to wake on a timer (every 50 ms with the embedded registry,
every heartbeat with Redis) to look for release requests, and every read
timed out at that interval too. Now a holder sleeps until bytes arrive, a
release request rings its doorbell, or one of its own deadlines comes. The
measure is the worker's context switches (all its threads, from /proc)
while 100 PATCHes sit silent; and a HEAD still wakes the right holder at
once and gets every byte that arrived.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from ..support import TUS, RawPatch, Server, TusClient, assert_no_traceback

IDLE_UPLOADS = 100
QUIET_SECONDS = 3.0


def context_switches(pid: int) -> int:
    """Voluntary switches of every thread of ``pid`` so far: each wake-up of a thread
    ends in one when it sleeps again. (Involuntary ones are preemptions, which count
    the machine's other load: the suite's other servers.)"""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # a thread that just ended
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_silent_uploads_cost_no_wakeups(start_server, backend: str) -> None:
    # No commit falls due in the window: the first one of the 100 bytes would
    # otherwise land in it (after 2.5-7.5 s), and it is a wake-up with work to do.
    server: Server = start_server(backend, workers=1, commit_seconds=60)
    tus = TusClient(server.endpoint)
    urls = [tus.new_upload(1000) for _ in range(IDLE_UPLOADS)]
    # What the worker costs with no upload at all (its main loop, its own timers):
    # the holders' cost is what they add to it.
    time.sleep(1.0)
    (worker,) = server.worker_pids()
    before = context_switches(worker)
    time.sleep(QUIET_SECONDS)
    baseline = context_switches(worker) - before
    connections = [RawPatch(server, url, 0, 1000).begin(b"x" * 100) for url in urls]
    try:
        time.sleep(1.5)  # every PATCH has its lock and has written its 100 bytes
        before = context_switches(worker)
        time.sleep(QUIET_SECONDS)
        switches = context_switches(worker) - before
        per_upload_second = max(switches - baseline, 0) / IDLE_UPLOADS / QUIET_SECONDS

        started = time.monotonic()
        head = tus.head(urls[37])
        latency = time.monotonic() - started
        print(
            f"idle holders [{backend}]: {IDLE_UPLOADS} silent PATCHes, worker context switches "
            f"{switches} in {QUIET_SECONDS:g} s, {baseline} without uploads "
            f"({per_upload_second:.2f} per upload per second; "
            f"a 50 ms poll was 20 or more); HEAD of one of them in {latency * 1000:.1f} ms -> "
            f"{head.headers.get('Upload-Offset')}"
        )
        # Embedded: nothing at all. Redis: the lease renewals (every lock_ttl / 4 = 2.5 s),
        # a round trip each, at most four switches per renewal.
        allowed = 0.2 if backend == "embedded" else 4 / 2.5
        assert per_upload_second < allowed, switches
        assert head.status_code == 200
        assert head.headers["Upload-Offset"] == "100"  # the holder woke and committed
    finally:
        for raw in connections:
            raw.close()
    assert_no_traceback(server)


def test_a_worker_whose_threads_all_hold_uploads_accepts_no_more(start_server) -> None:
    """Two workers of two threads, three uploads streaming: one worker has no free thread.

    A worker used to accept connections beyond its threads; a HEAD it took
    then waited for one of its uploads to end, however idle the other
    worker was. Now a worker accepts only what it has threads for, and every
    HEAD is answered, by whichever worker has room.
    """
    server: Server = start_server("embedded", workers=2, threads=2)
    tus = TusClient(server.endpoint)
    urls = [tus.new_upload(1000) for _ in range(3)]
    connections = [RawPatch(server, url, 0, 1000).begin(b"x" * 10) for url in urls]
    try:
        time.sleep(1.0)  # every PATCH holds its thread
        for attempt in range(12):
            started = time.monotonic()
            # A fresh connection each time, closed after the answer, as a poller behind a
            # load balancer makes (a kept-alive one would take a worker's place).
            closing = {**TUS, "Connection": "close"}
            head = requests.head(urls[attempt % 3], headers=closing, timeout=5)
            assert head.status_code == 200
            assert head.headers["Upload-Offset"] == "10"
            assert time.monotonic() - started < 2.0
    finally:
        for raw in connections:
            raw.close()
    assert_no_traceback(server)
