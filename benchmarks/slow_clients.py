"""Many slow uploads and open-loop HEADs against one server, from one asyncio loop.

What a busy deployment sees: hundreds of clients each uploading one file at
modem speed, while dashboards poll ``HEAD``. Each HEAD goes out at its
scheduled time on a fresh connection whether or not earlier ones were
answered (open loop), and its latency is counted from that scheduled time,
so a server that queues requests shows the queue; a closed-loop prober (one
HEAD after another) never sees it. The HEADs start once the server has
stored bytes of every upload (how long that took from the first connection
is reported as ``all_streaming_s``), so they measure a server that holds
every upload, not one still taking them in.

The uploads behave like tus clients: when a PATCH ends before its body did
(an error, or a server whose HEAD stops the running PATCH), the client asks
``HEAD`` for the offset and resumes with a new PATCH from there.

Figures: HEAD latency percentiles on running and on idle uploads, uploads
that progressed (by their data files, read twice), PATCHes ended early by
status, server CPU (cores, from /proc) and the client's own CPU and event
loop lag, so a slow client cannot pass for a slow server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import OFFSET_STREAM, percentile, proc_cpu_seconds, to_ms

TICK = 0.1
#: The most seconds to wait for the server to store bytes of every upload, and the
#: seconds after that before the measurement starts.
RAMP_LIMIT_SECONDS = 60.0
SETTLE_SECONDS = 1.0
HEAD_TIMEOUT = 10.0
#: More than this many seconds of data waiting in the client's buffer: the server is
#: not reading that upload, and the client stops adding to it.
BLOCKED_SECONDS = 1.0


@dataclass
class Plan:
    host: str
    port: int
    paths: Sequence[str]  # the uploads to stream, created beforehand with Upload-Length
    idle_paths: Sequence[str]  # uploads nobody writes, for idle HEADs
    length: int
    rate: int  # bytes per second per upload
    seconds: float  # how long the HEADs run once every upload streams
    running_hz: float  # HEADs per second on running uploads
    idle_hz: float  # ... and on idle ones
    data_files: Callable[[str], Path | None]  # an upload's data file (for progress)
    server_pids: Callable[[], list[int]]


@dataclass
class _Upload:
    path: str
    offset: int = 0  # where the current PATCH started
    sent: int = 0  # body bytes of the current PATCH handed to the transport
    started: float = 0.0
    writer: asyncio.StreamWriter | None = None
    blocked: int = 0
    ended: Counter = field(default_factory=Counter)  # PATCHes that ended early, by status
    resuming: bool = False


class OpenLoop:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.uploads = [_Upload(path) for path in plan.paths]
        self.chunk = memoryview(bytes(max(1, int(plan.rate * TICK)) * 4))
        self.lags: list[float] = []
        self.heads: dict[str, list[float]] = {"running": [], "idle": []}
        #: (scheduled time, latency, kind) of every HEAD: when the slow ones left.
        self.timeline: list[tuple[float, float, str]] = []
        self.head_errors: Counter = Counter()
        self.failures: Counter = Counter()
        self.stopping = False
        self.pace_until = math.inf

    # -- uploads ---------------------------------------------------------------

    async def _open_patch(self, upload: _Upload) -> None:
        plan = self.plan
        reader, writer = await asyncio.open_connection(plan.host, plan.port)
        writer.write(
            (
                f"PATCH {upload.path} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\n"
                f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {upload.offset}\r\n"
                f"Content-Type: {OFFSET_STREAM}\r\n"
                f"Content-Length: {plan.length - upload.offset}\r\n\r\n"
            ).encode()
        )
        upload.writer = writer
        upload.sent = 0
        upload.started = time.monotonic()
        asyncio.get_running_loop().create_task(self._watch(upload, reader, writer))

    async def _watch(
        self, upload: _Upload, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """An answer before the body ended: count it, then resume as a tus client does."""
        try:
            line = await reader.readline()
        except (OSError, asyncio.IncompleteReadError):
            line = b""
        if self.stopping or upload.writer is not writer:
            return
        status = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "closed"
        upload.ended[status] += 1
        upload.writer = None
        with contextlib.suppress(OSError):
            writer.close()
        upload.resuming = True
        try:
            offset = await self._head_offset(upload.path)
            if offset is not None and not self.stopping:
                upload.offset = offset
                await self._open_patch(upload)
        except OSError as error:
            self.failures[f"resume: {type(error).__name__}"] += 1
        finally:
            upload.resuming = False

    async def _pace(self) -> None:
        """Every tick, top every upload up to ``rate`` bytes per second since its start,
        until ``pace_until``."""
        plan = self.plan
        while time.monotonic() < self.pace_until:
            now = time.monotonic()
            for upload in self.uploads:
                writer = upload.writer
                if writer is None or writer.is_closing():
                    continue
                if writer.transport.get_write_buffer_size() > plan.rate * BLOCKED_SECONDS:
                    upload.blocked += 1
                    continue
                left = plan.length - upload.offset - upload.sent
                due = min(int(plan.rate * (now - upload.started)) - upload.sent, left)
                while due > 0:
                    piece = self.chunk[: min(due, len(self.chunk))]
                    writer.write(piece)
                    upload.sent += len(piece)
                    due -= len(piece)
            await asyncio.sleep(TICK)

    # -- HEADs ---------------------------------------------------------------------

    async def _head_offset(self, path: str) -> int | None:
        status, headers = await asyncio.wait_for(self._head(path), HEAD_TIMEOUT)
        value = headers.get("upload-offset")
        return int(value) if status == 200 and value is not None else None

    async def _head(self, path: str) -> tuple[int, dict[str, str]]:
        plan = self.plan
        reader, writer = await asyncio.open_connection(plan.host, plan.port)
        try:
            writer.write(
                f"HEAD {path} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\n"
                f"Tus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _probe(self, kind: str, path: str, scheduled: float) -> None:
        try:
            status, _ = await asyncio.wait_for(self._head(path), HEAD_TIMEOUT)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as error:
            self.head_errors[type(error).__name__] += 1
            self._record(kind, scheduled, math.inf)
            return
        if status != 200:
            self.head_errors[f"status {status}"] += 1
            self._record(kind, scheduled, math.inf)
            return
        self._record(kind, scheduled, time.monotonic() - scheduled)

    def _record(self, kind: str, scheduled: float, latency: float) -> None:
        self.heads[kind].append(latency)
        self.timeline.append((scheduled, latency, kind))

    async def _schedule_heads(self, kind: str, paths: Sequence[str], hz: float, until: float):
        """Open loop: the n-th HEAD leaves at start + n / hz, answered or not."""
        if hz <= 0 or not paths:
            return
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        probes = []
        n = 0
        while True:
            scheduled = start + n / hz
            if scheduled >= until:
                break
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            probes.append(loop.create_task(self._probe(kind, random.choice(paths), scheduled)))
            n += 1
        await asyncio.gather(*probes)

    async def _measure_lag(self, until: float) -> None:
        while time.monotonic() < until:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            self.lags.append(time.monotonic() - before - 0.01)

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        loop = asyncio.get_running_loop()
        connect_started = time.monotonic()
        for upload in self.uploads:
            try:
                await self._open_patch(upload)
            except OSError as error:
                self.failures[f"connect: {type(error).__name__}"] += 1
        connected_s = time.monotonic() - connect_started
        pacer = loop.create_task(self._pace())
        # The measurement starts once the server stores bytes of every upload (then
        # SETTLE_SECONDS more): a server still taking its connections in is ramping up.
        ramp_deadline = time.monotonic() + RAMP_LIMIT_SECONDS
        while time.monotonic() < ramp_deadline:
            await asyncio.sleep(0.5)
            if all(self._file_sizes()):
                break
        streaming_s = time.monotonic() - connect_started
        await asyncio.sleep(SETTLE_SECONDS)
        end = self.pace_until = time.monotonic() + plan.seconds
        lag = loop.create_task(self._measure_lag(end))

        first = self._file_sizes()
        cpu_server = self._server_cpu()
        cpu_client = time.process_time()
        started = time.monotonic()
        await asyncio.gather(
            self._schedule_heads("running", plan.paths, plan.running_hz, end),
            self._schedule_heads("idle", plan.idle_paths, plan.idle_hz, end),
        )
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        wall = time.monotonic() - started
        server_cpu = self._server_cpu() - cpu_server
        client_cpu = time.process_time() - cpu_client
        second = self._file_sizes()
        self.stopping = True
        await asyncio.gather(pacer, lag)
        for upload in self.uploads:
            if upload.writer is not None:
                upload.writer.close()

        pairs = list(zip(first, second, strict=True))
        grew = [b is not None and a is not None and b > a for a, b in pairs]
        ended: Counter = Counter()
        for upload in self.uploads:
            ended.update(upload.ended)
        sent = sum(upload.offset + upload.sent for upload in self.uploads)
        return {
            "uploads": len(self.uploads),
            "connect_s": round(connected_s, 2),
            # From the first connection until the server stored bytes of every upload.
            "all_streaming_s": round(streaming_s, 2),
            "measured_s": round(wall, 2),
            "progressing": sum(grew),
            "patches_ended_early": dict(ended),
            "patch_errors": sum(n for status, n in ended.items() if status[:1] in "45c"),
            "blocked_uploads": sum(1 for upload in self.uploads if upload.blocked),
            "failures": dict(self.failures),
            "heads": {
                kind: {
                    "sent": len(values),
                    "p50_ms": to_ms(percentile(values, 50)),
                    "p99_ms": to_ms(percentile(values, 99)),
                    "max_ms": to_ms(max(values) if values else math.nan),
                }
                for kind, values in self.heads.items()
            },
            "head_errors": dict(self.head_errors),
            # The ten slowest HEADs: seconds into the measurement, latency, which kind.
            "slowest_heads": [
                (round(at - started, 2), to_ms(latency), kind)
                for at, latency, kind in sorted(self.timeline, key=lambda t: -t[1])[:10]
            ],
            "server_cpu_cores": round(server_cpu / wall, 2) if wall else None,
            "client_cpu_cores": round(client_cpu / wall, 2) if wall else None,
            "client_lag_p99_ms": to_ms(percentile(self.lags, 99)),
            "client_lag_max_ms": to_ms(max(self.lags) if self.lags else math.nan),
            "received_mb_s": round(
                sum((b or 0) - (a or 0) for a, b in zip(first, second, strict=True)) / wall / 1e6, 2
            ),
            "client_sent_mb": round(sent / 1e6, 1),
        }

    def _file_sizes(self) -> list[int | None]:
        sizes: list[int | None] = []
        for path in self.plan.paths:
            data = self.plan.data_files(path)
            try:
                sizes.append(data.stat().st_size if data is not None else None)
            except OSError:
                sizes.append(None)
        return sizes

    def _server_cpu(self) -> float:
        return sum(proc_cpu_seconds(pid) or 0.0 for pid in self.plan.server_pids())


def run_open_loop(plan: Plan) -> dict[str, Any]:
    """Run the workload to its end in a fresh event loop; its figures."""
    return asyncio.run(OpenLoop(plan).run())
