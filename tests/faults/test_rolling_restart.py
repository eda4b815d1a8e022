"""A rolling restart behind nginx fails no upload of a resuming client.

Two replicas share Redis and a data directory behind nginx (tests/support/nginx.py
Proxied). While tuspy clients (with retries, as a resuming client runs)
upload, each replica in turn gets SIGTERM, stops within its shutdown
timeout, and starts again. The running PATCHes answer with what they stored
(resumable/stopping.py); the clients' next requests go to the other replica;
every upload ends complete and byte-exact.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import requests
from tusclient.client import TusClient as TuspyClient

from ..support import (
    UPSTREAM_FAIL_TIMEOUT,
    MiB,
    Proxied,
    Server,
    data_file,
    pattern_file,
    wait_until,
)

UPLOADS = 4
SIZE = 24 * MiB
CHUNK = 512 * 1024


def _upload(endpoint: str, path: Path, results: dict, index: int) -> None:
    """One file, a chunk at a time with a pause, so the restarts find it streaming."""
    try:
        uploader = TuspyClient(endpoint).uploader(
            file_path=str(path), chunk_size=CHUNK, retries=20, retry_delay=0.25
        )
        while uploader.offset < SIZE:
            uploader.upload_chunk()
            time.sleep(0.1)
        results[index] = uploader.url
    except Exception as error:  # noqa: BLE001 - reported as the upload's failure
        results[index] = error


def _restart(replica: Server) -> float:
    """SIGTERM, wait for the exit, start again and wait until it is ready, as an operator
    (or an orchestrator) does; then as long as nginx sets a refusing replica aside.
    How long the stop took."""
    assert replica.process is not None
    started = time.monotonic()
    replica.terminate()
    replica.process.wait(30)
    stopped = time.monotonic() - started
    replica.start()
    assert requests.get(replica.url + "/readyz", timeout=5).status_code == 200
    time.sleep(UPSTREAM_FAIL_TIMEOUT + 0.5)
    return stopped


def test_a_rolling_restart_fails_no_upload(start_server, tmp_path: Path) -> None:
    proxied = start_server("proxied-redis", shutdown_timeout=5)
    assert isinstance(proxied, Proxied)
    files = [pattern_file(tmp_path, SIZE, seed=40 + index)[0] for index in range(UPLOADS)]
    results: dict[int, object] = {}
    threads = [threading.Thread(target=_upload, args=(proxied.endpoint, path, results, i))
               for i, path in enumerate(files)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # all streaming
    stop_times = []
    for replica in proxied.replicas:
        stop_times.append(_restart(replica))
    for thread in threads:
        thread.join(180)
    print(f"replicas stopped in {', '.join(f'{t:.2f} s' for t in stop_times)}")
    # The stop's own deadline is tested in tests/faults/test_shutdown.py, on an idle machine's
    # timing; here, among the suite's other processes, a stop only has to end.
    assert all(t < 30 for t in stop_times), stop_times
    failures = {i: r for i, r in results.items() if not isinstance(r, str)}
    assert len(results) == UPLOADS and not failures, failures
    for index, path in enumerate(files):
        url = results[index]
        assert isinstance(url, str)
        stored = data_file(proxied, url)
        assert wait_until(lambda p=stored: p.exists() and p.stat().st_size == SIZE, 5)
        assert hashlib.sha256(stored.read_bytes()).digest() == \
            hashlib.sha256(path.read_bytes()).digest()
