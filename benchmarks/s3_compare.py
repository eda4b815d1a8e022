"""``resumable`` against @tus/server + @tus/s3-store on one S3 server, in alternation.

Run from the repository root with the project's virtualenv (Node >= 20.19 and npm on PATH)::

    python -m benchmarks.s3_compare                    # 3 rounds, 1 GiB and 16 x 64 MiB
    python -m benchmarks.s3_compare --rounds 1 --size 256MiB --uploads 4 --json /tmp/s3.json

Both servers store into one S3 API server, moto's (``python -m moto.server``,
started here as a subprocess on a free loopback port, each server with its own
bucket), so the figures compare the servers on the same S3, not S3 itself:
moto keeps objects in memory and is written in Python, so absolute MB/s are
moto's as much as the servers'.

@tus/server
    ``node benchmarks/tus-node/server.mjs`` with ``TUS_S3_BUCKET``: @tus/server
    with @tus/s3-store (versions pinned by benchmarks/tus-node/package-lock.json),
    its default part size (8 MiB), one Node process. @tus/s3-store buffers each
    part in a file of the OS temporary directory; ``TMPDIR`` points it at a
    directory of its own here, whose size is sampled as its spool.
resumable
    ``python -m resumable serve --s3-bucket … --s3-endpoint …`` with its defaults
    otherwise (2 gthread workers, embedded registry, 8 MiB parts); its spool is
    ``<data-dir>/spool``.

Workloads, each in ``--rounds`` rounds of @tus/server then resumable:

(s1) one PATCH of ``--size`` (1 GiB), ``Connection: close``, timed from its
     first byte to the answer; HEAD must report the whole size; DELETE.
(s2) ``--uploads`` (16) uploads of ``--upload-size`` (64 MiB), one PATCH each on
     its own connection, released at once; total bytes / time to the last answer.

Figures: MB/s (10^6 bytes/s) per round and the median; the peak VmRSS of each
process during the step (sampled every 10 ms; resumable: the largest worker);
the peak bytes in the server's spool (sampled every 10 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, stop_group
from tests.support.waiting import wait_until

from .common import (
    GiB,
    MiB,
    Sampler,
    ServerProcess,
    fill_buffer,
    format_size,
    host_info,
    median,
    now_iso,
    parse_size,
)
from .compare import (
    Context,
    Measure,
    TusNodeProcess,
    endpoint_of,
    ensure_node_modules,
    guarded,
    step_concurrent,
    step_one_patch,
)

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


@dataclass
class MotoProcess:
    """moto's S3 API server as a subprocess (its own process: it takes a core when busy)."""

    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=log, start_new_session=True,
            )
        if not wait_until(self._answers, 30, 0.1):
            self.stop()
            raise RuntimeError(f"moto did not start:\n{self.log_path.read_text()}")
        return self

    def _answers(self) -> bool:
        try:
            self.client().list_buckets()
        except Exception:  # noqa: BLE001 - not up yet
            return False
        return True

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        stop_group(self.process, 15)


class SpoolSampler(Sampler):
    """The peak bytes of the files under ``directory``, sampled in a thread."""

    def __init__(self, directory: Path, interval: float = 0.01):
        super().__init__(interval, "spool-sampler")
        self.directory = directory
        self.peak = 0

    def sample(self) -> None:
        total = 0
        for root, _dirs, files in os.walk(self.directory):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, name)).st_size
        self.peak = max(self.peak, total)


def peak_rss(measure: Measure, name: str) -> int | None:
    """The largest peak RSS of one process: a worker for resumable, the Node process."""
    wanted = "worker" if name == "resumable" else "node"
    values = [rss for pid, rss in measure.rss_peak.items() if measure.roles.get(pid) == wanted]
    return max(values) if values else None


def run(plan: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    for name, value in CREDENTIALS.items():
        os.environ.setdefault(name, value)
    versions = ensure_node_modules()
    moto = MotoProcess(workdir / "moto.log").start()
    servers: list[Any] = []
    try:
        node_tmp = workdir / "node-tmp"
        node_tmp.mkdir()
        node = TusNodeProcess(workdir / "node-data", workdir / "node.log", env={
            "TUS_S3_BUCKET": moto.bucket("tus-node"), "TUS_S3_ENDPOINT": moto.endpoint,
            "TMPDIR": str(node_tmp),
        })
        resumable = ServerProcess(workdir / "resumable-data", workdir / "resumable.log",
                                  extra_args=["--s3-bucket", moto.bucket("resumable"),
                                              "--s3-endpoint", moto.endpoint])
        servers = [node.start(), resumable.start()]
        spools = {"tus-node": node_tmp, "resumable": resumable.data_dir / "spool"}
        endpoints = [endpoint_of("tus-node", node), endpoint_of("resumable", resumable)]
        ctx = Context(argparse.Namespace(prime=False), fill_buffer(4 * MiB), workdir)
        steps = {
            "s1": (f"one PATCH of {format_size(plan.size)}",
                   lambda ep, i: step_one_patch(ctx, ep, plan.size, i)),
            "s2": (f"{plan.uploads} x {format_size(plan.upload_size)} at once",
                   lambda ep, i: step_concurrent(ctx, ep, plan.uploads, plan.upload_size, i)),
        }
        results: dict[str, Any] = {}
        for key, (label, step) in steps.items():
            print(f"({key}) {label}", flush=True)
            rows: list[dict[str, Any]] = []
            for index in range(1, plan.rounds + 1):
                line = []
                for ep in endpoints:
                    with SpoolSampler(spools[ep.name]) as spool:
                        measure = guarded(ctx, key, functools.partial(step, ep, index),
                                          ep.name, index)
                    rows.append({"server": ep.name, "round": index, "mb_s": measure.value,
                                 "error": measure.error, "peak_rss": peak_rss(measure, ep.name),
                                 "peak_spool": spool.peak, "measure": asdict(measure)})
                    line.append(f"{ep.name} {measure.value or 0:.1f} MB/s "
                                f"(RSS {(peak_rss(measure, ep.name) or 0) / MiB:.0f} MiB, "
                                f"spool {spool.peak / MiB:.0f} MiB)")
                print(f"  round {index}: " + " | ".join(line), flush=True)
            results[key] = {"label": label, "rows": rows, "summary": summary(rows)}
        return {"when": now_iso(), "host": host_info(), "versions": versions,
                "plan": {k: v for k, v in vars(plan).items() if k != "json"},
                "results": results, "problems": ctx.problems}
    finally:
        for server in servers:
            server.stop()
        moto.stop()


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("tus-node", "resumable"):
        mine = [row for row in rows if row["server"] == name]
        speeds = [row["mb_s"] for row in mine if row["mb_s"] is not None]
        out[name] = {
            "median_mb_s": median(speeds) if speeds else None,
            "peak_rss_mib": max((row["peak_rss"] or 0) for row in mine) / MiB,
            "peak_spool_mib": max(row["peak_spool"] for row in mine) / MiB,
            "failed_rounds": sum(1 for row in mine if row["error"]),
        }
    ours, theirs = out["resumable"]["median_mb_s"], out["tus-node"]["median_mb_s"]
    out["ratio"] = ours / theirs if ours and theirs else None
    return out


def print_report(document: dict[str, Any]) -> None:
    host, versions = document["host"], document["versions"]
    print(f"\nS3 (moto) comparison, {document['when']}, {host['cpu_count']} CPUs; "
          f"@tus/server {versions.get('@tus/server')} + @tus/s3-store "
          f"{versions.get('@tus/s3-store')} on node {versions.get('node')}")
    print(f"{'workload':<28} {'server':<12} {'MB/s':>8} {'peak RSS':>10} {'peak spool':>11}")
    for result in document["results"].values():
        for name in ("tus-node", "resumable"):
            row = result["summary"][name]
            speed = row["median_mb_s"]
            print(f"{result['label']:<28} {name:<12} "
                  f"{'-' if speed is None else f'{speed:.1f}':>8} "
                  f"{row['peak_rss_mib']:>7.0f} MiB {row['peak_spool_mib']:>7.0f} MiB")
        ratio = result["summary"]["ratio"]
        print(f"{'':<28} {'ratio':<12} {'-' if ratio is None else f'{ratio:.2f}x':>8}")
    for problem in document["problems"]:
        print(f"  ! {problem}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=parse_size, default=1 * GiB, help="(s1) PATCH size")
    parser.add_argument("--uploads", type=int, default=16, help="(s2) concurrent uploads")
    parser.add_argument("--upload-size", type=parse_size, default=64 * MiB,
                        help="(s2) size of each")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the servers' data directories go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    plan = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s3-compare-", dir=plan.work_dir) as work:
        document = run(plan, Path(work))
    print_report(document)
    if plan.json is not None:
        plan.json.write_text(json.dumps(document, indent=1, default=str))
    return 1 if document["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
