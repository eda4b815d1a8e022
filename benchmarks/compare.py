"""``resumable`` against @tus/server (Node), in alternation, with the machine's limits.

Run from the repository root with the project's virtualenv (Node >= 20.19 and npm on PATH)::

    python benchmarks/compare.py                     # everything, 5 rounds (~15-25 min)
    python -m benchmarks.compare --quick             # smoke run: small sizes, 1 round
    python benchmarks/compare.py --workloads a,b --rounds 3 --size-a 256MiB
    python benchmarks/compare.py --json /tmp/compare.json

It starts both servers itself, each storing to its own directory inside one
temporary directory under bench-results/work (``--work-dir`` chooses where; the same file system for
both), and stops them at the end:

@tus/server
    ``node benchmarks/tus-node/server.mjs DIR PORT``: @tus/server with
    @tus/file-store on DIR at /files/, every request handed to the tus handler,
    no other middleware, one Node process with Node's default HTTP server
    settings. The versions are pinned by benchmarks/tus-node/package-lock.json;
    ``npm ci`` runs there when node_modules is missing or does not match.
resumable
    ``python -m resumable serve`` with its defaults (gunicorn, gthread, 2 workers
    x 1024 threads, embedded registry); only host, port, data directory and
    ``--log-level warning`` are given.

Neither fsyncs (@tus/file-store never does, resumable's ``--fsync`` is off by
default). One process against two is as deployed by default, and stays so.

Every workload runs in rounds, and in every round the servers run one after the
other: @tus/server, resumable (A B A B ...); so each figure is the median over
``--rounds`` (default 5; the issue asks for at least 3) and each ratio is
resumable's median / @tus/server's median from the same run. Before every timed
bulk step (a, b, c, e and the file-write limit) the page cache is flushed
(``os.sync()``) and the same number of bytes is written to an untimed file and
removed ("priming", see benchmarks/patch_throughput.py: on this VM the first
write into idle memory is several times slower; ``--no-prime`` turns it off).
RLIMIT_NOFILE is raised (towards 65536) before anything starts, so both servers
inherit the same limit.

The workloads and their figures
-------------------------------
(a) one PATCH, MB/s (10^6 bytes/s)
    POST ``Upload-Length: size`` (``--size-a``, default 1GiB), then ONE PATCH of
    that size sent by the raw-socket client of benchmarks/common.py (one
    pre-filled 4 MiB buffer repeated with ``sendall``, ``Connection: close``),
    timed from its first byte to the last byte of the answer; HEAD must then
    report the whole size; DELETE. Limits, every round after both servers, each
    after the same flush and priming: *file write*, a plain sequential write of
    the same size to the same file system (4 MiB ``os.write`` calls, no fsync);
    and *client -> sink*, the same client sending the size to a process that
    only discards it over loopback. The target is a share of the lower median.
(b) 5 MiB PATCHes, MB/s
    The same size in PATCHes of ``--patch-size`` (5MiB) one after the other on
    one keep-alive connection; from the first PATCH byte to the last answer.
(c) concurrent uploads, aggregate MB/s
    ``--uploads-c`` (16) uploads of ``--size-c`` (64MiB), each one PATCH on its
    own connection from its own thread, all released at once; total bytes / time
    from the release to the last answer.
(d) tiny creations, requests/s
    ``--clients-d`` (16) keep-alive connections driven by one selectors loop,
    each sending POST ``Upload-Length: 1024``, ``Content-Type:
    application/offset+octet-stream`` and the 1 KiB body (creation-with-upload),
    the next as soon as the answer came, for ``--seconds-d`` (5) s: 201 answers /
    s; p50/p99 latency of one request.
(e) peak RSS, MiB
    VmRSS of every server process (node; gunicorn master, workers, and the
    ``resumable gc`` helper) sampled every 10 ms during each PATCH of (a), and of
    (a) repeated with ``--size-e`` (4GiB, ``--rounds-e`` rounds, default 2, no
    file-write limit): the max over the rounds. "same" means the highest worker
    peak with 4 GiB is at most max(8 MiB, 10 %) above the highest with 1 GiB
    (whichever worker served). Also shown: the most a worker's RSS rose during
    a PATCH above its level just before it.
(f) slow uploads
    ``--slow-uploads`` (500) uploads created first, then one PATCH each held open
    at once from one selectors loop, each sending ``--slow-rate`` (64KiB) per
    second. After a 1 s ramp the offsets of all uploads are read; then for
    ``--slow-seconds`` (20) s ``--heads`` (200) HEADs, one at a time, spread
    evenly, each on a new connection (connect included), give the HEAD latency
    p50/p99 (a HEAD that fails or times out after 5 s counts as infinitely
    slow); then the offsets are read again. An upload *progresses* when its
    offset grew between the two readings. For resumable the offsets come from
    HEAD on the running uploads (64 at a time, new connection each, 5 s timeout;
    a failed HEAD makes the upload "unknown"), and each probe is a pair: a HEAD
    of a running upload (the target's figure) and one of 16 idle uploads.
    @tus/server's HEAD takes the upload's lock, and its locker asks the running
    PATCH to stop, so there a HEAD ends a running upload: its offsets are read
    from its data files (the size its HEAD would report) and its probes HEAD
    only the 16 idle uploads. "on disk" counts uploads whose data file
    grew, for both (a diagnostic: resumable writes before it commits the
    offset). Also: peak RSS per process, sockets and threads per process
    mid-hold (how the connections were spread over gunicorn's workers), and on
    how many connections the client kept pace (a send that would block means
    the server is not reading that upload). The uploads stay open from the
    first connect to the second reading ("held" s). Run once per server, not
    in rounds.
(g) slow clients, open loop
    ``--uploads-g`` (500) uploads, each one PATCH paced at ``--rate-g`` (64KiB)
    per second, from one asyncio loop (benchmarks/slow_clients.py); after a 2 s
    ramp, for ``--seconds-g`` (20) s, HEADs leave at fixed rates whether or not
    earlier ones were answered, each on a new connection: ``--running-heads-g``
    (50) per second on running uploads, ``--idle-heads-g`` (10) per second on 16
    idle ones; latency from the scheduled time (so queueing shows), 10 s timeout.
    A PATCH that ends early is resumed as a tus client does (HEAD, then PATCH
    from the offset) and counted by status: @tus/server's HEAD stops the running
    PATCH, resumable's does not. Progress is read from the data files. Also:
    server CPU (cores), the client's CPU and event-loop lag, peak RSS per
    process. Run for resumable with the embedded registry and, when
    redis-server is on PATH, with a private Redis too; ``--rounds-g`` (3) rounds
    in alternation, medians (p99 and CPU) and worst cases (progress, errors).

Client figures
    The same client code runs against a loopback sink: the raw TCP sink of
    common.py for (a) (every round, see above), the one-thread HTTP sink
    ``HttpSink`` that answers like a tus server and discards bodies for (b),
    (c), (d) (median of up to 3 runs before the rounds). "server/sink" below
    70 % says the client is not what was measured.

Targets (printed PASS/MISS; N/A when a figure is missing): (a) resumable >=
2x @tus/server and >= 85 % of the lower of its two limits; (b) >= 1.2x; (c) >= 1x;
(d) >= 1.5x; (e) every worker's peak < 100 MiB at both sizes and the same for both;
(f) every slow upload progresses, and HEAD p99 < 100 ms; (g) every upload progresses with
no PATCH error, HEAD p99 < 50 ms on running and on idle uploads, every process's peak RSS
< 150 MiB, on each registry. With fewer than 3
rounds (``--quick``) the figures are a smoke test only.

The table and targets are printed; everything, per round, goes to ``--json``
(default bench-results/compare.json, git-ignored), with both servers' logs beside
it. The exit status is 1 when a request failed or a server misbehaved (errors,
unexpected statuses, worker restarts, log lines worth a look), else 0; a MISS
alone does not fail the run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import http.client
import json
import math
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    OFFSET_STREAM,
    GiB,
    HttpError,
    HttpSink,
    KiB,
    LaunchedServer,
    MiB,
    RawConnection,
    RssSampler,
    ServerProcess,
    baseline_write,
    data_file_of,
    fill_buffer,
    format_size,
    host_info,
    log_trouble,
    mb_per_s,
    measure_client_speed,
    median,
    now_iso,
    parse_response,
    parse_size,
    percentile,
    proc_bytes_written,
    proc_memory,
    proc_socket_count,
    proc_threads,
    raise_nofile_limit,
    raw_patch,
    request,
    to_mib,
    to_ms,
)
from benchmarks.slow_clients import Plan as OpenLoopPlan  # noqa: E402
from benchmarks.slow_clients import run_open_loop  # noqa: E402
from resumable.settings import Settings  # noqa: E402
from tests.support.processes import free_port  # noqa: E402
from tests.support.redis_servers import RedisServer  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TUS_NODE_DIR = Path(__file__).resolve().parent / "tus-node"
DEFAULT_JSON = REPO_ROOT / "bench-results" / "compare.json"
DEFAULT_WORK_DIR = REPO_ROOT / "bench-results" / "work"
TUS = {"Tus-Resumable": "1.0.0"}
WORKLOADS = "abcdefg"
SUBJECTS = ("tus-node", "resumable")
LABELS = {"tus-node": "@tus/server", "resumable": "resumable", "file": "file write",
          "sink": "client->sink", "resumable-redis": "resumable (Redis)"}
HEADROOM = 1 * GiB
NPM_CI = ["npm", "ci", "--no-audit", "--no-fund"]
CLIENT_OK = 0.70  # server figure / sink figure below this: the client is not the limit

#: Defaults of the full run and of --quick; a flag given on the command line wins.
FULL = {
    "rounds": 5, "rounds_e": 2, "size_a": 1 * GiB, "size_e": 4 * GiB, "patch_size": 5 * MiB,
    "uploads_c": 16, "size_c": 64 * MiB, "clients_d": 16, "seconds_d": 5.0, "body_d": 1 * KiB,
    "slow_uploads": 500, "slow_rate": 64 * KiB, "slow_seconds": 20.0, "heads": 200,
    "uploads_g": 500, "rate_g": 64 * KiB, "seconds_g": 20.0, "running_heads_g": 50.0,
    "idle_heads_g": 10.0, "rounds_g": 3,
}
QUICK = {
    **FULL, "rounds": 1, "rounds_e": 1, "size_a": 64 * MiB, "size_e": 256 * MiB,
    "size_c": 4 * MiB, "seconds_d": 2.0, "slow_seconds": 8.0, "heads": 50,
    "seconds_g": 8.0, "rounds_g": 1,
}


# --------------------------------------------------------------------------
# The servers
# --------------------------------------------------------------------------


class Server(Protocol):
    host: str
    port: int
    base_path: str
    data_dir: Path

    def all_pids(self) -> list[int]: ...
    def worker_pids(self) -> list[int]: ...
    def role(self, pid: int) -> str: ...
    def log(self) -> str: ...
    def stop(self) -> None: ...


@dataclass
class TusNodeProcess(LaunchedServer):
    """``node benchmarks/tus-node/server.mjs DIR PORT``: one Node process."""

    data_dir: Path
    log_path: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    base_path: str = "/files/"
    process: subprocess.Popen[bytes] | None = None
    #: Added to the environment (TUS_S3_BUCKET … for @tus/s3-store).
    env: dict[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        node = shutil.which("node") or "node"
        return [node, str(TUS_NODE_DIR / "server.mjs"), str(self.data_dir), str(self.port),
                self.host]

    def start(self, timeout: float = 30) -> TusNodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, cwd=TUS_NODE_DIR,
                start_new_session=True, env={**os.environ, **self.env},
            )
        if not wait_until(self.ready, timeout, 0.1):
            self.stop()
            raise RuntimeError(f"@tus/server did not start; its log:\n{self.log()}")
        return self

    def all_pids(self) -> list[int]:
        return [] if self.process is None else [self.process.pid]

    def worker_pids(self) -> list[int]:
        return self.all_pids()

    def role(self, pid: int) -> str:
        return "node"


def node_trouble(text: str) -> list[str]:
    """Lines of the Node server's log other than its "listening" line."""
    return [line for line in text.splitlines() if line.strip() and
            not line.startswith("listening ")]


def installed_version(package: str) -> str | None:
    manifest = TUS_NODE_DIR / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_node_modules() -> dict[str, str | None]:
    """``npm ci`` in benchmarks/tus-node unless node_modules holds the pinned versions."""
    pinned = json.loads((TUS_NODE_DIR / "package.json").read_text())["dependencies"]
    if any(installed_version(name) != version for name, version in pinned.items()):
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            raise RuntimeError("node and npm are needed for @tus/server (Node >= 20.19)")
        print(f"npm ci in {TUS_NODE_DIR} ...", flush=True)
        done = subprocess.run([npm, *NPM_CI[1:]], cwd=TUS_NODE_DIR, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"npm ci failed:\n{done.stdout}\n{done.stderr}")
        wrong = {n: installed_version(n) for n, v in pinned.items() if installed_version(n) != v}
        if wrong:
            raise RuntimeError(f"npm ci did not install the pinned versions: {wrong}")
    node = subprocess.run([shutil.which("node") or "node", "--version"], capture_output=True,
                          text=True, timeout=30).stdout.strip()
    return {"node": node, **{name: installed_version(name) for name in pinned},
            "@tus/utils": installed_version("@tus/utils"), "srvx": installed_version("srvx")}


# --------------------------------------------------------------------------
# Endpoints (a server or the HTTP sink) and small tus helpers
# --------------------------------------------------------------------------


@dataclass
class Endpoint:
    name: str  # tus-node, resumable or sink
    host: str
    port: int
    base_path: str
    server: Server | None = None  # None for the sink: nothing to create, check or delete

    @property
    def real(self) -> bool:
        return self.server is not None

    def pids(self) -> list[int]:
        return [] if self.server is None else self.server.all_pids()


def endpoint_of(name: str, server: Server) -> Endpoint:
    return Endpoint(name, server.host, server.port, server.base_path, server)


def sink_endpoint(sink: HttpSink) -> Endpoint:
    return Endpoint("sink", sink.host, sink.port, "/files/")


def location_path(headers: dict[str, str]) -> str:
    return urllib.parse.urlsplit(headers["location"]).path


def create(ep: Endpoint, length: int) -> str:
    if not ep.real:
        return ep.base_path + "sink"
    status, headers = request(ep.host, ep.port, "POST", ep.base_path,
                              {**TUS, "Upload-Length": str(length)})
    if status != 201 or "location" not in headers:
        raise RuntimeError(f"POST answered {status} {headers}")
    return location_path(headers)


def head_offset(ep: Endpoint, path: str, timeout: float = 60) -> int | None:
    if not ep.real:
        return None
    status, headers = request(ep.host, ep.port, "HEAD", path, TUS, timeout=timeout)
    if status != 200:
        return None
    return int(headers.get("upload-offset", "-1"))


def unfinished(ep: Endpoint, path: str, size: int) -> str | None:
    """Why HEAD does not show the upload at ``path`` complete at ``size`` (None: it does)."""
    offset = head_offset(ep, path)
    return None if offset == size else f"HEAD Upload-Offset is {offset}, expected {size}"


def delete(ep: Endpoint, path: str, attempts: int = 5) -> str | None:
    """DELETE an upload, again while it is locked (423/409); the error text or None."""
    if not ep.real:
        return None
    status = 0
    for _ in range(attempts):
        try:
            status, _ = request(ep.host, ep.port, "DELETE", path, TUS, timeout=30)
        except OSError as error:
            return f"DELETE {path}: {error}"
        if status in (204, 404, 410):
            return None
        time.sleep(0.5)
    return f"DELETE {path} answered {status}"


@dataclass
class Context:
    plan: argparse.Namespace
    buffer: memoryview
    scratch_dir: Path  # priming and file-write limit: the servers' file system
    problems: list[str] = field(default_factory=list)
    #: Servers only (g) runs against: resumable with the Redis registry.
    extra_endpoints: list[Endpoint] = field(default_factory=list)

    def settle(self, size: int) -> float | None:
        """Flush dirty pages, then (with --prime) write and remove ``size`` untimed bytes."""
        os.sync()
        if not self.plan.prime:
            return None
        return baseline_write(self.scratch_dir, size, self.buffer, fsync=False).seconds

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  ! {text}", flush=True)


# --------------------------------------------------------------------------
# One timed step
# --------------------------------------------------------------------------


@dataclass
class Measure:
    subject: str  # tus-node, resumable, file, sink
    round: int
    value: float | None  # MB/s or requests/s
    seconds: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Peak VmRSS per pid during the step, and each pid's role.
    rss_peak: dict[int, int] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)


def _roles(ep: Endpoint, pids: Iterable[int]) -> dict[int, str]:
    server = ep.server
    return {} if server is None else {pid: server.role(pid) for pid in pids}


def step_one_patch(ctx: Context, ep: Endpoint, size: int, index: int) -> Measure:
    """(a), (e): one PATCH of ``size`` with Connection: close."""
    path = create(ep, size)
    try:
        prime_s = ctx.settle(size)
        before = {pid: proc_memory(pid).get("VmRSS", 0) for pid in ep.pids()}
        with RssSampler(ep.pids, 0.01) as sampler:
            timing = raw_patch(ep.host, ep.port, path, 0, size, ctx.buffer, timeout=1800)
        if timing.status != 204:
            error = f"PATCH answered {timing.status} {timing.headers}"
        else:
            error = unfinished(ep, path, size)
    finally:
        delete_error = delete(ep, path)
    return Measure(
        ep.name, index, mb_per_s(size, timing.wall_s), timing.wall_s, error or delete_error,
        {"sent_s": round(timing.sent_s, 4), "client_cpu_s": round(timing.client_cpu_s, 4),
         "prime_s": prime_s, "send_error": timing.send_error,
         "rss_before": {str(pid): rss for pid, rss in before.items()}},
        dict(sampler.peak), _roles(ep, sampler.peak),
    )


def step_patches(ctx: Context, ep: Endpoint, size: int, patch: int, index: int) -> Measure:
    """(b): ``size`` bytes in PATCHes of ``patch`` on one keep-alive connection."""
    path = create(ep, size)
    patches = reconnects = 0
    error = None
    try:
        prime_s = ctx.settle(size) if ep.real else None
        offset = 0
        with RssSampler(ep.pids, 0.01) as sampler:
            conn = RawConnection(ep.host, ep.port)
            t0 = time.perf_counter()
            try:
                while offset < size:
                    n = min(patch, size - offset)
                    if not conn.open:
                        conn = RawConnection(ep.host, ep.port)
                        reconnects += 1
                    conn.send_request(
                        "PATCH", path,
                        {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM},
                        n, ctx.buffer,
                    )
                    status, headers = conn.read_response()
                    patches += 1
                    new_offset = int(headers.get("upload-offset", "-1"))
                    if status != 204 or (ep.real and new_offset != offset + n):
                        error = f"PATCH at {offset} answered {status} {headers}"
                        break
                    offset += n
            finally:
                wall = time.perf_counter() - t0
                conn.close()
        if error is None and ep.real:
            error = unfinished(ep, path, size)
    finally:
        delete_error = delete(ep, path)
    return Measure(
        ep.name, index, mb_per_s(size, wall) if error is None else None, wall,
        error or delete_error,
        {"patches": patches, "reconnects": reconnects, "prime_s": prime_s},
        dict(sampler.peak), _roles(ep, sampler.peak),
    )


def step_concurrent(ctx: Context, ep: Endpoint, uploads: int, size: int, index: int) -> Measure:
    """(c): ``uploads`` single-PATCH uploads of ``size``, all released at once."""
    paths = [create(ep, size) for _ in range(uploads)]
    errors: list[str] = []
    ends: list[float] = [math.nan] * uploads
    try:
        prime_s = ctx.settle(uploads * size) if ep.real else None
        barrier = threading.Barrier(uploads + 1)

        def one(i: int) -> None:
            barrier.wait()
            try:
                timing = raw_patch(ep.host, ep.port, paths[i], 0, size, ctx.buffer,
                                   timeout=1800)
                if timing.status != 204:
                    errors.append(f"PATCH {i} answered {timing.status} {timing.headers}")
            except (OSError, HttpError) as exc:
                errors.append(f"PATCH {i}: {exc}")
            ends[i] = time.perf_counter()

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(uploads)]
        for thread in threads:
            thread.start()
        with RssSampler(ep.pids, 0.01) as sampler:
            barrier.wait()
            t0 = time.perf_counter()
            for thread in threads:
                thread.join()
        wall = max(end for end in ends if not math.isnan(end)) - t0
        if ep.real and not errors:
            wrong = [(p, o) for p in paths if (o := head_offset(ep, p)) != size]
            if wrong:
                errors.append(f"{len(wrong)} uploads short after the run: {wrong[:3]}")
    finally:
        for path in paths:
            if (delete_error := delete(ep, path)) is not None:
                errors.append(delete_error)
    return Measure(
        ep.name, index, mb_per_s(uploads * size, wall) if not errors else None, wall,
        "; ".join(errors[:5]) or None,
        {"uploads": uploads, "size": size, "prime_s": prime_s,
         "slowest_s": round(wall, 4), "fastest_s": round(min(ends) - t0, 4)},
        dict(sampler.peak), _roles(ep, sampler.peak),
    )


def step_tiny(ctx: Context, ep: Endpoint, clients: int, seconds: float, body: int,
              index: int) -> Measure:
    """(d): creation-with-upload of ``body`` bytes from ``clients`` keep-alive connections."""
    payload = (
        f"POST {ep.base_path} HTTP/1.1\r\nHost: {ep.host}:{ep.port}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Length: {body}\r\n"
        f"Content-Type: {OFFSET_STREAM}\r\nContent-Length: {body}\r\n\r\n"
    ).encode("ascii") + bytes(ctx.buffer[:body])
    selector = selectors.DefaultSelector()
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    reconnects = 0

    class Client:
        def __init__(self) -> None:
            self.sock = socket.create_connection((ep.host, ep.port), timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            self.data = bytearray()
            self.sent_at = 0.0
            selector.register(self.sock, selectors.EVENT_READ, self)

        def send(self) -> None:
            self.sent_at = time.perf_counter()
            sent = 0
            with contextlib.suppress(BlockingIOError):
                sent = self.sock.send(payload)
            if sent < len(payload):
                self.sock.setblocking(True)
                try:
                    self.sock.sendall(payload[sent:])
                finally:
                    self.sock.setblocking(False)

        def close(self) -> None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(self.sock)
            self.sock.close()

    live = [Client() for _ in range(clients)]
    in_flight: set[Client] = set()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    for client in live:
        client.send()
        in_flight.add(client)
    ok = 0
    while in_flight:
        now = time.perf_counter()
        if now > deadline + 10:
            errors["no answer 10 s after the end"] += len(in_flight)
            break
        for key, _ in selector.select(timeout=max(0.0, min(1.0, deadline + 10 - now))):
            client = key.data
            try:
                chunk = client.sock.recv(65536)
            except OSError as exc:
                errors[type(exc).__name__] += 1
                chunk = b""
            closed = not chunk
            client.data += chunk
            try:
                parsed = parse_response(client.data, closed=closed)
            except HttpError as exc:
                errors[str(exc)[:60]] += 1
                parsed, closed = None, True
            done_at = time.perf_counter()
            if parsed is not None:
                del client.data[:parsed.end]
                statuses[parsed.status] += 1
                if done_at <= deadline:
                    latencies.append(done_at - client.sent_at)
                    if parsed.status == 201:
                        ok += 1
            elif closed:
                errors["closed without an answer"] += 1
            if parsed is None and not closed:
                continue
            in_flight.discard(client)
            if closed or (parsed is not None and not parsed.keep_alive):
                client.close()
                if done_at < deadline:
                    client = Client()
                    reconnects += 1
                else:
                    continue
            if done_at < deadline:
                client.send()
                in_flight.add(client)
    elapsed = min(time.perf_counter(), deadline) - t0
    cpu = time.process_time() - cpu0
    for client in live:
        client.close()
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    bad = {str(s): n for s, n in statuses.items() if s != 201}
    error = None
    if bad or errors:
        error = f"statuses {bad} errors {dict(errors)}"
    return Measure(
        ep.name, index, ok / elapsed if elapsed > 0 else None, elapsed, error,
        {"created": ok, "statuses": {str(s): n for s, n in statuses.items()},
         "errors": dict(errors), "reconnects": reconnects, "client_cpu_s": round(cpu, 3),
         "p50_ms": round(1000 * percentile(latencies, 50), 3),
         "p99_ms": round(1000 * percentile(latencies, 99), 3)},
    )


def step_sink(ctx: Context, size: int, index: int) -> Measure:
    """The client's limit: the same client sending ``size`` bytes to a discarding process."""
    ctx.settle(size)
    result = measure_client_speed(ctx.buffer, size, repeats=1)
    return Measure("sink", index, mb_per_s(size, result.median_s), result.median_s)


def step_file_write(ctx: Context, size: int, index: int) -> Measure:
    """The file-write limit: one plain sequential write of ``size`` bytes, no fsync."""
    prime_s = ctx.settle(size)
    timing = baseline_write(ctx.scratch_dir, size, ctx.buffer, fsync=False)
    return Measure("file", index, mb_per_s(size, timing.seconds), timing.seconds,
                   extra={"prime_s": prime_s})


def guarded(ctx: Context, label: str, run: Callable[[], Measure], subject: str,
            index: int) -> Measure:
    """Run a step; an exception becomes a failed Measure (the run goes on)."""
    try:
        measure = run()
    except Exception as exc:  # noqa: BLE001 - recorded, the next step still runs
        measure = Measure(subject, index, None, error=f"{type(exc).__name__}: {exc}")
    if measure.error:
        ctx.problem(f"{label} {LABELS.get(subject, subject)} round {index}: {measure.error}")
    return measure


# --------------------------------------------------------------------------
# (f) slow uploads
# --------------------------------------------------------------------------


class _Slow:
    __slots__ = ("index", "sock", "pending", "connected", "started", "sent", "blocked",
                 "answer", "data", "failed")

    def __init__(self, index: int, sock: socket.socket, head: bytes):
        self.index = index
        self.sock = sock
        self.pending = head
        self.connected = False
        self.started = 0.0
        self.sent = 0
        self.blocked = 0  # ticks on which the socket would not take what was due
        self.answer: int | None = None
        self.data = bytearray()
        self.failed: str | None = None


class SlowUploads:
    """Many PATCHes held open at once, each paced at ``rate`` bytes/s, from one thread."""

    def __init__(self, ep: Endpoint, paths: list[str], length: int, rate: int,
                 buffer: memoryview, tick: float = 0.1):
        self.ep = ep
        self.paths = paths
        self.length = length
        self.rate = rate
        self.buffer = buffer
        self.tick = tick
        self.conns: list[_Slow] = []
        self.stop = threading.Event()
        self.all_connected = threading.Event()
        self.thread = threading.Thread(target=self._run, name="slow-uploads", daemon=True)
        self.error: str | None = None
        self.late_ticks = 0

    def __enter__(self) -> SlowUploads:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - reported with the results
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.sock.close()

    def _loop(self) -> None:
        selector = selectors.DefaultSelector()
        for i, path in enumerate(self.paths):
            head = (
                f"PATCH {path} HTTP/1.1\r\nHost: {self.ep.host}:{self.ep.port}\r\n"
                f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                f"Content-Type: {OFFSET_STREAM}\r\nContent-Length: {self.length}\r\n\r\n"
            ).encode("ascii")
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((self.ep.host, self.ep.port))
            conn = _Slow(i, sock, head)
            self.conns.append(conn)
            selector.register(sock, selectors.EVENT_WRITE, conn)
        waiting = len(self.conns)
        next_tick = time.perf_counter()
        while not self.stop.is_set():
            timeout = max(0.0, next_tick - time.perf_counter())
            for key, _ in selector.select(timeout=timeout):
                conn = key.data
                if not conn.connected:
                    failure = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    waiting -= 1
                    if failure:
                        conn.failed = f"connect: {os.strerror(failure)}"
                        selector.unregister(conn.sock)
                        continue
                    conn.connected = True
                    conn.started = time.perf_counter()
                    selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    if waiting == 0:
                        self.all_connected.set()
                    continue
                self._read(selector, conn)  # an answer before the body ended
            now = time.perf_counter()
            if now < next_tick:
                continue
            if now - next_tick > self.tick:
                self.late_ticks += 1
            next_tick = now + self.tick
            for conn in self.conns:
                if conn.connected and conn.failed is None and conn.answer is None:
                    self._send(conn, now)
        if waiting:
            self.all_connected.set()

    def _send(self, conn: _Slow, now: float) -> None:
        try:
            if conn.pending:
                n = conn.sock.send(conn.pending)
                conn.pending = conn.pending[n:]
                if conn.pending:
                    conn.blocked += 1
                    return
            due = min(int(self.rate * (now - conn.started)), self.length) - conn.sent
            while due > 0:
                n = conn.sock.send(self.buffer[:min(due, len(self.buffer))])
                conn.sent += n
                due -= n
        except BlockingIOError:
            conn.blocked += 1
        except OSError as exc:
            conn.failed = f"send: {type(exc).__name__}: {exc}"

    def _read(self, selector: selectors.BaseSelector, conn: _Slow) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except OSError as exc:
            conn.failed = f"recv: {type(exc).__name__}"
            selector.unregister(conn.sock)
            return
        conn.data += chunk
        parsed = None
        with contextlib.suppress(HttpError):
            parsed = parse_response(conn.data, closed=not chunk)
        if parsed is not None:
            conn.answer = parsed.status
        if parsed is not None or not chunk:
            if parsed is None:
                conn.failed = "closed by the server"
            selector.unregister(conn.sock)

    def pacing(self, elapsed_to: float) -> dict[str, Any]:
        """How well the client kept to ``rate`` on every connection."""
        kept = 0
        total = 0
        for conn in self.conns:
            total += conn.sent
            if conn.connected and conn.sent >= 0.9 * self.rate * (elapsed_to - conn.started):
                kept += 1
        return {
            "connected": sum(c.connected for c in self.conns),
            "kept_pace": kept,
            "with_blocked_sends": sum(1 for c in self.conns if c.blocked),
            "early_answers": dict(Counter(str(c.answer) for c in self.conns if c.answer)),
            "failed": dict(Counter(c.failed for c in self.conns if c.failed)),
            "bytes_sent": total,
            "late_ticks": self.late_ticks,
        }


def sweep(ep: Endpoint, paths: list[str], threads: int = 16,
          timeout: float = 5) -> tuple[list[int | None], float]:
    """HEAD every upload (``threads`` at a time, new connection each): offsets, seconds."""
    def one(path: str) -> int | None:
        try:
            return head_offset(ep, path, timeout=timeout)
        except (OSError, HttpError, ValueError, http.client.HTTPException):
            return None

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        offsets = list(pool.map(one, paths))
    return offsets, time.perf_counter() - t0


def process_snapshot(ep: Endpoint) -> list[dict[str, Any]]:
    return [{"pid": pid, "role": _roles(ep, [pid]).get(pid), "sockets": proc_socket_count(pid),
             "threads": proc_threads(pid), "rss_mib": to_mib(proc_memory(pid).get("VmRSS"))}
            for pid in ep.pids()]


def create_many(ep: Endpoint, count: int, length: int) -> list[str]:
    """``count`` uploads of ``length`` created on one keep-alive connection."""
    paths: list[str] = []
    conn = RawConnection(ep.host, ep.port)
    try:
        for _ in range(count):
            if not conn.open:
                conn = RawConnection(ep.host, ep.port)
            conn.send_request("POST", ep.base_path, {**TUS, "Upload-Length": str(length)})
            status, headers = conn.read_response()
            if status != 201:
                raise RuntimeError(f"POST answered {status} {headers}")
            paths.append(location_path(headers))
    finally:
        conn.close()
    return paths


def file_offsets(data_dir: Path, paths: list[str]) -> tuple[list[int | None], float]:
    """The size of each upload's data file: @tus/file-store keeps it as DIR/<id> (and its
    HEAD reports that size), resumable as DIR/uploads/<id>. Seconds the reading took."""
    t0 = time.perf_counter()
    offsets: list[int | None] = []
    for path in paths:
        data = data_file_of(data_dir, path)
        size = None
        if data is not None:
            with contextlib.suppress(OSError):
                size = data.stat().st_size
        offsets.append(size)
    return offsets, time.perf_counter() - t0


def progress(first: list[int | None], second: list[int | None]) -> dict[str, float]:
    pairs = list(zip(first, second, strict=True))
    known = [(a, b) for a, b in pairs if a is not None and b is not None]
    return {
        "progressing": sum(1 for a, b in known if b > a),
        "stalled": sum(1 for a, b in known if b <= a),
        "unknown": len(pairs) - len(known),
        "mean_growth_kib": round(sum(b - a for a, b in known) / max(1, len(known)) / KiB, 1),
    }


def run_slow(ctx: Context, ep: Endpoint) -> dict[str, Any]:
    """(f) for one server.

    @tus/server's HEAD takes the upload's lock, and its lock asks the running PATCH to
    stop (that is how it lets a client resume at once): a HEAD on a running upload ends
    it. So for @tus/server the progress is read from its data files (the offset its
    HEAD reports is that file's size) and the HEAD probes go to idle uploads; for
    resumable both use HEAD on the running uploads.
    """
    plan = ctx.plan
    count, hold = plan.slow_uploads, plan.slow_seconds
    heads_preempt = ep.name == "tus-node"
    length = max(GiB, int(plan.slow_rate * hold * 4))
    print(f"  {LABELS[ep.name]}: creating {count} uploads ...", flush=True)
    paths = create_many(ep, count, length)
    idle_paths = create_many(ep, 16, length)
    server = ep.server
    assert server is not None

    def offsets() -> tuple[list[int | None], float, list[int | None]]:
        on_disk, _ = file_offsets(server.data_dir, paths)
        if heads_preempt:
            return on_disk, 0.0, on_disk
        by_head, seconds = sweep(ep, paths, threads=64)
        return by_head, seconds, on_disk

    result: dict[str, Any] = {
        "uploads": count, "seconds": hold, "rate": plan.slow_rate,
        "progress_from": "data file sizes" if heads_preempt else "HEAD",
        "heads_on": "idle uploads" if heads_preempt else "the running uploads",
    }
    latencies: list[float] = []  # HEADs of running uploads (idle for @tus/server)
    idle_latencies: list[float] = []  # resumable: HEADs of idle uploads as well
    head_errors: Counter[str] = Counter()
    with RssSampler(ep.pids, 0.05) as sampler, \
            SlowUploads(ep, paths, length, plan.slow_rate, ctx.buffer) as slow:
        t0 = time.perf_counter()
        slow.all_connected.wait(10)
        result["connect_s"] = round(time.perf_counter() - t0, 3)
        time.sleep(1.0)
        first, first_s, first_disk = offsets()
        result["mid_hold"] = process_snapshot(ep)
        probes_end = time.perf_counter() + hold
        interval = hold / max(1, plan.heads)
        kinds = [("idle", idle_paths)] if heads_preempt else [("running", paths),
                                                             ("idle", idle_paths)]
        for n in range(plan.heads):
            started = time.perf_counter()
            if started > probes_end + 30:
                head_errors["not run: the probes ran 30 s late"] += plan.heads - n
                break
            for kind, targets in kinds:
                took = _probe(ep, targets[n % len(targets)], head_errors)
                (latencies if kind == kinds[0][0] else idle_latencies).append(took)
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
        time.sleep(max(0.0, probes_end - time.perf_counter()))
        second, second_s, second_disk = offsets()
        held = time.perf_counter() - t0
        result["end_of_hold"] = process_snapshot(ep)
        result["client"] = slow.pacing(time.perf_counter())
        result["client"]["engine_error"] = slow.error
    result.update({
        "held_s": round(held, 2),
        **progress(first, second),
        "on_disk": progress(first_disk, second_disk),
        "sweep_s": [round(first_s, 3), round(second_s, 3)],
        "heads": len(latencies),
        "head_errors": dict(head_errors),
        "head_p50_ms": to_ms(percentile(latencies, 50)),
        "head_p99_ms": to_ms(percentile(latencies, 99)),
        "head_max_ms": to_ms(max(latencies) if latencies else math.nan),
        "idle_head_p50_ms": to_ms(percentile(idle_latencies or latencies, 50)),
        "idle_head_p99_ms": to_ms(percentile(idle_latencies or latencies, 99)),
        "rss_peak_mib": {str(pid): to_mib(rss) for pid, rss in sampler.peak.items()},
        "roles": {str(pid): role for pid, role in _roles(ep, sampler.peak).items()},
    })
    # Let the server notice the closed connections, then clean up.
    time.sleep(1.0)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        failures = [e for e in pool.map(lambda p: delete(ep, p, attempts=10),
                                        paths + idle_paths) if e]
    result["delete_failures"] = len(failures)
    if failures:
        ctx.problem(f"(f) {LABELS[ep.name]}: {len(failures)} DELETEs failed: {failures[:3]}")
    return result


def run_open_loop_step(ctx: Context, ep: Endpoint) -> dict[str, Any]:
    """(g) for one server, one round: fresh uploads, the open-loop run, cleanup.

    Each round starts with the previous one's bytes on disk (``sync``): with
    thousands of uploads, the gigabytes a round leaves in the page cache, and
    the removal of its files, would otherwise be written back during the next
    server's round and stall it.
    """
    plan = ctx.plan
    os.sync()
    length = max(GiB, int(plan.rate_g * (plan.seconds_g + 60) * 2))
    paths = create_many(ep, plan.uploads_g, length)
    idle_paths = create_many(ep, 16, length)
    server = ep.server
    assert server is not None
    data_file = functools.partial(data_file_of, server.data_dir)
    with RssSampler(ep.pids, 0.1) as sampler:
        result = run_open_loop(OpenLoopPlan(
            host=ep.host, port=ep.port, paths=paths, idle_paths=idle_paths, length=length,
            rate=plan.rate_g, seconds=plan.seconds_g, running_hz=plan.running_heads_g,
            idle_hz=plan.idle_heads_g, data_files=data_file, server_pids=ep.pids))
    roles = _roles(ep, sampler.peak)
    result["rss_peak_mib"] = {f"{roles.get(pid, '?')} {pid}": to_mib(rss)
                              for pid, rss in sampler.peak.items()}
    time.sleep(1.0)  # let the server notice the closed connections
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        failures = [e for e in pool.map(lambda p: delete(ep, p, attempts=10),
                                        paths + idle_paths) if e]
    if failures:
        ctx.problem(f"(g) {LABELS[ep.name]}: {len(failures)} DELETEs failed: {failures[:3]}")
    return result


def summarize_open_loop(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the latencies and CPU over rounds; the worst progress and errors."""
    def med(get: Callable[[dict[str, Any]], Any]) -> float | None:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return median(values) if values else None

    peaks: dict[str, float] = {}
    for run in runs:
        for name, mib in run["rss_peak_mib"].items():
            role = name.rsplit(" ", 1)[0]
            peaks[role] = max(peaks.get(role, 0.0), mib or 0.0)
    return {
        "rounds": len(runs),
        "uploads": runs[0]["uploads"] if runs else None,
        "progressing_min": min((r["progressing"] for r in runs), default=None),
        "patch_errors_max": max((r["patch_errors"] for r in runs), default=None),
        "ended_early": [r["patches_ended_early"] for r in runs],
        "running_p50_ms": med(lambda r: r["heads"]["running"]["p50_ms"]),
        "running_p99_ms": med(lambda r: r["heads"]["running"]["p99_ms"]),
        "idle_p50_ms": med(lambda r: r["heads"]["idle"]["p50_ms"]),
        "idle_p99_ms": med(lambda r: r["heads"]["idle"]["p99_ms"]),
        "head_errors": [r["head_errors"] for r in runs],
        "server_cpu_cores": med(lambda r: r["server_cpu_cores"]),
        "client_cpu_cores": med(lambda r: r["client_cpu_cores"]),
        "client_lag_p99_ms": med(lambda r: r["client_lag_p99_ms"]),
        "client_lag_max_ms": max((r["client_lag_max_ms"] or 0 for r in runs), default=None),
        "received_mb_s": med(lambda r: r["received_mb_s"]),
        "rss_peak_mib": peaks,
    }


def _probe(ep: Endpoint, path: str, errors: Counter[str]) -> float:
    """Seconds one HEAD took on a new connection; inf when it failed."""
    started = time.perf_counter()
    try:
        status, _ = request(ep.host, ep.port, "HEAD", path, TUS, timeout=5)
    except (OSError, HttpError, http.client.HTTPException) as exc:
        errors[type(exc).__name__] += 1
        return math.inf
    if status != 200:
        errors[f"status {status}"] += 1
        return math.inf
    return time.perf_counter() - started


# --------------------------------------------------------------------------
# Warm-up and the alternation
# --------------------------------------------------------------------------


def warm_up(ctx: Context, ep: Endpoint, server: Server) -> int:
    """Small uploads until every worker (or the one Node process) served some, then tiny ones."""
    workers = server.worker_pids()
    start = {pid: proc_bytes_written(pid) or 0 for pid in workers}
    size = 2 * MiB
    count = 0
    for count in range(1, 61):  # noqa: B007 - the count is returned
        path = create(ep, size)
        timing = raw_patch(ep.host, ep.port, path, 0, size, ctx.buffer)
        delete(ep, path)
        if timing.status != 204:
            raise RuntimeError(f"warm-up PATCH answered {timing.status}\n{server.log()}")
        idle = [p for p in workers if (proc_bytes_written(p) or 0) - start[p] < size]
        if count >= 4 and not idle:
            break
    tiny = step_tiny(ctx, ep, ctx.plan.clients_d, 0.5, ctx.plan.body_d, 0)
    if tiny.error:
        ctx.problem(f"warm-up tiny creations on {LABELS[ep.name]}: {tiny.error}")
    return count


def alternate(
    ctx: Context, label: str, rounds: int, endpoints: list[Endpoint],
    step: Callable[[Endpoint, int], Measure], unit: str,
    limits: dict[str, Callable[[int], Measure]] | None = None,
) -> list[Measure]:
    """Rounds of: every endpoint in turn, then each limit (A B [L...] A B [L...] ...)."""
    measures: list[Measure] = []
    for index in range(1, rounds + 1):
        line = []
        for ep in endpoints:
            m = guarded(ctx, label, functools.partial(step, ep, index), ep.name, index)
            measures.append(m)
            line.append(f"{LABELS[ep.name]} {_fmt(m.value)}")
        for subject, limit in (limits or {}).items():
            m = guarded(ctx, label, functools.partial(limit, index), subject, index)
            measures.append(m)
            line.append(f"{LABELS[subject]} {_fmt(m.value)}")
        print(f"  {label} round {index}: " + " | ".join(line) + f" {unit}", flush=True)
    return measures


def client_limit(ctx: Context, label: str, step: Callable[[Endpoint, int], Measure],
                 repeats: int) -> dict[str, Any]:
    """The same client code against the HTTP sink: the median of ``repeats`` runs."""
    with HttpSink() as sink:
        ep = sink_endpoint(sink)
        runs = [guarded(ctx, f"{label} sink", functools.partial(step, ep, i), "sink", i)
                for i in range(1, repeats + 1)]
    values = [m.value for m in runs if m.value is not None]
    figure = median(values) if values else None
    print(f"  {label} client -> sink: {_fmt(figure)}", flush=True)
    return {"value": figure, "runs": [asdict(m) for m in runs]}


def summarize(measures: list[Measure]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for subject in ("tus-node", "resumable", "file", "sink"):
        mine = [m for m in measures if m.subject == subject]
        if not mine:
            continue
        good = [m.value for m in mine if m.value is not None and m.error is None]
        out[subject] = {"median": _num(median(good)) if good else None,
                        "good_rounds": len(good), "rounds": len(mine)}
    tus = out.get("tus-node", {}).get("median")
    ours = out.get("resumable", {}).get("median")
    out["ratio"] = _num(ours / tus) if tus and ours else None
    file_limit = out.get("file", {}).get("median")
    out["of_file_write"] = _num(ours / file_limit) if file_limit and ours else None
    limits = [v for v in (file_limit, out.get("sink", {}).get("median")) if v]
    out["of_limit"] = _num(ours / min(limits)) if limits and ours else None
    return out


def peak_by_pid(measures: list[Measure], subject: str) -> dict[int, tuple[str, int]]:
    """Max peak RSS over the rounds per pid: {pid: (role, bytes)}."""
    peaks: dict[int, tuple[str, int]] = {}
    for m in measures:
        if m.subject != subject:
            continue
        for pid, rss in m.rss_peak.items():
            if pid not in peaks or rss > peaks[pid][1]:
                peaks[pid] = (m.roles.get(pid, "?"), rss)
    return peaks


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


@dataclass
class Target:
    workload: str
    text: str
    value: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        return "N/A" if self.passed is None else "PASS" if self.passed else "MISS"


def _at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def evaluate(results: dict[str, Any], plan: argparse.Namespace) -> list[Target]:
    targets: list[Target] = []
    if "a" in results:
        s = results["a"]["summary"]
        targets.append(Target("a", "resumable >= 2x @tus/server (one PATCH)",
                              f"{_fmt(s['ratio'], '.2f')}x", _at_least(s["ratio"], 2)))
        pct = None if s["of_limit"] is None else 100 * s["of_limit"]
        targets.append(Target("a", "resumable >= 85 % of the lower limit (file write, "
                              "client -> sink)", f"{_fmt(pct, '.0f')} %", _at_least(pct, 85)))
    if "b" in results:
        s = results["b"]["summary"]
        targets.append(Target("b", f"resumable >= 1.2x @tus/server ({format_size(plan.patch_size)}"
                              " PATCHes)", f"{_fmt(s['ratio'], '.2f')}x",
                              _at_least(s["ratio"], 1.2)))
    if "c" in results:
        s = results["c"]["summary"]
        targets.append(Target("c", "resumable aggregate >= @tus/server",
                              f"{_fmt(s['ratio'], '.2f')}x", _at_least(s["ratio"], 1.0)))
    if "d" in results:
        s = results["d"]["summary"]
        targets.append(Target("d", "resumable req/s >= 1.5x @tus/server",
                              f"{_fmt(s['ratio'], '.2f')}x", _at_least(s["ratio"], 1.5)))
    if "e" in results:
        e = results["e"]
        for size_key in ("small", "large"):
            workers = e["resumable"][size_key]["workers_mib"]
            top = max(workers) if workers else None
            targets.append(Target(
                "e", f"every worker's peak RSS < 100 MiB ({e[size_key + '_label']})",
                f"max {_fmt(top)} MiB", None if top is None else top < 100))
        same = e["resumable"]["same"]
        targets.append(Target("e", "worker peak RSS the same for both sizes",
                              e["resumable"]["same_text"], same))
    for name, g in results.get("g", {}).items():
        if not name.startswith("resumable"):
            continue
        s = g["summary"]
        label = LABELS[name]
        targets.append(Target(
            "g", f"{label}: every upload progresses, no PATCH error",
            f"{s['progressing_min']}/{s['uploads']}, errors {s['patch_errors_max']}",
            s["progressing_min"] == s["uploads"] and s["patch_errors_max"] == 0))
        for kind in ("running", "idle"):
            p99 = s[f"{kind}_p99_ms"]
            targets.append(Target("g", f"{label}: HEAD p99 < 50 ms on {kind} uploads",
                                  f"{_fmt(p99)} ms", None if p99 is None else p99 < 50))
        top = max(s["rss_peak_mib"].values(), default=None)
        targets.append(Target("g", f"{label}: every process's peak RSS < 150 MiB",
                              f"max {_fmt(top)} MiB", None if top is None else top < 150))
    if "f" in results and "resumable" in results["f"]:
        f = results["f"]["resumable"]
        if "error" in f:
            targets.append(Target("f", "slow uploads", f["error"][:60], None))
        else:
            targets.append(Target(
                "f", f"all {f['uploads']} slow uploads progress at once (default settings)",
                f"{f['progressing']}/{f['uploads']}", f["progressing"] == f["uploads"]))
            p99 = f["head_p99_ms"]
            targets.append(Target("f", "HEAD p99 < 100 ms during the slow uploads (HEAD of "
                                  "the running uploads)", f"{_fmt(p99)} ms",
                                  None if p99 is None else p99 < 100))
            idle = f["idle_head_p99_ms"]
            targets.append(Target("f", "  the same, HEAD of idle uploads (as for @tus/server)",
                                  f"{_fmt(idle)} ms", None if idle is None else idle < 100))
    return targets


def print_report(results: dict[str, Any], document: dict[str, Any],
                 targets: list[Target]) -> None:
    plan = document["config"]
    print()
    versions = document["versions"]
    print(f"@tus/server {versions.get('@tus/server')} + @tus/file-store "
          f"{versions.get('@tus/file-store')} on Node {versions.get('node')} (1 process) vs "
          f"resumable {document['host'].get('resumable')} (gunicorn "
          f"{document['host'].get('gunicorn')}, {Settings.workers} workers x "
          f"{Settings.threads} threads, embedded registry); rounds {plan['rounds']}, "
          f"order per round: @tus/server, resumable[, file write, client->sink]")
    if plan["rounds"] < 3:
        print("NOTE: fewer than 3 rounds: a smoke test, not the comparison the issue asks for")
    print()
    header = (f"{'workload':<34} {'@tus/server':>11} {'resumable':>10} {'ratio':>6} "
              f"{'file write':>10} {'% file':>6} {'client->sink':>12} {'srv/sink':>8}")
    print(header)
    print("-" * len(header))
    rows = {
        "a": f"(a) {format_size(plan['size_a'])} in one PATCH, MB/s",
        "b": f"(b) {format_size(plan['size_a'])} in {format_size(plan['patch_size'])} "
             "PATCHes, MB/s",
        "c": f"(c) {plan['uploads_c']} x {format_size(plan['size_c'])} at once, MB/s",
        "d": f"(d) {format_size(plan['body_d'])} creations x{plan['clients_d']}, req/s",
    }
    file_limit = results.get("a", {}).get("summary", {}).get("file", {}).get("median")
    for key, title in rows.items():
        if key not in results:
            continue
        s = results[key]["summary"]
        tus = s.get("tus-node", {}).get("median")
        ours = s.get("resumable", {}).get("median")
        sink = results[key].get("client", {}).get("value")
        best = max((v for v in (tus, ours) if v is not None), default=None)
        limit = file_limit if key in "abc" else None
        print(f"{title:<34} {_fmt(tus):>11} {_fmt(ours):>10} {_fmt(s['ratio'], '.2f'):>6} "
              f"{_fmt(limit):>10} "
              f"{_fmt(100 * ours / limit if ours and limit else None, '.0f'):>6} "
              f"{_fmt(sink):>12} "
              f"{_fmt(100 * best / sink if best and sink else None, '.0f'):>7}%")
    if "a" in results:
        s = results["a"]["summary"]
        print(f"    (a) resumable at {_fmt(100 * s['of_limit'] if s['of_limit'] else None, '.0f')}"
              " % of the lower limit (file write, client -> sink; medians of the rounds)")
    if "d" in results:
        for name in SUBJECTS:
            runs = [m for m in results["d"]["measures"] if m["subject"] == name]
            p99 = median([m["extra"]["p99_ms"] for m in runs if m["extra"].get("p99_ms")])
            p50 = median([m["extra"]["p50_ms"] for m in runs if m["extra"].get("p50_ms")])
            print(f"    (d) {LABELS[name]}: latency p50 {_fmt(p50, '.2f')} ms, "
                  f"p99 {_fmt(p99, '.2f')} ms (median over rounds)")
    if "e" in results:
        e = results["e"]
        print()
        print(f"(e) peak RSS, MiB (max over rounds), {e['small_label']} / {e['large_label']}:")
        for name in SUBJECTS:
            for size_key in ("small", "large"):
                procs = e[name][size_key]["processes"]
                text = ", ".join(f"{p['role']} {_fmt(p['peak_mib'])}" for p in procs) or "-"
                print(f"    {LABELS[name]:<12} {e[size_key + '_label']:>7}: {text}")
            large = e[name]["large"]
            growth = e[name]["growth_during_patch_mib"]
            print(f"    {'':<12} rise during the PATCH {_fmt(growth['small'])} / "
                  f"{_fmt(growth['large'])} MiB; {e['large_label']} MB/s "
                  f"{_fmt(large['mb_s'])} (info)")
    if "f" in results:
        print()
        print(f"(f) {plan['slow_uploads']} slow uploads at {format_size(plan['slow_rate'])}/s "
              f"for {plan['slow_seconds']:.0f} s:")
        for name in SUBJECTS:
            f = results["f"].get(name)
            if f is None:
                continue
            if "error" in f:
                print(f"    {LABELS[name]:<12} failed: {f['error']}")
                continue
            client = f["client"]
            spread = ", ".join(f"{p['role']} {p['sockets']} sockets/{p['threads']} threads"
                               for p in f["mid_hold"])
            peaks = ", ".join(f"{f['roles'].get(pid, '?')} {mib}"
                              for pid, mib in f["rss_peak_mib"].items())
            head_errors = f" errors {f['head_errors']}" if f["head_errors"] else ""
            print(f"    {LABELS[name]:<12} progressing {f['progressing']}/{f['uploads']} "
                  f"(by {f['progress_from']}; stalled {f['stalled']}, unknown "
                  f"{f['unknown']}; on disk {f['on_disk']['progressing']}), held "
                  f"{f['held_s']:.0f} s")
            print(f"    {'':<12} HEAD ({f['heads_on']}) p50 {_fmt(f['head_p50_ms'])} ms "
                  f"p99 {_fmt(f['head_p99_ms'])} ms max {_fmt(f['head_max_ms'])} ms "
                  f"over {f['heads']}; idle uploads p50 {_fmt(f['idle_head_p50_ms'])} ms "
                  f"p99 {_fmt(f['idle_head_p99_ms'])} ms{head_errors}")
            print(f"    {'':<12} client kept pace on {client['kept_pace']}/{f['uploads']} "
                  f"(blocked sends on {client['with_blocked_sends']}); peak RSS MiB: {peaks}")
            print(f"    {'':<12} mid-hold: {spread}")
    if "g" in results:
        print()
        print(f"(g) {plan['uploads_g']} slow uploads at {format_size(plan['rate_g'])}/s, "
              f"open-loop HEADs {plan['running_heads_g']:g}/s on running + "
              f"{plan['idle_heads_g']:g}/s on idle uploads, {plan['seconds_g']:g} s "
              "(medians over rounds; progress and errors: the worst round):")
        for name, g in results["g"].items():
            s = g["summary"]
            peaks = ", ".join(f"{role} {_fmt(mib)}" for role, mib in s["rss_peak_mib"].items())
            print(f"    {LABELS[name]:<18} progressing {s['progressing_min']}/{s['uploads']}, "
                  f"PATCHes ended early {s['ended_early']}, received "
                  f"{_fmt(s['received_mb_s'])} MB/s")
            print(f"    {'':<18} HEAD running p50 {_fmt(s['running_p50_ms'])} p99 "
                  f"{_fmt(s['running_p99_ms'])} ms; idle p50 {_fmt(s['idle_p50_ms'])} p99 "
                  f"{_fmt(s['idle_p99_ms'])} ms; HEAD errors {s['head_errors']}")
            print(f"    {'':<18} server CPU {_fmt(s['server_cpu_cores'], '.2f')} cores; client "
                  f"CPU {_fmt(s['client_cpu_cores'], '.2f')} cores, loop lag p99 "
                  f"{_fmt(s['client_lag_p99_ms'])} ms max {_fmt(s['client_lag_max_ms'])} ms")
            print(f"    {'':<18} peak RSS MiB: {peaks}")
    client_a = results.get("a", {}).get("client", {}).get("value")
    if client_a is not None:
        print()
        print(f"client -> loopback TCP sink, {format_size(plan['size_a'])}: "
              f"{_fmt(client_a)} MB/s (median of the rounds)")
    print()
    print("Targets:")
    for t in targets:
        print(f"  {t.verdict:<4} ({t.workload}) {t.text}: {t.value}")
    checks = []
    for key in "abcd":
        if key not in results:
            continue
        s = results[key]["summary"]
        sink = results[key].get("client", {}).get("value")
        best = max((s.get(n, {}).get("median") or 0 for n in SUBJECTS), default=0)
        if sink and best:
            share = best / sink
            checks.append(f"  {'OK' if share < CLIENT_OK else 'CHECK':<5} ({key}) fastest server "
                          f"at {100 * share:.0f} % of the client's figure against the sink")
    if checks:
        print("Client headroom (the client must not be the bottleneck):")
        print("\n".join(checks))
    problems = document["problems"]
    if problems:
        print()
        print(f"Problems ({len(problems)}):")
        for text in problems[:40]:
            print(f"  {text}")


def measures_json(measures: list[Measure]) -> list[dict[str, Any]]:
    out = []
    for m in measures:
        data = asdict(m)
        data["value"] = _num(m.value)
        data["seconds"] = _num(m.seconds)
        data["rss_peak"] = {str(pid): rss for pid, rss in m.rss_peak.items()}
        data["roles"] = {str(pid): role for pid, role in m.roles.items()}
        out.append(data)
    return out


def memory_summary(small: list[Measure], large: list[Measure], name: str) -> dict[str, Any]:
    def side(measures: list[Measure]) -> dict[str, Any]:
        peaks = peak_by_pid(measures, name)
        ordered = sorted(peaks.items(), key=lambda kv: ({"master": 0, "worker": 1}.get(
            kv[1][0], 2), kv[0]))
        good = [m.value for m in measures if m.subject == name and m.value is not None]
        return {
            "processes": [{"pid": pid, "role": role, "peak_mib": to_mib(rss)}
                          for pid, (role, rss) in ordered],
            "workers_mib": [to_mib(rss) for _, (role, rss) in ordered
                            if role in ("worker", "node")],
            "mb_s": _num(median(good)) if good else None,
        }

    out: dict[str, Any] = {"small": side(small), "large": side(large)}
    little = max(out["small"]["workers_mib"], default=None)
    big = max(out["large"]["workers_mib"], default=None)
    out["growth_during_patch_mib"] = {
        "small": _growth(small, name), "large": _growth(large, name)}
    if little is None or big is None:
        out["same"] = None
        out["same_text"] = "no worker figures"
    else:
        allowed = max(8.0, 0.1 * little)
        out["same"] = big - little <= allowed
        out["same_text"] = (f"highest worker peak {little:.1f} -> {big:.1f} MiB "
                            f"({big - little:+.1f}, allowed +{allowed:.1f})")
    return out


def _growth(measures: list[Measure], name: str) -> float | None:
    """The most any worker's RSS rose above its level before the PATCH (max over rounds)."""
    rises = [
        peak - int(m.extra["rss_before"].get(str(pid), peak))
        for m in measures if m.subject == name and "rss_before" in m.extra
        for pid, peak in m.rss_peak.items() if m.roles.get(pid) in ("worker", "node")
    ]
    return to_mib(max(rises)) if rises else None


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="resumable vs @tus/server: throughput, requests/s, memory, slow uploads; "
                    "in alternation, with the machine's limits. See the module docstring.",
    )
    size = parse_size
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, small sizes, short holds (flags still win)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds per workload, median reported (default {FULL['rounds']}; "
                             "at least 3 for a real comparison)")
    parser.add_argument("--workloads", default=WORKLOADS,
                        help="which workloads, e.g. a,b,f (default all: a,b,c,d,e,f,g)")
    parser.add_argument("--size-a", type=size, default=None,
                        help="(a)/(b) upload size (default 1GiB; --quick 64MiB)")
    parser.add_argument("--size-e", type=size, default=None,
                        help="(e) the larger single PATCH (default 4GiB; --quick 256MiB)")
    parser.add_argument("--rounds-e", type=int, default=None,
                        help="(e) rounds of the larger PATCH (default 2)")
    parser.add_argument("--patch-size", type=size, default=None,
                        help="(b) bytes per PATCH (default 5MiB)")
    parser.add_argument("--uploads-c", type=int, default=None,
                        help="(c) concurrent uploads (default 16)")
    parser.add_argument("--size-c", type=size, default=None,
                        help="(c) size of each (default 64MiB; --quick 4MiB)")
    parser.add_argument("--clients-d", type=int, default=None,
                        help="(d) concurrent keep-alive clients (default 16)")
    parser.add_argument("--seconds-d", type=float, default=None,
                        help="(d) seconds per measurement (default 5; --quick 2)")
    parser.add_argument("--body-d", type=size, default=None,
                        help="(d) body of each creation (default 1KiB)")
    parser.add_argument("--slow-uploads", type=int, default=None,
                        help="(f) uploads held at once (default 500)")
    parser.add_argument("--slow-rate", type=size, default=None,
                        help="(f) bytes per second each (default 64KiB)")
    parser.add_argument("--slow-seconds", type=float, default=None,
                        help="(f) seconds held (default 20; --quick 8)")
    parser.add_argument("--heads", type=int, default=None,
                        help="(f) HEAD latency probes (default 200; --quick 50)")
    parser.add_argument("--uploads-g", type=int, default=None,
                        help="(g) slow uploads held at once (default 500)")
    parser.add_argument("--rate-g", type=size, default=None,
                        help="(g) bytes per second each (default 64KiB)")
    parser.add_argument("--seconds-g", type=float, default=None,
                        help="(g) seconds of open-loop HEADs (default 20; --quick 8)")
    parser.add_argument("--running-heads-g", type=float, default=None,
                        help="(g) HEADs per second on running uploads (default 50)")
    parser.add_argument("--idle-heads-g", type=float, default=None,
                        help="(g) HEADs per second on idle uploads (default 10)")
    parser.add_argument("--rounds-g", type=int, default=None,
                        help="(g) rounds (default 3; --quick 1)")
    parser.add_argument("--prime", action=argparse.BooleanOptionalAction, default=True,
                        help="write and remove an untimed file of the same size before each "
                             "timed bulk step (default on)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="make the temporary directory (both servers' data) in here "
                             "(default bench-results/work: the repository's file system, "
                             "as a deployment's data dir would be; a system temp dir may "
                             "be tmpfs, or slow at creating files)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="write the figures here (default bench-results/compare.json)")
    return parser


def resolve_plan(args: argparse.Namespace) -> argparse.Namespace:
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    letters = [w.strip().lower() for w in args.workloads.replace(",", " ").split()]
    letters = [c for w in letters for c in w]
    unknown = [c for c in letters if c not in WORKLOADS]
    if unknown or not letters:
        raise ValueError(f"--workloads: unknown {unknown}; use letters of {WORKLOADS}")
    args.workloads = "".join(c for c in WORKLOADS if c in letters)
    if min(args.rounds, args.rounds_e, args.uploads_c, args.clients_d, args.slow_uploads,
           args.rounds_g, args.uploads_g) < 1:
        raise ValueError("rounds, uploads, clients must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        plan = resolve_plan(build_parser().parse_args(argv))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    nofile = raise_nofile_limit(65536)
    started = now_iso()
    host = host_info()
    print(f"{started}  cpus {host['cpu_count']}  memory "
          f"{(host['mem_total_bytes'] or 0) / GiB:.1f} GiB  load {host['load_average']}  "
          f"RLIMIT_NOFILE {nofile[0]}  workloads {','.join(plan.workloads)}  "
          f"rounds {plan.rounds}", flush=True)
    if plan.slow_uploads + 64 > nofile[0] and "f" in plan.workloads:
        print(f"! RLIMIT_NOFILE {nofile[0]} is low for {plan.slow_uploads} slow uploads")
    versions = ensure_node_modules()
    print(f"@tus/server {versions['@tus/server']}, @tus/file-store "
          f"{versions['@tus/file-store']}, node {versions['node']}", flush=True)

    buffer = fill_buffer(4 * MiB)
    if plan.work_dir is not None:
        Path(plan.work_dir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="resumable-compare-", dir=plan.work_dir))
    scratch = workdir / "scratch"
    scratch.mkdir()
    ctx = Context(plan, buffer, scratch)
    logs = {name: plan.json.with_name(f"{plan.json.stem}.{name}.log")
            for name in (*SUBJECTS, "resumable-redis")}
    redis: RedisServer | None = None
    servers: dict[str, Any] = {}
    results: dict[str, Any] = {}
    trouble: dict[str, list[str]] = {}
    worker_pids: dict[str, list[list[int]]] = {name: [] for name in SUBJECTS}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(plan).items()}
    try:
        tus = TusNodeProcess(workdir / "tus-node", workdir / "tus-node.log").start()
        ours = ServerProcess(workdir / "resumable", workdir / "resumable.log",
                             workers=Settings.workers).start()
        servers = {"tus-node": tus, "resumable": ours}
        config["commands"] = {"tus-node": tus.command(), "resumable": ours.command()}
        config["data_dirs"] = {"tus-node": str(tus.data_dir), "resumable": str(ours.data_dir)}
        config["free_bytes_at_start"] = shutil.disk_usage(workdir).free
        config["rlimit_nofile"] = list(nofile)
        endpoints = [endpoint_of("tus-node", tus), endpoint_of("resumable", ours)]
        if "g" in plan.workloads and shutil.which("redis-server"):
            # (g) also runs against the Redis registry, with a private redis-server.
            redis = RedisServer(workdir / "redis").start()
            with_redis = ServerProcess(workdir / "resumable-redis",
                                       workdir / "resumable-redis.log",
                                       workers=Settings.workers, redis_url=redis.url).start()
            servers["resumable-redis"] = with_redis
            ctx.extra_endpoints.append(endpoint_of("resumable-redis", with_redis))
        print(f"servers: @tus/server pid {tus.all_pids()} port {tus.port}; resumable master "
              f"{ours.master_pid} workers {ours.worker_pids()} port {ours.port}; "
              f"data in {workdir}", flush=True)
        for ep in endpoints:
            assert ep.server is not None
            warm_up(ctx, ep, ep.server)
        worker_pids["resumable"].append(ours.worker_pids())
        run_workloads(ctx, plan, endpoints, results)
        worker_pids["resumable"].append(ours.worker_pids())
    except Exception as exc:  # noqa: BLE001 - report what was measured so far
        ctx.problem(f"run aborted: {type(exc).__name__}: {exc}")
    finally:
        for name, server in servers.items():
            alive = server.process is not None and server.process.poll() is None
            if not alive:
                ctx.problem(f"{LABELS[name]} had exited before the end of the run")
            server.stop()
            text = server.log()
            trouble[name] = (log_trouble(text) if name.startswith("resumable")
                             else node_trouble(text))
            with contextlib.suppress(OSError):
                logs[name].parent.mkdir(parents=True, exist_ok=True)
                logs[name].write_text(text)
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    pids = worker_pids["resumable"]
    if len(pids) == 2 and sorted(pids[0]) != sorted(pids[1]):
        ctx.problem(f"resumable worker pids changed during the run: {pids[0]} -> {pids[1]}")
    for name, lines in trouble.items():
        if lines:
            ctx.problem(f"{LABELS[name]} log: {len(lines)} line(s) worth a look, e.g. "
                        f"{lines[:3]}")
    targets = evaluate(results, plan)
    document = {
        "benchmark": "compare",
        "date": started,
        "finished": now_iso(),
        "host": host,
        "versions": versions,
        "config": config,
        "results": results,
        "targets": [{**asdict(t), "verdict": t.verdict} for t in targets],
        "problems": ctx.problems,
        "server_logs": {name: {"path": str(logs[name]), "trouble": trouble.get(name, [])}
                        for name in servers},
    }
    print_report(results, document, targets)
    plan.json.parent.mkdir(parents=True, exist_ok=True)
    plan.json.write_text(json.dumps(_json_safe(document), indent=2) + "\n")
    print(f"\nfigures written to {plan.json}")
    return 1 if ctx.problems else 0


def _json_safe(value: Any) -> Any:
    """inf/nan are not JSON: write them as strings."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def run_workloads(ctx: Context, plan: argparse.Namespace, endpoints: list[Endpoint],
                  results: dict[str, Any]) -> None:
    size_a = plan.size_a
    needed = max(size_a, plan.size_e if "e" in plan.workloads else 0,
                 plan.uploads_c * plan.size_c) * 2 + HEADROOM
    free = shutil.disk_usage(ctx.scratch_dir).free
    if free < needed:
        raise RuntimeError(f"only {free / GiB:.1f} GiB free, the sizes need {needed / GiB:.1f}")
    a_measures: list[Measure] = []
    if "a" in plan.workloads:
        print(f"(a) {format_size(size_a)} in one PATCH", flush=True)
        a_measures = alternate(
            ctx, "(a)", plan.rounds, endpoints,
            lambda ep, i: step_one_patch(ctx, ep, size_a, i), "MB/s",
            limits={"file": lambda i: step_file_write(ctx, size_a, i),
                    "sink": lambda i: step_sink(ctx, size_a, i)},
        )
        a_summary = summarize(a_measures)
        results["a"] = {"client": {"value": a_summary.get("sink", {}).get("median")},
                        "summary": a_summary, "measures": measures_json(a_measures)}
    repeats = min(3, plan.rounds)
    if "b" in plan.workloads:
        print(f"(b) {format_size(size_a)} in {format_size(plan.patch_size)} PATCHes", flush=True)

        def b_step(ep: Endpoint, i: int) -> Measure:
            return step_patches(ctx, ep, size_a, plan.patch_size, i)

        client = client_limit(ctx, "(b)", b_step, repeats)
        measures = alternate(ctx, "(b)", plan.rounds, endpoints, b_step, "MB/s")
        results["b"] = {"client": client, "summary": summarize(measures),
                        "measures": measures_json(measures)}
    if "c" in plan.workloads:
        print(f"(c) {plan.uploads_c} x {format_size(plan.size_c)} at once", flush=True)

        def c_step(ep: Endpoint, i: int) -> Measure:
            return step_concurrent(ctx, ep, plan.uploads_c, plan.size_c, i)

        client = client_limit(ctx, "(c)", c_step, repeats)
        measures = alternate(ctx, "(c)", plan.rounds, endpoints, c_step, "MB/s")
        results["c"] = {"client": client, "summary": summarize(measures),
                        "measures": measures_json(measures)}
    if "d" in plan.workloads:
        print(f"(d) {format_size(plan.body_d)} creation-with-upload, {plan.clients_d} keep-alive "
              f"clients, {plan.seconds_d:g} s", flush=True)

        def d_step(ep: Endpoint, i: int) -> Measure:
            return step_tiny(ctx, ep, plan.clients_d, plan.seconds_d, plan.body_d, i)

        client = client_limit(ctx, "(d)", d_step, repeats)
        measures = alternate(ctx, "(d)", plan.rounds, endpoints, d_step, "req/s")
        results["d"] = {"client": client, "summary": summarize(measures),
                        "measures": measures_json(measures)}
    if "e" in plan.workloads:
        size_e = plan.size_e
        if not a_measures:
            print(f"(e) {format_size(size_a)} in one PATCH (for its RSS)", flush=True)
            a_measures = alternate(ctx, "(e)", plan.rounds_e, endpoints,
                                   lambda ep, i: step_one_patch(ctx, ep, size_a, i), "MB/s")
        print(f"(e) {format_size(size_e)} in one PATCH", flush=True)
        e_measures = alternate(ctx, "(e)", plan.rounds_e, endpoints,
                               lambda ep, i: step_one_patch(ctx, ep, size_e, i), "MB/s")
        results["e"] = {"small_label": format_size(size_a), "large_label": format_size(size_e),
                        **{name: memory_summary(a_measures, e_measures, name)
                           for name in SUBJECTS},
                        "measures": measures_json(e_measures)}
    if "f" in plan.workloads:
        print(f"(f) {plan.slow_uploads} slow uploads at {format_size(plan.slow_rate)}/s for "
              f"{plan.slow_seconds:g} s, {plan.heads} HEAD probes", flush=True)
        results["f"] = {}
        for ep in endpoints:
            try:
                f = run_slow(ctx, ep)
            except Exception as exc:  # noqa: BLE001 - recorded, the other server still runs
                f = {"error": f"{type(exc).__name__}: {exc}"}
                ctx.problem(f"(f) {LABELS[ep.name]}: {f['error']}")
            results["f"][ep.name] = f
            if "error" not in f:
                print(f"  (f) {LABELS[ep.name]}: progressing {f['progressing']}/{f['uploads']}, "
                      f"HEAD p50 {_fmt(f['head_p50_ms'])} ms p99 {_fmt(f['head_p99_ms'])} ms, "
                      f"held {f['held_s']:.0f} s", flush=True)
                if f["head_errors"] or f["unknown"]:
                    ctx.problem(f"(f) {LABELS[ep.name]}: HEAD probes failed {f['head_errors']}; "
                                f"{f['unknown']} uploads' offsets unknown (HEAD failed or "
                                "timed out)")
                if f["client"]["early_answers"] or f["client"]["failed"]:
                    ctx.problem(f"(f) {LABELS[ep.name]}: PATCHes answered early "
                                f"{f['client']['early_answers']} / failed "
                                f"{f['client']['failed']}")
    if "g" in plan.workloads:
        g_endpoints = [*endpoints, *ctx.extra_endpoints]
        print(f"(g) {plan.uploads_g} slow uploads at {format_size(plan.rate_g)}/s, open-loop "
              f"HEADs {plan.running_heads_g:g}/s running + {plan.idle_heads_g:g}/s idle for "
              f"{plan.seconds_g:g} s, {plan.rounds_g} rounds", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {ep.name: [] for ep in g_endpoints}
        for round_number in range(plan.rounds_g):
            for ep in g_endpoints:
                try:
                    run = run_open_loop_step(ctx, ep)
                except Exception as exc:  # noqa: BLE001 - recorded, the others still run
                    ctx.problem(f"(g) {LABELS[ep.name]}: {type(exc).__name__}: {exc}")
                    continue
                runs[ep.name].append(run)
                heads = run["heads"]
                print(f"  (g) round {round_number + 1} {LABELS[ep.name]}: progressing "
                      f"{run['progressing']}/{run['uploads']}, ended early "
                      f"{run['patches_ended_early']}, HEAD p99 running "
                      f"{_fmt(heads['running']['p99_ms'])} ms idle "
                      f"{_fmt(heads['idle']['p99_ms'])} ms, server "
                      f"{_fmt(run['server_cpu_cores'], '.2f')} cores, client "
                      f"{_fmt(run['client_cpu_cores'], '.2f')} cores (lag p99 "
                      f"{_fmt(run['client_lag_p99_ms'])} ms)", flush=True)
        results["g"] = {name: {"summary": summarize_open_loop(r), "runs": r}
                        for name, r in runs.items() if r}


if __name__ == "__main__":
    sys.exit(main())
