"""Child processes: free ports, their children, stopping them.

Standard library only, so the benchmarks find ports and stop their servers
with the same code as the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """The children of ``pid``'s main thread (gunicorn's workers and helpers), from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return list(dict.fromkeys(int(child) for child in text.split()))  # seen listed twice


def command_line(pid: int) -> list[str]:
    """The argv of ``pid`` (empty once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process group ``process`` leads (started with a new session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def stop_group(process: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM the group, SIGKILL it if it is still there after ``grace`` seconds.

    A server's master and its workers form one group: a stop that reached only
    the master would leave workers holding the port and the test's files.
    """
    if process is None or process.poll() is not None:
        return
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        process.wait(10)
