"""Shared pieces of the benchmarks: processes, /proc readings, a fast raw HTTP client.

The benchmarks start ``python -m resumable serve`` (gunicorn) and, when asked, a
private ``redis-server`` themselves, and talk to the server with the standard
library only. Ports, a process's children, stopping a process group, the private
redis-server and the poll loop are the test suite's own (tests/support/
processes.py, redis_servers.py, waiting.py): one way to run those processes, in
the venv scripts/bootstrap makes (with the test extras).
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import importlib.metadata
import math
import multiprocessing
import os
import platform
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

from tests.support.processes import child_pids, command_line, free_port, stop_group
from tests.support.waiting import wait_until

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KiB,
    "ki": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "mi": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
    "gi": GiB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": TiB,
    "ti": TiB,
}


# --------------------------------------------------------------------------
# Sizes and figures
# --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``"256MiB"`` -> 268435456; decimal units (MB) are powers of 1000, binary (MiB) of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 64MiB, 4GiB, 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def format_size(size: int) -> str:
    """Exact binary label when there is one (``4GiB``), else bytes."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def mb_per_s(size: int, seconds: float) -> float:
    """Megabytes (10^6) per second."""
    return size / 1e6 / seconds if seconds > 0 else float("nan")


def mib_per_s(size: int, seconds: float) -> float:
    """Mebibytes (2^20) per second."""
    return size / MiB / seconds if seconds > 0 else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def to_ms(seconds: float) -> float | None:
    """Seconds as rounded milliseconds for a report; inf stays inf (never answered)."""
    if math.isnan(seconds):
        return None
    return math.inf if math.isinf(seconds) else round(1000 * seconds, 2)


def data_file_of(data_dir: Path, path: str) -> Path | None:
    """An upload's data file: @tus/file-store keeps it as DIR/<id>, resumable as
    DIR/uploads/<id>; None when neither exists."""
    upload_id = path.rsplit("/", 1)[-1]
    for candidate in (data_dir / upload_id, data_dir / "uploads" / upload_id):
        if candidate.exists():
            return candidate
    return None


def to_mib(size: int | None) -> float | None:
    return None if size is None else round(size / MiB, 1)


# --------------------------------------------------------------------------
# Host
# --------------------------------------------------------------------------


def meminfo_total() -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * KiB
    return None


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(path).read_text().strip())
    return None


def host_info() -> dict[str, Any]:
    try:
        gunicorn_version = importlib.metadata.version("gunicorn")
    except importlib.metadata.PackageNotFoundError:
        gunicorn_version = None
    try:
        resumable_version = importlib.metadata.version("resumable")
    except importlib.metadata.PackageNotFoundError:
        resumable_version = None
    return {
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "mem_total_bytes": meminfo_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "gunicorn": gunicorn_version,
        "resumable": resumable_version,
        "vm_dirty_ratio": _read_int("/proc/sys/vm/dirty_ratio"),
        "vm_dirty_background_ratio": _read_int("/proc/sys/vm/dirty_background_ratio"),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (lifetime peak RSS) of a process, in bytes; {} if it is gone."""
    result: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    name, value = line.split(b":", 1)
                    result[name.decode()] = int(value.split()[0]) * KiB
    except (OSError, ValueError):
        return {}
    return result


def _proc_number(path: str, key: bytes) -> int | None:
    """The first number on the ``key`` line of a /proc file; None if it is gone."""
    try:
        with open(path, "rb") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _vm_rss(pid: int) -> int | None:
    kib = _proc_number(f"/proc/{pid}/status", b"VmRSS:")
    return None if kib is None else kib * KiB


def proc_bytes_written(pid: int) -> int | None:
    """``wchar`` of /proc/<pid>/io: bytes the process passed to write calls so far."""
    return _proc_number(f"/proc/{pid}/io", b"wchar:")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process used so far (from /proc/<pid>/stat)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_after_name = text.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5); the list starts at field 3 (state).
    return (int(fields_after_name[11]) + int(fields_after_name[12])) / _CLOCK_TICKS


class Sampler:
    """Calls ``sample`` every ``interval`` seconds in a thread, from ``with`` to its end.

    It samples once more as the block ends, so a run shorter than the interval
    still has its figure.
    """

    def __init__(self, interval: float, name: str):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                break
        self.sample()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RssSampler(Sampler):
    """Samples VmRSS of some processes every ``interval`` seconds in a thread.

    ``pids()`` is called on every round so a worker that gunicorn replaced
    mid-run is still seen. Keeps the peak per pid and how many samples ran.
    """

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.01):
        super().__init__(interval, "rss-sampler")
        self.pids = pids
        self.peak: dict[int, int] = {}
        self.samples = 0

    def sample(self) -> None:
        for pid in self.pids():
            rss = _vm_rss(pid)
            if rss is not None and rss > self.peak.get(pid, -1):
                self.peak[pid] = rss
        self.samples += 1


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


class LaunchedServer:
    """What every server the benchmarks start has in common: readiness, log, stop.

    Subclasses are dataclasses with ``process``, ``host``, ``port``,
    ``base_path`` and ``log_path``; ``stop_grace`` is how long SIGTERM may take.
    """

    process: subprocess.Popen[bytes] | None
    host: str
    port: int
    base_path: str
    log_path: Path
    stop_grace = 15.0

    def ready(self) -> bool:
        """Alive and answering OPTIONS on its tus endpoint."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            status, _ = request(self.host, self.port, "OPTIONS", self.base_path, timeout=1)
        except OSError:
            return False
        return status in (200, 204)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_group(self.process, self.stop_grace)


@dataclass
class ServerProcess(LaunchedServer):
    """``python -m resumable serve`` (gunicorn master + workers) on a free port."""

    stop_grace = 40.0  # well over --shutdown-timeout (10 s by default)

    data_dir: Path
    log_path: Path
    workers: int = 2
    threads: int | None = None
    chunk_size: int | None = None
    redis_url: str | None = None
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    base_path: str = "/files/"
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "resumable",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
            "--base-path",
            self.base_path,
            "--log-level",
            "warning",
        ]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.chunk_size is not None:
            args += ["--chunk-size", str(self.chunk_size)]
        if self.redis_url:
            args += ["--redis-url", self.redis_url, "--redis-prefix", f"bench{self.port}:"]
        return args + self.extra_args

    @property
    def master_pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server is not started")
        return self.process.pid

    def start(self, timeout: float = 30) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, start_new_session=True
            )
        if not wait_until(self.ready, timeout, 0.1):
            self.stop()
            raise RuntimeError(f"server did not start; its log:\n{self.log()}")
        if not wait_until(lambda: len(self.worker_pids()) >= self.workers, 10):
            self.stop()
            raise RuntimeError(f"gunicorn did not start {self.workers} workers:\n{self.log()}")
        return self

    def role(self, pid: int) -> str:
        """``master``, ``worker`` (a forked gunicorn worker) or what another child runs."""
        if pid == self.master_pid:
            return "master"
        command = command_line(pid)
        if command == command_line(self.master_pid) or any("worker" in c for c in command):
            return "worker"
        if "resumable" in command:  # e.g. the `resumable gc` collector the master starts
            return " ".join(command[command.index("resumable") + 1 :])[:24] or "child"
        return " ".join(command)[:24] or "child"

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: children of the master that are its forks."""
        if self.process is None:
            return []
        return [pid for pid in child_pids(self.master_pid) if self.role(pid) == "worker"]

    def all_pids(self) -> list[int]:
        """The master and all its children (workers and any helper process)."""
        if self.process is None:
            return []
        return [self.master_pid, *child_pids(self.master_pid)]



LOG_TROUBLE = re.compile(
    r"Traceback|ERROR|CRITICAL|WORKER TIMEOUT|Worker \(pid:\d+\) (was sent|exited)|"
    r"Exception|Booting worker",
    re.IGNORECASE,
)


def log_trouble(text: str) -> list[str]:
    """Lines of a gunicorn log worth a look (errors, timeouts, worker restarts)."""
    return [line for line in text.splitlines() if LOG_TROUBLE.search(line)]


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str]]:
    """One small request on its own connection; the status and headers of the answer."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def fill_buffer(size: int) -> memoryview:
    """One pre-filled send buffer (random bytes: nothing downstream can shortcut it)."""
    return memoryview(bytearray(os.urandom(size)))


def send_repeated(sock: socket.socket, buffer: memoryview, size: int) -> None:
    """Send ``size`` bytes by repeating ``buffer``: no allocation per chunk."""
    whole, rest = divmod(size, len(buffer))
    sendall = sock.sendall
    for _ in range(whole):
        sendall(buffer)
    if rest:
        sendall(buffer[:rest])


class HttpError(Exception):
    pass


def read_response_head(sock: socket.socket, limit: int = 65536) -> tuple[int, dict[str, str]]:
    """Read an HTTP response's status line and headers (the benchmarks need no bodies)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise HttpError(f"connection closed before a full response head: {bytes(data)!r}")
        data += chunk
        if len(data) > limit:
            raise HttpError("response head is too large")
    return parse_head(bytes(data).split(b"\r\n\r\n", 1)[0])


@dataclass
class PatchTiming:
    status: int
    headers: dict[str, str]
    #: From the first header byte sent to the last response header byte read.
    wall_s: float
    #: From the first header byte sent to the return of the last sendall.
    sent_s: float
    #: CPU seconds the sending thread used (user + system).
    client_cpu_s: float
    #: The send failed (server answered early and closed); the error text.
    send_error: str | None = None


def raw_patch(
    host: str,
    port: int,
    path: str,
    offset: int,
    size: int,
    buffer: memoryview,
    timeout: float = 600,
) -> PatchTiming:
    """One PATCH with ``Content-Length: size`` whose body is ``buffer`` repeated."""
    head = (
        f"PATCH {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Tus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\n"
        f"Content-Type: {OFFSET_STREAM}\r\n"
        f"Content-Length: {size}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cpu0 = time.thread_time()
        t0 = time.perf_counter()
        send_error = None
        try:
            sock.sendall(head)
            send_repeated(sock, buffer, size)
        except OSError as error:
            send_error = f"{type(error).__name__}: {error}"
        t_sent = time.perf_counter()
        cpu1 = time.thread_time()
        try:
            status, headers = read_response_head(sock)
        except (OSError, HttpError) as error:
            if send_error is None:
                raise
            raise HttpError(f"send failed ({send_error}) and no answer: {error}") from None
        t_done = time.perf_counter()
    return PatchTiming(status, headers, t_done - t0, t_sent - t0, cpu1 - cpu0, send_error)


# --------------------------------------------------------------------------
# Client speed against a loopback sink
# --------------------------------------------------------------------------


def _sink_main(pipe: Connection, buffer_size: int) -> None:
    """Child process: accept connections, discard what comes, answer with the byte count."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        pipe.send(listener.getsockname()[1])
        buffer = memoryview(bytearray(buffer_size))
        while True:
            conn, _ = listener.accept()
            with conn:
                total = 0
                while True:
                    n = conn.recv_into(buffer)
                    if n == 0:
                        break
                    total += n
                if total == 0:
                    return  # an empty connection is the signal to quit
                conn.sendall(struct.pack("!Q", total))


@dataclass
class SinkResult:
    size: int
    seconds: list[float]
    client_cpu_s: list[float]

    @property
    def median_s(self) -> float:
        return median(self.seconds)


def measure_client_speed(buffer: memoryview, size: int, repeats: int = 3) -> SinkResult:
    """Time the raw client sending ``size`` bytes to a discarding process over loopback."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    sink = context.Process(target=_sink_main, args=(child_end, len(buffer)), daemon=True)
    sink.start()
    seconds: list[float] = []
    cpu: list[float] = []
    try:
        if not parent_end.poll(30):
            raise RuntimeError("loopback sink did not start")
        port = int(parent_end.recv())
        for _ in range(repeats):
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                cpu0 = time.thread_time()
                t0 = time.perf_counter()
                send_repeated(sock, buffer, size)
                sock.shutdown(socket.SHUT_WR)
                reply = b""
                while len(reply) < 8:
                    chunk = sock.recv(8 - len(reply))
                    if not chunk:
                        break
                    reply += chunk
                seconds.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - cpu0)
            if len(reply) != 8 or struct.unpack("!Q", reply)[0] != size:
                raise RuntimeError(f"loopback sink counted {reply!r}, expected {size}")
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # empty connection: the sink quits
    finally:
        sink.join(10)
        if sink.is_alive():
            sink.terminate()
            sink.join(5)
    return SinkResult(size, seconds, cpu)


# --------------------------------------------------------------------------
# Baseline: what the file system takes from one sequential writer
# --------------------------------------------------------------------------


@dataclass
class WriteTiming:
    #: open to close, writes and (with fsync) the fsync included.
    seconds: float
    #: Time spent in fsync alone (0 without).
    fsync_s: float


def baseline_write(directory: Path, size: int, buffer: memoryview, fsync: bool) -> WriteTiming:
    """Write ``size`` bytes to a new file in ``directory`` from ``buffer``; then remove it."""
    path = directory / f".baseline-{os.getpid()}-{time.monotonic_ns()}.tmp"
    whole, rest = divmod(size, len(buffer))
    fsync_s = 0.0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for _ in range(whole):
            _write_all(fd, buffer)
        if rest:
            _write_all(fd, buffer[:rest])
        if fsync:
            t_sync = time.perf_counter()
            os.fsync(fd)
            fsync_s = time.perf_counter() - t_sync
    finally:
        os.close(fd)
        elapsed = time.perf_counter() - t0
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return WriteTiming(elapsed, fsync_s)


def _write_all(fd: int, chunk: memoryview) -> None:
    written = os.write(fd, chunk)
    while written < len(chunk):
        written += os.write(fd, chunk[written:])


# --------------------------------------------------------------------------
# More figures and limits (benchmarks/compare.py)
# --------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) by linear interpolation; nan for no values.

    ``inf`` in ``values`` (a request that never answered) sorts last and shows
    up in the high percentiles as it should.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    if ordered[high] == float("inf"):
        return ordered[high] if rank > low else ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def raise_nofile_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit).

    Children started afterwards inherit it. Returns the (soft, hard) limits now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_socket_count(pid: int) -> int | None:
    """How many sockets a process holds open (its /proc/<pid>/fd entries that are sockets)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    count = 0
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
    return count


def proc_threads(pid: int) -> int | None:
    """The Threads: line of /proc/<pid>/status."""
    return _proc_number(f"/proc/{pid}/status", b"Threads:")


# --------------------------------------------------------------------------
# Keep-alive HTTP: responses parsed from a buffer, a raw persistent connection
# --------------------------------------------------------------------------


@dataclass
class ParsedResponse:
    status: int
    headers: dict[str, str]
    #: Bytes of the buffer this response took (head and body).
    end: int
    #: The server keeps the connection open after it.
    keep_alive: bool


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of a response head (without its blank line)."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _chunked_end(data: bytes | bytearray, pos: int) -> int | None:
    """Where a chunked body starting at ``pos`` ends (trailers included); None: incomplete."""
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        try:
            size = int(bytes(data[pos:line_end]).split(b";")[0].strip(), 16)
        except ValueError:
            raise HttpError(f"bad chunk size line {bytes(data[pos:line_end])!r}") from None
        pos = line_end + 2
        if size == 0:
            if data[pos : pos + 2] == b"\r\n":
                return pos + 2
            trailers_end = data.find(b"\r\n\r\n", pos)
            return None if trailers_end < 0 else trailers_end + 4
        pos += size + 2
        if pos > len(data):
            return None


def parse_response(
    data: bytes | bytearray, head_only: bool = False, closed: bool = False
) -> ParsedResponse | None:
    """The first complete response in ``data``, or None while more bytes are needed.

    Bodies (Content-Length or chunked) are skipped, not returned. ``head_only`` is
    for the answer to a HEAD; ``closed`` says the peer closed, which ends a body
    that has no length.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        if len(data) > 65536:
            raise HttpError("response head is too large")
        return None
    status, headers = parse_head(bytes(data[:head_end]))
    pos = head_end + 4
    if head_only or status in (204, 304) or 100 <= status < 200:
        end: int | None = pos
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        end = _chunked_end(data, pos)
    elif "content-length" in headers:
        end = pos + int(headers["content-length"])
        if end > len(data):
            end = None
    else:
        end = len(data) if closed else None
    if end is None:
        return None
    keep_alive = headers.get("connection", "").lower() != "close"
    return ParsedResponse(status, headers, end, keep_alive)


class RawConnection:
    """One persistent (keep-alive) HTTP/1.1 connection over a raw socket.

    Request bodies are sent by repeating one pre-filled buffer (:func:`send_repeated`);
    response bodies are read and dropped.
    """

    def __init__(self, host: str, port: int, timeout: float = 600):
        self.host = host
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._data = bytearray()
        self.open = True

    def send_request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body_size: int = 0,
        buffer: memoryview | None = None,
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body_size or method in ("POST", "PATCH", "PUT"):
            lines.append(f"Content-Length: {body_size}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body_size:
            if buffer is None:
                raise ValueError("a body needs a buffer")
            send_repeated(self.sock, buffer, body_size)

    def read_response(self, head_only: bool = False) -> tuple[int, dict[str, str]]:
        closed = False
        while True:
            parsed = parse_response(self._data, head_only, closed)
            if parsed is not None:
                break
            if closed:
                raise HttpError(f"connection closed mid-response: {bytes(self._data[:200])!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                closed = True
            self._data += chunk
        del self._data[: parsed.end]
        if not parsed.keep_alive or closed:
            self.close()
        return parsed.status, parsed.headers

    def close(self) -> None:
        if self.open:
            self.open = False
            with contextlib.suppress(OSError):
                self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# An HTTP sink: answers tus-like requests and discards their bodies
# --------------------------------------------------------------------------


class _SinkConnection:
    __slots__ = ("sock", "data", "body_left", "method", "close_after", "offset", "body")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.data = bytearray()
        self.body_left = 0
        self.method = ""
        self.close_after = False
        self.offset = 0
        self.body = 0


def _sink_answer(conn: _SinkConnection, port: int) -> bytes:
    end_offset = conn.offset + conn.body
    if conn.method == "POST":
        head = (
            f"HTTP/1.1 201 Created\r\nLocation: http://127.0.0.1:{port}/files/sink\r\n"
            f"Upload-Offset: {conn.body}\r\n"
        )
    elif conn.method == "PATCH":
        head = f"HTTP/1.1 204 No Content\r\nUpload-Offset: {end_offset}\r\n"
    elif conn.method == "HEAD":
        head = "HTTP/1.1 200 OK\r\nUpload-Offset: 0\r\n"
    else:
        head = "HTTP/1.1 204 No Content\r\n"
    head += "Tus-Resumable: 1.0.0\r\nContent-Length: 0\r\n"
    if conn.close_after:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("ascii")


def _sink_send(sock: socket.socket, data: bytes) -> None:
    sent = 0
    with contextlib.suppress(BlockingIOError):
        sent = sock.send(data)
    if sent < len(data):  # rare for a small answer: finish it blocking
        sock.setblocking(True)
        try:
            sock.sendall(data[sent:])
        finally:
            sock.setblocking(False)


def _http_sink_main(pipe: Connection) -> None:
    """Child process: a one-thread selectors HTTP server that only discards and answers."""
    import selectors

    selector = selectors.DefaultSelector()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    selector.register(listener, selectors.EVENT_READ, None)
    pipe.send(port)
    scratch = memoryview(bytearray(4 * MiB))

    def drop(conn: _SinkConnection) -> None:
        selector.unregister(conn.sock)
        conn.sock.close()

    def on_readable(conn: _SinkConnection) -> None:
        if conn.body_left:
            n = conn.sock.recv_into(scratch, min(conn.body_left, len(scratch)))
            if n == 0:
                drop(conn)
                return
            conn.body_left -= n
            conn.body += n
        else:
            chunk = conn.sock.recv(65536)
            if not chunk:
                drop(conn)
                return
            conn.data += chunk
        while not conn.body_left:
            if conn.method:  # a request is complete: answer it
                _sink_send(conn.sock, _sink_answer(conn, port))
                if conn.close_after:
                    drop(conn)
                    return
                conn.method = ""
            head_end = conn.data.find(b"\r\n\r\n")
            if head_end < 0:
                return
            request_line, *lines = bytes(conn.data[:head_end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            conn.method = request_line.split(" ", 1)[0]
            conn.close_after = headers.get("connection", "").lower() == "close"
            conn.offset = int(headers.get("upload-offset", "0") or 0)
            length = int(headers.get("content-length", "0") or 0)
            rest = len(conn.data) - head_end - 4
            taken = min(rest, length)
            del conn.data[: head_end + 4 + taken]
            conn.body = taken
            conn.body_left = length - taken

    parent = os.getppid()
    while True:
        for key, _ in selector.select(timeout=0.5):
            if key.data is None:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    selector.register(sock, selectors.EVENT_READ, _SinkConnection(sock))
            else:
                try:
                    on_readable(key.data)
                except OSError:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        drop(key.data)
        if pipe.poll() or os.getppid() != parent:
            return


class HttpSink:
    """A loopback HTTP server in its own process that discards every body.

    It answers POST with 201 (Location, Upload-Offset), PATCH with 204 and the
    new Upload-Offset, HEAD with 200, anything else with 204; it keeps
    connections alive unless the request says ``Connection: close``. Driving the
    benchmark's clients against it shows what the client (with this one-thread
    sink as the peer) can do at most. Use as a context manager; ``port`` is set
    once it runs.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(target=_http_sink_main, args=(child_end,), daemon=True)
        self.port = 0
        self.host = "127.0.0.1"

    def __enter__(self) -> HttpSink:
        self._process.start()
        if not self._pipe.poll(30):
            self._process.terminate()
            raise RuntimeError("HTTP sink did not start")
        self.port = int(self._pipe.recv())
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send("stop")
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
