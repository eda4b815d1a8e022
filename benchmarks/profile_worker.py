"""Where a worker's time goes: kernel against Python, and which Python frames.

    python benchmarks/profile_worker.py --workload a   # 1 GiB PATCHes for ~4 s
    python benchmarks/profile_worker.py --workload d   # 1 KiB creations, 16 clients

It starts ``resumable serve`` (embedded registry) with its data under
bench-results/work, drives it, and prints the workers' CPU split from
/proc/<pid>/stat (user = Python, system = kernel) and, when py-spy is
installed (``pip install py-spy``), the frames that most samples include.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

if __package__ in (None, ""):  # run as a file: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import child_pids, command_line, free_port, stop_group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TUS = {"Tus-Resumable": "1.0.0"}


def workers_of(master: int) -> list[int]:
    """The gunicorn workers: the master's children but the `resumable gc` collector."""
    return [pid for pid in child_pids(master) if "gc" not in command_line(pid)]


def cpu_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def drive_large(port: int, seconds: float) -> str:
    """Back-to-back 1 GiB PATCHes from one pre-filled buffer."""
    size, buffer = 1 << 30, memoryview(bytes(4 << 20))
    endpoint, done, started = f"http://127.0.0.1:{port}/files/", 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        created = requests.post(endpoint, headers={**TUS, "Upload-Length": str(size)})
        url = created.headers["Location"]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"PATCH {url.split(str(port), 1)[1]} HTTP/1.1\r\nHost: bench\r\n"
                "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                "Content-Type: application/offset+octet-stream\r\n"
                f"Content-Length: {size}\r\n\r\n".encode()
            )
            for start in range(0, size, len(buffer)):
                sock.sendall(buffer[: min(len(buffer), size - start)])
            sock.recv(4096)
        requests.delete(url, headers=TUS)
        done += 1
    wall = time.perf_counter() - started
    return f"{done} x 1 GiB in {wall:.2f} s = {done * size / wall / 1e6:.0f} MB/s"


def drive_small(port: int, seconds: float) -> str:
    """16 keep-alive clients posting 1 KiB creation-with-upload requests."""
    request = (
        b"POST /files/ HTTP/1.1\r\nHost: bench\r\nTus-Resumable: 1.0.0\r\n"
        b"Upload-Length: 1024\r\nContent-Type: application/offset+octet-stream\r\n"
        b"Content-Length: 1024\r\n\r\n"
    ) + b"x" * 1024
    counts: list[int] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        sent = 0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            while time.monotonic() < deadline:
                sock.sendall(request)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += sock.recv(4096)
                sent += 1
        counts.append(sent)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return f"{sum(counts) / seconds:.0f} req/s ({sum(counts)} requests)"


def summarise(raw_files: list[Path], top: int) -> None:
    included: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for path in raw_files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples = int(count)
            total += samples
            frames = stack.split(";")
            leaves[frames[-1]] += samples
            for name in {frame.split(" (")[0] for frame in frames}:
                included[name] += samples
    print(f"py-spy: {total} samples. Where they were taken (innermost frame):")
    for name, samples in leaves.most_common(top):
        print(f"  {100 * samples / total:5.1f} %  {name}")
    print("Share of samples that include each function:")
    for name, samples in included.most_common(top):
        print(f"  {100 * samples / total:5.1f} %  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("a", "d"), default="a")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    work = REPO / "bench-results" / "work"
    work.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "resumable", "serve", "--port", str(port), "--data-dir", str(data),
         "--workers", "1" if args.workload == "a" else "2", "--log-level", "warning"],
        start_new_session=True,
    )
    try:
        time.sleep(3)
        workers = workers_of(server.pid)
        # The virtualenv's bin directory is often not on PATH: look beside the interpreter too.
        beside = str(Path(sys.executable).parent)
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=beside)
        raws = [data.parent / f"{data.name}-{pid}.raw" for pid in workers]
        spies = [
            subprocess.Popen(
                [spy, "record", "-p", str(pid), "-r", "200", "-d", str(int(args.seconds)),
                 "-f", "raw", "-o", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for pid, raw in zip(workers, raws, strict=True)
        ] if spy else []
        before = [cpu_seconds(pid) for pid in workers]
        started = time.perf_counter()
        drive = drive_large if args.workload == "a" else drive_small
        figure = drive(port, args.seconds)
        wall = time.perf_counter() - started
        after = [cpu_seconds(pid) for pid in workers]
        user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
        print(f"({args.workload}) {figure}")
        print(f"workers' CPU over {wall:.1f} s: Python (user) {user:.2f} s, kernel (system) "
              f"{system:.2f} s")
        for process in spies:
            process.wait()
        if spies:
            summarise([raw for raw in raws if raw.exists()], args.top)
        else:
            print("py-spy is not installed: no frame profile")
    finally:
        stop_group(server)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
