"""How long one Redis command waits when a thousand threads share redis-py's pool.

A gthread worker holding a thousand uploads runs a thousand threads, and
each renews its lease and commits its offset now and then through one
redis-py client. That client's pool lends a connection for every command
through one queue and its lock; this measures what a command costs when
that lock is contended under the GIL, against a connection kept per thread
(``redis.Redis(single_connection_client=True)`` made once in each thread).

Run from the repository root with the project's virtualenv::

    python -m benchmarks.redis_pool                          # 1,000 threads, 1 command / 0.5 s
    python -m benchmarks.redis_pool --threads 500 --every 0.1 --seconds 10

It starts a private redis-server, then for each way, in alternation, runs
``--threads`` threads that each send a ``SET`` every ``--every`` seconds for
``--seconds`` seconds, and prints the commands per second, the latency
percentiles of one command, and this process's CPU time.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis import BlockingConnectionPool

from tests.support import RedisServer


def _run(pool: BlockingConnectionPool, per_thread: bool, threads: int, every: float,
         seconds: float) -> dict[str, float]:
    shared = redis.Redis(connection_pool=pool)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.monotonic() + seconds

    def client() -> redis.Redis:
        if per_thread:
            return redis.Redis(connection_pool=pool, single_connection_client=True)
        return shared

    def work(index: int) -> None:
        own = client()
        seen = latencies[index]
        while time.monotonic() < deadline:
            sent = time.monotonic()
            own.set(f"bench:{index}", len(seen))
            seen.append(time.monotonic() - sent)
            time.sleep(every)
        if own is not shared:
            own.close()

    cpu = time.process_time()
    running = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    cpu = time.process_time() - cpu
    every_one = sorted(value for seen in latencies for value in seen)

    def percentile(share: float) -> float:
        return every_one[min(len(every_one) - 1, int(len(every_one) * share))] * 1000

    return {
        "commands_per_s": len(every_one) / seconds,
        "p50_ms": percentile(0.5),
        "p99_ms": percentile(0.99),
        "max_ms": every_one[-1] * 1000,
        "cpu_s": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between commands")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        server.start()
        try:
            ways: dict[str, Callable[[BlockingConnectionPool], dict[str, float]]] = {
                "shared pool": lambda pool: _run(pool, False, args.threads, args.every,
                                                 args.seconds),
                "connection per thread": lambda pool: _run(pool, True, args.threads, args.every,
                                                           args.seconds),
            }
            for round_number in range(1, args.rounds + 1):
                for name, run in ways.items():
                    pool = BlockingConnectionPool.from_url(
                        server.url, max_connections=args.threads + 16, timeout=30
                    )
                    figures = run(pool)
                    pool.disconnect()
                    print(
                        f"round {round_number} {name:>22}: "
                        f"{figures['commands_per_s']:7.0f} commands/s, one command p50 "
                        f"{figures['p50_ms']:.2f} ms p99 {figures['p99_ms']:.1f} ms max "
                        f"{figures['max_ms']:.1f} ms, CPU {figures['cpu_s']:.1f} s"
                    )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
