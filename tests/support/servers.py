"""The server under test: ``resumable serve`` or a host app under gunicorn, on a free port."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from .paths import ROOT
from .processes import child_pids, command_line, free_port, signal_group, stop_group
from .s3 import s3_client
from .waiting import wait_until

PROXIED = "proxied-"
HOSTED = "hosted-"


def split_backend(backend: str) -> tuple[str, str]:
    """``redis-s3`` → (``redis``, ``s3``): the registry, and the store (``file`` unless ``s3``).

    A ``proxied-`` prefix (two replicas behind nginx, see ``Proxied``) or ``hosted-``
    (the endpoint mounted in a host app, see ``HostedApp``) changes neither.
    """
    backend = backend.removeprefix(PROXIED).removeprefix(HOSTED)
    if backend == "s3":
        return "embedded", "s3"
    if backend.endswith("-s3"):
        return backend[:-3], "s3"
    return backend, "file"


class Server:
    """``resumable serve`` (gunicorn) as a child process on a free port.

    With ``default_data_dir`` the server runs in ``data_dir``'s parent without
    ``--data-dir``, so it uses the default relative ``data`` directory, as a
    user's first ``resumable serve`` does (``data_dir`` must then be named so).
    """

    def __init__(
        self,
        data_dir: Path,
        redis_url: str | None = None,
        workers: int = 2,
        default_data_dir: bool = False,
        nofile: int | None = None,
        env: Mapping[str, str] | None = None,
        **settings: object,
    ):
        if default_data_dir and data_dir.name != "data":
            raise ValueError("the default data dir is called 'data'")
        self.data_dir = data_dir
        self.default_data_dir = default_data_dir
        #: A lower soft limit on open descriptors for the server's processes.
        self.nofile = nofile
        #: Variables added to the server's environment (what a hook module reads).
        self.env = dict(env or {})
        self.port = free_port()
        self.redis_url = redis_url
        self.workers = workers
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        base = str(self.settings.get("base_path", "/files/"))
        return self.url + base

    @property
    def redis_prefix(self) -> str:
        """Its own keys in a shared Redis, unless the settings name a prefix (replicas)."""
        return str(self.settings.get("redis_prefix", f"test{self.port}:"))

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "resumable",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *([] if self.default_data_dir else ["--data-dir", str(self.data_dir)]),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
        ]
        if self.redis_url:
            args += ["--redis-url", self.redis_url, "--redis-prefix", self.redis_prefix]
        for name, value in self.settings.items():
            if name == "redis_prefix":
                continue
            flag = "--" + name.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is False:
                args.append("--no-" + name.replace("_", "-"))
            else:
                args += [flag, str(value)]
        return args

    def environment(self) -> dict[str, str]:
        """This process's environment, ``env``, and the repository on the import path.

        Hooks and host apps are loaded by module path (``tests.apps.hooks:receivers``):
        they import whatever the server's working directory is.
        """
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, **self.env}

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=log,
            env=self.environment(),
            start_new_session=True,
            cwd=self.data_dir.parent if self.default_data_dir else None,
            preexec_fn=self._limit_descriptors if self.nofile else None,
        )
        log.close()
        if not wait_until(self.ready, 20, 0.1):
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.log()}")
        wait_until(lambda: len(self.worker_pids()) >= self.workers, 10)
        return self

    # -- what the store holds, whichever store it is --------------------------

    def upload_ids(self) -> list[str]:
        """Uploads the server keeps: sidecars on disk, or info objects in its bucket."""
        return [name[:-5] for name in self.stored_names() if name.endswith(".json")
                or name.endswith(".info")]

    def stored_names(self, upload_id: str = "") -> list[str]:
        """Names of the files (or objects, without the prefix) of an upload, or of all."""
        bucket = self.settings.get("s3_bucket")
        if bucket is None:
            folder = Path(self.data_dir, "uploads")
            return sorted(p.name for p in folder.glob(f"{upload_id}*")) if folder.is_dir() else []
        prefix = str(self.settings.get("s3_prefix", ""))
        pages = self._s3().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + upload_id
        )
        return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))

    def stored_bytes(self, upload_id: str) -> int | None:
        """How many bytes of the upload are stored (None when nothing is)."""
        bucket = self.settings.get("s3_bucket")
        if bucket is None:
            path = Path(self.data_dir, "uploads", upload_id)
            return path.stat().st_size if path.exists() else None
        prefix = str(self.settings.get("s3_prefix", ""))
        try:
            info = self._s3().get_object(Bucket=bucket, Key=f"{prefix}{upload_id}.info")
        except Exception:  # noqa: BLE001 - no such object
            return None
        state = json.loads(info["Body"].read())["state"]
        if state["complete"]:
            return int(self._s3().head_object(Bucket=bucket, Key=prefix + upload_id)
                       ["ContentLength"])
        return sum(p[1] for p in state["parts"]) + sum(t[1] for t in state["tail"])

    def stored_content(self, upload_id: str) -> bytes | None:
        """A finished upload's bytes as stored (the data file, or the object)."""
        bucket = self.settings.get("s3_bucket")
        if bucket is None:
            path = Path(self.data_dir, "uploads", upload_id)
            return path.read_bytes() if path.exists() else None
        prefix = str(self.settings.get("s3_prefix", ""))
        try:
            return self._s3().get_object(Bucket=bucket, Key=prefix + upload_id)["Body"].read()
        except Exception:  # noqa: BLE001 - no such object
            return None

    def _s3(self):  # noqa: ANN202 - a boto3 client
        return s3_client(str(self.settings["s3_endpoint"]))

    def _limit_descriptors(self) -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def ready(self) -> bool:
        if self.process and self.process.poll() is not None:
            return False
        try:
            return requests.options(self.endpoint, timeout=1).status_code in (200, 204)
        except requests.RequestException:
            return False

    def worker_pids(self) -> list[int]:
        """Pids of the gunicorn workers: the master's children but the gc collector."""
        if not self.process:
            return []
        return [pid for pid in child_pids(self.process.pid) if not _is_collector(pid)]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self) -> None:
        """Ask the server to stop (gunicorn's graceful stop), without waiting."""
        if self.process and self.process.poll() is None:
            signal_group(self.process, signal.SIGTERM)

    def stop(self) -> None:
        stop_group(self.process)


class HostedApp(Server):
    """The host app of ``tests/apps/host.py`` under plain gunicorn, the endpoint in it.

    Run the way the README tells teams to run their own app: gunicorn with the
    threaded worker, settings as ``RESUMABLE_*`` variables.
    """

    BASE_PATH = "/api/uploads/"
    APP = "tests.apps.host:create()"

    def __init__(self, data_dir: Path, redis_url: str | None = None, workers: int = 2,
                 **settings: object):
        super().__init__(data_dir, redis_url=redis_url, workers=workers,
                         **{**settings, "base_path": self.BASE_PATH})

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers),
            "--worker-class", "resumable.worker.ResumableThreadWorker",
            "--threads", "64",
            "--log-level", "warning",
            "--chdir", str(ROOT),
            self.APP,
        ]

    def environment(self) -> dict[str, str]:
        environment = super().environment()
        values: dict[str, object] = {"data_dir": self.data_dir, **self.settings}
        if self.redis_url:
            values.update(redis_url=self.redis_url, redis_prefix=self.redis_prefix)
        for name, value in values.items():
            environment["RESUMABLE_" + name.upper()] = str(value)
        return environment


def _is_collector(pid: int) -> bool:
    """The `resumable gc --every` child that `serve` starts beside its workers."""
    argv = command_line(pid)
    return "gc" in argv and "--every" in argv


def _server_side_inode(server_port: int, client_port: int) -> int:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == server_port and remote_port == client_port:
                return int(fields[9])
    return 0


def connection_owner(server: Server, sock: socket.socket, timeout: float = 5.0) -> int | None:
    """Pid of the worker that accepted ``sock``'s connection (None if none did in time).

    Found through /proc: the server side of the connection's socket inode,
    then the worker holding a descriptor to it.
    """
    client_port = sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inode = _server_side_inode(server.port, client_port)
        if inode:
            target = f"socket:[{inode}]"
            for pid in server.worker_pids():
                try:
                    names = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for name in names:
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                            return pid
                    except OSError:
                        continue
        time.sleep(0.02)
    return None
