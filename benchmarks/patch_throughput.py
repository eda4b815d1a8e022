"""How fast one large PATCH streams into ``resumable``, and what it costs in memory.

Run from the repository root with the project's virtualenv::

    python -m benchmarks.patch_throughput                      # 256MiB,4GiB, embedded registry
    python -m benchmarks.patch_throughput --sizes 64MiB,256MiB --rounds 3
    python -m benchmarks.patch_throughput --start-redis        # private redis-server
    python -m benchmarks.patch_throughput --redis-url redis://127.0.0.1:6379/0 --fsync

It starts ``python -m resumable serve`` (gunicorn, gthread, 2 workers by default)
with its data directory in a temporary directory (or ``--data-dir``), and stops
it, and the private redis-server of ``--start-redis``, at the end. It first
times its own client against a loopback sink, then runs small warm-up uploads
until every worker has served one (so no worker's first-request imports show up
as RSS growth). Then, for each size in the order given and ``--rounds`` times:

1. create an upload (POST ``Upload-Length: size``);
2. prime (see below), then send ONE PATCH of that size with ``Content-Length``
   from a raw-socket client that repeats one pre-filled 4 MiB buffer with
   ``sendall`` (no allocation per chunk), sampling RSS meanwhile;
3. check that HEAD reports ``Upload-Offset == size``, and delete the upload;
4. prime, then write the same number of bytes to a plain file in the same
   directory (the baseline), and with ``--fsync`` once more with an fsync.

``os.sync()`` runs before every timed step so dirty pages of the previous one
do not slow it down. *Priming* (``--prime``, on by default) writes and removes
an untimed file of the same size just before each timed step: on a VM that
hands idle guest memory back to the hypervisor (virtio-balloon free page
reporting), the first write into such memory runs several times slower than
into memory used a moment ago, and priming puts the server and the baseline in
the same warm state. ``--no-prime`` measures from whatever state memory is in.
A size is skipped, with a message, when the data directory's file system has
less than size + 1 GiB free.

The figures
-----------
client -> loopback sink
    The raw client sending to a process that only discards (``recv_into``) over
    127.0.0.1: the most this client can push. The server's figure should stay
    well below it, or the client is what was measured.
wall s, MB/s, MiB/s
    Median over the rounds of the time from the first byte of the PATCH request
    to the last byte of the server's answer (so it includes the server's final
    commit), and size / that time in 10^6 and 2^20 bytes per second.
sent s
    When the client's last ``sendall`` returned; wall - sent is what the server
    still had to do after the last byte left the client (socket buffers, commit).
baseline MB/s, fsync MB/s
    A single sequential writer (4 MiB ``os.write`` calls, then close) of the same
    size to the same file system, without and (``--fsync``) with an fsync before
    close. Without fsync both it and the server mostly write into the page cache
    (see vm_dirty_ratio in the JSON), so this is the machine's limit for what the
    server does by default. "% base" is server MB/s / baseline MB/s, "% fsync"
    the same against the fsync baseline. The per-round lines also show the
    priming writes' MB/s: a write into "cold" memory (see above).
rounds
    Rounds that succeeded / rounds run; a failed round (status, HEAD offset) is
    printed with its error, kept in the JSON and makes the exit status 1.
wkr CPU s, CPU %
    User + system CPU time the serving worker (the one whose /proc/<pid>/io
    ``wchar`` grew by the body) used during the PATCH, and that as a share of the
    wall time: near 100 % means the one thread streaming the upload is CPU bound.
    /proc counts CPU in clock ticks (10 ms), so small sizes read coarsely.
RSS (memory table)
    For the gunicorn master and all its children, read from
    /proc/<master>/task/<master>/children: the workers (forks of the master)
    and any helper it starts (the ``resumable gc`` collector shows up with its
    command as the role); "served" lists the rounds a worker served. The
    columns: VmRSS just before the PATCH, the
    peak VmRSS sampled every 10 ms by a thread during the PATCH (max over the
    rounds), VmRSS right after the answer, and VmHWM read after the size's last
    round. VmHWM is the lifetime peak of the process, so it also covers every
    size that ran before it (the order is printed and stored).

The table is printed and the same figures are written as JSON to ``--json``
(default ``bench-results/patch_throughput.json`` at the repository root,
git-ignored), with the server's log beside it (``*.server.log``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    GiB,
    MiB,
    PatchTiming,
    RssSampler,
    ServerProcess,
    WriteTiming,
    baseline_write,
    fill_buffer,
    format_size,
    host_info,
    log_trouble,
    mb_per_s,
    measure_client_speed,
    median,
    mib_per_s,
    now_iso,
    parse_size,
    parse_sizes,
    proc_bytes_written,
    proc_cpu_seconds,
    proc_memory,
    raw_patch,
    request,
    to_mib,
)
from resumable.settings import Settings  # noqa: E402
from tests.support.redis_servers import RedisServer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO_ROOT / "bench-results" / "patch_throughput.json"
HEADROOM = 1 * GiB
TUS = {"Tus-Resumable": "1.0.0"}


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass
class ProcessMemory:
    pid: int
    role: str  # "master" or "worker"
    rss_before: int | None = None
    rss_peak: int | None = None
    rss_after: int | None = None
    hwm_after: int | None = None
    served_rounds: list[int] = field(default_factory=list)


@dataclass
class Round:
    index: int
    wall_s: float
    sent_s: float
    mb_s: float
    mib_s: float
    client_cpu_s: float
    worker_cpu_s: float | None
    serving_pid: int | None
    rss_samples: int
    offset_ok: bool
    baseline: WriteTiming | None = None
    baseline_fsync: WriteTiming | None = None
    #: Seconds of the untimed priming writes (see --prime), in the order they ran.
    prime_s: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class SizeResult:
    size: int
    label: str
    order: int
    skipped: str | None = None
    rounds: list[Round] = field(default_factory=list)
    memory: dict[int, ProcessMemory] = field(default_factory=dict)
    worker_pids_before: list[int] = field(default_factory=list)
    worker_pids_after: list[int] = field(default_factory=list)

    def good_rounds(self) -> list[Round]:
        return [r for r in self.rounds if r.error is None]

    def summary(self) -> dict[str, float | None]:
        good = self.good_rounds()
        wall = median([r.wall_s for r in good])
        base = [r.baseline.seconds for r in self.rounds if r.baseline]
        base_fsync = [r.baseline_fsync.seconds for r in self.rounds if r.baseline_fsync]
        cpu = [r.worker_cpu_s for r in good if r.worker_cpu_s is not None]
        primes = [t for r in self.rounds for t in r.prime_s]
        out: dict[str, float | None] = {
            "wall_s": _num(wall),
            "sent_s": _num(median([r.sent_s for r in good])),
            "mb_s": _num(mb_per_s(self.size, wall)),
            "mib_s": _num(mib_per_s(self.size, wall)),
            "worker_cpu_s": _num(median(cpu)),
            "worker_cpu_pct": _num(100 * median(cpu) / wall) if cpu and good else None,
            "client_cpu_s": _num(median([r.client_cpu_s for r in good])),
            "baseline_s": _num(median(base)),
            "baseline_mb_s": _num(mb_per_s(self.size, median(base))) if base else None,
            "baseline_fsync_s": _num(median(base_fsync)),
            "baseline_fsync_mb_s": (
                _num(mb_per_s(self.size, median(base_fsync))) if base_fsync else None
            ),
            "prime_mb_s": _num(mb_per_s(self.size, median(primes))) if primes else None,
        }
        if out["mb_s"] is not None and out["baseline_mb_s"]:
            out["pct_of_baseline"] = round(100 * out["mb_s"] / out["baseline_mb_s"], 1)
        if out["mb_s"] is not None and out["baseline_fsync_mb_s"]:
            out["pct_of_fsync_baseline"] = round(
                100 * out["mb_s"] / out["baseline_fsync_mb_s"], 1
            )
        return out


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)


# --------------------------------------------------------------------------
# One size
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, server: ServerProcess, buffer: memoryview):
        self.args = args
        self.server = server
        self.buffer = buffer
        self.host = server.host
        self.port = server.port

    def create(self, length: int) -> str:
        status, headers = request(
            self.host, self.port, "POST", self.server.base_path,
            {**TUS, "Upload-Length": str(length)},
        )
        if status != 201 or "location" not in headers:
            raise RuntimeError(f"POST answered {status} {headers}")
        return urllib.parse.urlsplit(headers["location"]).path

    def offset(self, path: str) -> int | None:
        status, headers = request(self.host, self.port, "HEAD", path, TUS)
        if status != 200:
            return None
        return int(headers.get("upload-offset", "-1"))

    def delete(self, path: str) -> None:
        status, headers = request(self.host, self.port, "DELETE", path, TUS)
        if status != 204:
            print(f"  ! DELETE {path} answered {status} {headers}", flush=True)

    @contextlib.contextmanager
    def upload(self, length: int) -> Iterator[str]:
        path = self.create(length)
        try:
            yield path
        finally:
            self.delete(path)

    def warm_up(self, at_least: int = 4, at_most: int = 60, size: int = 2 * MiB) -> int:
        """Small uploads on new connections until every worker has written one.

        Which worker accepts a connection is up to the kernel, so this goes on
        until each worker's written-bytes counter grew (or ``at_most`` uploads).
        Returns how many uploads it took.
        """
        workers = self.server.worker_pids()
        start = {pid: proc_bytes_written(pid) or 0 for pid in workers}
        for count in range(1, at_most + 1):
            with self.upload(size) as path:
                timing = raw_patch(self.host, self.port, path, 0, size, self.buffer)
                if timing.status != 204:
                    raise RuntimeError(f"warm-up PATCH answered {timing.status}\n"
                                       f"{self.server.log()}")
            idle = [pid for pid in workers
                    if (proc_bytes_written(pid) or 0) - start[pid] < size]
            if count >= at_least and not idle:
                return count
        print(f"  ! workers {idle} served none of {at_most} warm-up uploads", flush=True)
        return at_most

    def free_space(self) -> int:
        return shutil.disk_usage(self.server.data_dir).free

    def prime(self, size: int, round_prime: list[float]) -> None:
        """Write and remove an untimed file of ``size`` bytes right before a timed step.

        On a VM whose idle memory goes back to the hypervisor, the first write into
        it is several times slower than into memory the guest used a moment ago;
        priming puts the server and the baseline in the same (warm) state.
        """
        if self.args.prime:
            round_prime.append(baseline_write(self.server.data_dir, size, self.buffer,
                                              fsync=False).seconds)

    def run_size(self, result: SizeResult) -> None:
        size = result.size
        result.worker_pids_before = self.server.worker_pids()
        for index in range(1, self.args.rounds + 1):
            free = self.free_space()
            if free < size + HEADROOM:
                message = (
                    f"only {free / GiB:.1f} GiB free in {self.server.data_dir}, "
                    f"{format_size(size)} needs {(size + HEADROOM) / GiB:.1f} GiB"
                )
                if index == 1:
                    result.skipped = message
                    print(f"  SKIP {result.label}: {message}", flush=True)
                    return
                print(f"  stopping {result.label} after {index - 1} rounds: {message}")
                break
            result.rounds.append(self.run_round(result, index))
        result.worker_pids_after = self.server.worker_pids()
        for pid, memory in result.memory.items():
            hwm = proc_memory(pid).get("VmHWM")
            memory.hwm_after = hwm

    def run_round(self, result: SizeResult, index: int) -> Round:
        size = result.size
        server = self.server
        primes: list[float] = []
        os.sync()
        with self.upload(size) as path:
            self.prime(size, primes)
            pids = server.all_pids()
            before = {pid: proc_memory(pid).get("VmRSS") for pid in pids}
            cpu_before = {pid: proc_cpu_seconds(pid) for pid in pids}
            written_before = {pid: proc_bytes_written(pid) for pid in pids}
            error: str | None = None
            with RssSampler(server.all_pids, self.args.sample_interval) as sampler:
                try:
                    timing = raw_patch(self.host, self.port, path, 0, size, self.buffer,
                                       timeout=self.args.timeout)
                except Exception as exc:  # recorded, and the next size still runs
                    timing = PatchTiming(0, {}, float("nan"), float("nan"), 0.0, str(exc))
                    error = f"PATCH failed: {exc}"
            after_pids = server.all_pids()
            after = {pid: proc_memory(pid).get("VmRSS") for pid in after_pids}
            cpu_after = {pid: proc_cpu_seconds(pid) for pid in after_pids}
            written_after = {pid: proc_bytes_written(pid) for pid in after_pids}
            if error is None and timing.status != 204:
                error = f"PATCH answered {timing.status} {timing.headers}"
            offset = self.offset(path)
            offset_ok = offset == size
            if error is None and not offset_ok:
                error = f"HEAD Upload-Offset is {offset}, expected {size}"
        workers = {pid for pid in {*pids, *after_pids} if server.role(pid) == "worker"}
        deltas: dict[int, float] = {}
        wrote: dict[int, int] = {}
        for pid in workers:
            start, end = cpu_before.get(pid), cpu_after.get(pid)
            if start is not None and end is not None:
                deltas[pid] = end - start
            w_start, w_end = written_before.get(pid), written_after.get(pid)
            if w_start is not None and w_end is not None:
                wrote[pid] = w_end - w_start
        # The serving worker wrote the body (wchar); CPU time is the fallback.
        serving = (max(wrote, key=lambda pid: wrote[pid]) if wrote
                   else max(deltas, key=lambda pid: deltas[pid]) if deltas else None)
        for pid in {*pids, *after_pids, *sampler.peak}:
            if pid not in result.memory:
                result.memory[pid] = ProcessMemory(pid, server.role(pid))
            memory = result.memory[pid]
            if memory.rss_before is None:
                memory.rss_before = before.get(pid)
            peak = sampler.peak.get(pid)
            if peak is not None and (memory.rss_peak is None or peak > memory.rss_peak):
                memory.rss_peak = peak
            memory.rss_after = after.get(pid)
            if pid == serving:
                memory.served_rounds.append(index)
        round_ = Round(
            index=index,
            wall_s=timing.wall_s,
            sent_s=timing.sent_s,
            mb_s=mb_per_s(size, timing.wall_s),
            mib_s=mib_per_s(size, timing.wall_s),
            client_cpu_s=timing.client_cpu_s,
            worker_cpu_s=deltas.get(serving) if serving is not None else None,
            serving_pid=serving,
            rss_samples=sampler.samples,
            offset_ok=offset_ok,
            prime_s=primes,
            error=error,
        )
        if error:
            print(f"  ! {result.label} round {index}: {error}", flush=True)
        # The baseline writes the same bytes to the same file system, upload deleted.
        if self.free_space() >= size + HEADROOM:
            os.sync()
            self.prime(size, primes)
            round_.baseline = baseline_write(server.data_dir, size, self.buffer, fsync=False)
            if self.args.fsync:
                os.sync()
                self.prime(size, primes)
                round_.baseline_fsync = baseline_write(
                    server.data_dir, size, self.buffer, fsync=True
                )
        line = (
            f"  {result.label:>8} round {index}: PATCH {round_.wall_s:7.2f} s "
            f"{round_.mb_s:8.1f} MB/s"
        )
        if round_.baseline:
            line += f" | baseline {mb_per_s(size, round_.baseline.seconds):8.1f} MB/s"
        if round_.baseline_fsync:
            line += f" | fsync {mb_per_s(size, round_.baseline_fsync.seconds):8.1f} MB/s"
        if primes:
            line += f" | priming {mb_per_s(size, median(primes)):8.1f} MB/s"
        print(line, flush=True)
        return round_


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def print_report(
    results: list[SizeResult], client: dict[str, Any], config: dict[str, Any],
    trouble: list[str], leftovers: list[str],
) -> None:
    print()
    print(f"client -> loopback sink: {client['mb_s']:.1f} MB/s ({client['mib_s']:.1f} MiB/s), "
          f"{format_size(client['size'])} x {len(client['seconds'])}, median; "
          f"client CPU {client['cpu_pct']:.0f} %")
    print(f"server: {config['registry']} registry, {config['workers']} workers x "
          f"{config['threads']} threads, chunk {format_size(config['chunk_size'])}; "
          f"rounds {config['rounds']} (median); sizes ran in order: "
          f"{', '.join(r.label for r in results)}")
    print()
    fsync = config["fsync_baseline"]
    header = (f"{'size':>8} {'rounds':>6} {'wall s':>8} {'sent s':>8} {'MB/s':>8} "
              f"{'MiB/s':>8} {'base MB/s':>10} {'% base':>7}")
    if fsync:
        header += f" {'fsync MB/s':>10} {'% fsync':>7}"
    header += f" {'wkr CPU s':>9} {'CPU %':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        if r.skipped:
            print(f"{r.label:>8}  skipped: {r.skipped}")
            continue
        s = r.summary()
        line = (f"{r.label:>8} {len(r.good_rounds()):>3}/{len(r.rounds):<2} "
                f"{_fmt(s['wall_s'], '.2f'):>8} {_fmt(s['sent_s'], '.2f'):>8} "
                f"{_fmt(s['mb_s']):>8} {_fmt(s['mib_s']):>8} {_fmt(s['baseline_mb_s']):>10} "
                f"{_fmt(s.get('pct_of_baseline'), '.0f'):>7}")
        if fsync:
            line += (f" {_fmt(s['baseline_fsync_mb_s']):>10} "
                     f"{_fmt(s.get('pct_of_fsync_baseline'), '.0f'):>7}")
        line += f" {_fmt(s['worker_cpu_s'], '.2f'):>9} {_fmt(s['worker_cpu_pct'], '.0f'):>6}"
        print(line)
    print()
    header = (f"{'size':>8} {'pid':>8} {'role':>16} {'served':>7} {'RSS before':>11} "
              f"{'RSS peak':>9} {'RSS after':>10} {'VmHWM':>8}   (MiB)")
    print(header)
    print("-" * len(header))
    for r in results:
        if r.skipped:
            continue
        rank = {"master": 0, "worker": 1}
        ordered = sorted(r.memory.values(), key=lambda m: (rank.get(m.role, 2), m.pid))
        for m in ordered:
            served = ",".join(map(str, m.served_rounds)) or "-"
            print(f"{r.label:>8} {m.pid:>8} {m.role:>16} {served:>7} "
                  f"{_fmt(to_mib(m.rss_before)):>11} {_fmt(to_mib(m.rss_peak)):>9} "
                  f"{_fmt(to_mib(m.rss_after)):>10} {_fmt(to_mib(m.hwm_after)):>8}")
        if r.worker_pids_before != r.worker_pids_after:
            print(f"{'':>8} ! worker pids changed: {r.worker_pids_before} -> "
                  f"{r.worker_pids_after}")
    print("(RSS peak: every 10 ms during the PATCH, max over rounds; VmHWM: lifetime peak, "
          "read after the size's last round, so it covers earlier sizes too)")
    if trouble:
        print()
        print(f"server log: {len(trouble)} line(s) worth a look:")
        for line in trouble[:40]:
            print(f"  {line}")
    if leftovers:
        print()
        print(f"! files left in the uploads directory after the run: {leftovers[:10]}")


def round_json(r: Round) -> dict[str, Any]:
    data = asdict(r)
    for key in ("wall_s", "sent_s", "mb_s", "mib_s", "client_cpu_s", "worker_cpu_s"):
        if isinstance(data[key], float):
            data[key] = _num(data[key])
    return data


def size_json(r: SizeResult) -> dict[str, Any]:
    return {
        "size": r.size,
        "label": r.label,
        "order": r.order,
        "skipped": r.skipped,
        "summary": None if r.skipped else r.summary(),
        "rounds": [round_json(x) for x in r.rounds],
        "memory": [asdict(m) for m in r.memory.values()],
        "worker_pids_before": r.worker_pids_before,
        "worker_pids_after": r.worker_pids_after,
    }


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.patch_throughput",
        description="Throughput and memory of one large tus PATCH against resumable (gunicorn).",
    )
    parser.add_argument("--sizes", default="256MiB,4GiB",
                        help="comma separated PATCH sizes, run in this order (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat each size this many times, report the median (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default: the server's, "
                             f"{Settings.threads})")
    parser.add_argument("--chunk-size", type=parse_size, default=None,
                        help="the server's --chunk-size, e.g. 1MiB (default: the server's, "
                             f"{format_size(Settings.chunk_size)})")
    redis = parser.add_mutually_exclusive_group()
    redis.add_argument("--redis-url", default=None,
                       help="use this Redis (default: embedded registry)")
    redis.add_argument("--start-redis", action="store_true",
                       help="start a private redis-server on a free port and use it")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="server data directory (default: in a temporary directory)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="write the figures here (default bench-results/"
                             "patch_throughput.json in the repository)")
    parser.add_argument("--fsync", action="store_true",
                        help="also measure the baseline with an fsync before close")
    parser.add_argument("--prime", action=argparse.BooleanOptionalAction, default=True,
                        help="write and remove an untimed file of the size before each timed "
                             "step, so all start from warm memory (default on)")
    parser.add_argument("--buffer-size", type=parse_size, default=4 * MiB,
                        help="client send buffer and baseline write size (default 4MiB)")
    parser.add_argument("--sink-size", type=parse_size, default=1 * GiB,
                        help="bytes per client-speed run against the loopback sink "
                             "(3 runs; default 1GiB)")
    parser.add_argument("--sample-interval", type=float, default=0.01,
                        help="seconds between RSS samples (default 0.01)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="client socket timeout in seconds (default 1800)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as error:
        print(f"--sizes: {error}", file=sys.stderr)
        return 2
    if not sizes or args.rounds < 1 or args.workers < 1:
        print("need at least one size, one round and one worker", file=sys.stderr)
        return 2

    started = now_iso()
    host = host_info()
    print(f"{started}  cpus {host['cpu_count']}  memory "
          f"{(host['mem_total_bytes'] or 0) / GiB:.1f} GiB  load {host['load_average']}  "
          f"python {host['python']}  gunicorn {host['gunicorn']}", flush=True)

    buffer = fill_buffer(args.buffer_size)
    print(f"client speed: {format_size(args.sink_size)} x 3 to a loopback sink ...", flush=True)
    sink = measure_client_speed(buffer, args.sink_size)
    client = {
        "size": sink.size,
        "seconds": [round(s, 4) for s in sink.seconds],
        "mb_s": mb_per_s(sink.size, sink.median_s),
        "mib_s": mib_per_s(sink.size, sink.median_s),
        "cpu_pct": 100 * median(sink.client_cpu_s) / sink.median_s,
    }
    print(f"  {client['mb_s']:.1f} MB/s", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="resumable-bench-"))
    data_dir = (args.data_dir or workdir / "data").resolve()
    redis: RedisServer | None = None
    server: ServerProcess | None = None
    results: list[SizeResult] = []
    config: dict[str, Any] = {}
    trouble: list[str] = []
    leftovers: list[str] = []
    log_copy = args.json.with_name(args.json.stem + ".server.log")
    try:
        redis_url = args.redis_url
        if args.start_redis:
            redis = RedisServer(workdir / "redis").start()
            redis_url = redis.url
        server = ServerProcess(
            data_dir=data_dir,
            log_path=workdir / "server.log",
            workers=args.workers,
            threads=args.threads,
            chunk_size=args.chunk_size,
            redis_url=redis_url,
        ).start()
        config = {
            "sizes": sizes,
            "rounds": args.rounds,
            "workers": args.workers,
            "threads": args.threads or Settings.threads,
            "chunk_size": args.chunk_size or Settings.chunk_size,
            "registry": "redis" if redis_url else "embedded",
            "redis": "private redis-server" if args.start_redis else args.redis_url,
            "data_dir": str(data_dir),
            "free_bytes_at_start": shutil.disk_usage(data_dir).free,
            "fsync_baseline": args.fsync,
            "prime": args.prime,
            "server_fsync": False,
            "client_buffer": args.buffer_size,
            "sample_interval_s": args.sample_interval,
            "server_command": server.command(),
        }
        print(f"server: {' '.join(server.command()[1:])}", flush=True)
        print(f"  master {server.master_pid}, workers {server.worker_pids()}", flush=True)
        bench = Bench(args, server, buffer)
        config["warm_up_uploads"] = bench.warm_up()
        print(f"  warm-up: {config['warm_up_uploads']} small uploads until every worker "
              "had written one", flush=True)
        for order, size in enumerate(sizes, 1):
            result = SizeResult(size, format_size(size), order)
            results.append(result)
            bench.run_size(result)
    finally:
        if server is not None:
            server.stop()
            text = server.log()
            trouble = log_trouble(text)
            with contextlib.suppress(OSError):
                log_copy.parent.mkdir(parents=True, exist_ok=True)
                log_copy.write_text(text)
            uploads = data_dir / "uploads"
            if uploads.is_dir():
                leftovers = sorted(p.name for p in uploads.iterdir())
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print_report(results, client, config, trouble, leftovers)
    document = {
        "benchmark": "patch_throughput",
        "date": started,
        "finished": now_iso(),
        "host": host,
        "config": config,
        "order": [r.label for r in results],
        "client_loopback": {
            **client,
            "mb_s": _num(client["mb_s"]),
            "mib_s": _num(client["mib_s"]),
            "cpu_pct": _num(client["cpu_pct"]),
        },
        "results": [size_json(r) for r in results],
        "server_log": {"path": str(log_copy), "trouble": trouble},
        "leftover_files": leftovers,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    failed = any(r.error for res in results for r in res.rounds)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
