"""Real processes for tests: a redis-server and the resumable server under gunicorn."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_NGINX_CONFIG = ROOT / "deploy" / "nginx.conf"
#: Seconds nginx sets a replica aside after it refused a connection (deploy/*.conf).
UPSTREAM_FAIL_TIMEOUT = 2
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class RedisServer:
    """A private redis-server on a free port that keeps nothing on disk.

    ``extra`` adds command-line options (``--cluster-enabled yes``,
    ``--replicaof …``); ``sentinel`` runs ``redis-server <conf> --sentinel``
    with ``extra`` as the lines of its config file instead.
    """

    def __init__(self, workdir: Path, extra: Iterable[str] = (), sentinel: bool = False):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir = workdir
        self.port = free_port()
        self.extra = list(extra)
        self.sentinel = sentinel
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.sentinel:
            conf = self.workdir / "sentinel.conf"
            conf.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1", *self.extra]) + "\n")
            return ["redis-server", str(conf), "--sentinel"]
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            *self.extra,
        ]

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_until(self.ping, 10):
            raise RuntimeError("redis-server did not start")
        return self

    def ping(self) -> bool:
        return self.ask(b"PING").startswith(b"+PONG")

    def ask(self, command: bytes) -> bytes:
        """One inline command's raw answer (empty when the server cannot be reached)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(command + b"\r\n")
                return sock.recv(65536)
        except OSError:
            return b""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class RedisCluster:
    """Three redis-server masters in cluster mode, joined by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, size: int = 3):
        self.nodes = [
            RedisServer(
                workdir / f"node{i}",
                # The bus port is the client port + 10000 unless given: not always free.
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-port", str(free_port())],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        if not wait_until(
            lambda: all(b"cluster_state:ok" in n.ask(b"CLUSTER INFO") for n in self.nodes), 30
        ):
            raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, its replicas (one unless asked) and one sentinel watching them as ``MASTER``.

    ``failover()`` makes the sentinel promote a replica and waits until it
    names the new master, as a master's crash would (without waiting for the
    crash to be noticed).
    """

    MASTER = "uploads"

    def __init__(self, workdir: Path, replicas: int = 1):
        self.workdir = workdir
        self.master = RedisServer(workdir / "master")
        self.replicas = [RedisServer(workdir / f"replica-{n}") for n in range(replicas)]
        self.sentinel: RedisServer | None = None

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://{self.sentinel.address}/{self.MASTER}/0"

    def start(self) -> RedisSentinel:
        self.master.start()
        for replica in self.replicas:
            replica.extra = ["--replicaof", "127.0.0.1", str(self.master.port)]
            replica.start()
            if not wait_until(
                lambda r=replica: b"master_link_status:up" in r.ask(b"INFO replication"), 30
            ):
                raise RuntimeError("a replica did not connect to its master")
        self.sentinel = RedisServer(
            self.workdir / "sentinel",
            [
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 1",
                f"sentinel down-after-milliseconds {self.MASTER} 2000",
                f"sentinel failover-timeout {self.MASTER} 10000",
            ],
            sentinel=True,
        ).start()
        if not wait_until(lambda: self.master_port() == self.master.port, 30):
            raise RuntimeError("the sentinel does not see the master")
        if not wait_until(lambda: b"num-slaves" in self._master_state()
                          and self._replicas_known(), 30):
            raise RuntimeError("the sentinel does not see the replicas")
        return self

    def _master_state(self) -> bytes:
        assert self.sentinel is not None
        return self.sentinel.ask(f"SENTINEL MASTER {self.MASTER}".encode())

    def _replicas_known(self) -> bool:
        assert self.sentinel is not None
        answer = self.sentinel.ask(f"SENTINEL REPLICAS {self.MASTER}".encode())
        return all(str(replica.port).encode() in answer for replica in self.replicas)

    def master_port(self) -> int | None:
        assert self.sentinel is not None
        answer = self.sentinel.ask(
            f"SENTINEL GET-MASTER-ADDR-BY-NAME {self.MASTER}".encode()
        ).split(b"\r\n")
        return int(answer[4]) if len(answer) > 4 and answer[4].isdigit() else None

    def failover(self, timeout: float = 30) -> None:
        """Promote the replica; return once the sentinel names it and it takes writes."""
        assert self.sentinel is not None
        old = self.master_port()
        answers: list[bytes] = []

        def asked() -> bool:  # -NOGOODSLAVE until the sentinel has fresh word from the replica
            assert self.sentinel is not None
            answers.append(self.sentinel.ask(f"SENTINEL FAILOVER {self.MASTER}".encode()))
            return answers[-1].startswith(b"+OK")

        if not wait_until(asked, timeout, 0.5):
            raise RuntimeError(f"SENTINEL FAILOVER answered {answers[-1]!r}")
        if not wait_until(lambda: self.master_port() not in (None, old), timeout):
            raise RuntimeError("the sentinel did not promote the replica")
        promoted = next(server for server in [self.master, *self.replicas]
                        if server.port == self.master_port())
        if not wait_until(lambda: b"role:master" in promoted.ask(b"INFO replication"), timeout):
            raise RuntimeError("the promoted replica did not become a master")

    def stop(self) -> None:
        for server in (self.sentinel, *self.replicas, self.master):
            if server is not None:
                server.stop()


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


def s3_client(endpoint: str):  # noqa: ANN201 - a boto3 client
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


class MotoS3:
    """moto's S3 API server (``ThreadedMotoServer``) on a free loopback port.

    Servers started by the tests find credentials in the environment, as
    boto3's standard chain reads them; moto accepts any.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.server = None
        self.buckets = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(name, value)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self

    def new_bucket(self) -> str:
        self.buckets += 1
        name = f"uploads-{self.port}-{self.buckets}"
        s3_client(self.endpoint).create_bucket(Bucket=name)
        return name

    def settings(self) -> dict[str, object]:
        """Server settings for a fresh bucket of this server."""
        return {"s3_bucket": self.new_bucket(), "s3_endpoint": self.endpoint,
                "s3_prefix": "uploads/"}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class FaultyS3:
    """An HTTP proxy in front of an S3 endpoint that slows, throttles or drops requests.

    Servers pointed at ``endpoint`` reach S3 through it. Rules match a
    request by method and a part of its query (``uploadId`` without
    ``partNumber`` is CompleteMultipartUpload, ``partNumber`` is UploadPart):
    ``slow`` delays every matching request, ``throttle`` answers the next
    ``count`` of them 503 SlowDown (``refuse``: another status and error code);
    ``down`` drops every connection unanswered,
    as an endpoint that went away. Request bodies are read whole: tests send
    parts of a few MiB.
    """

    HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "expect"}

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.port = free_port()
        self.down = False
        self.delays: list[tuple[str, str, float]] = []
        #: [method, query part, answers left, status, error code]
        self.throttled: list[list] = []
        #: Every request forwarded or refused: (method, path, query).
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def slow(self, method: str, query_part: str, seconds: float) -> None:
        self.delays.append((method, query_part, seconds))

    def throttle(self, method: str, query_part: str, count: int) -> None:
        self.refuse(method, query_part, count, 503, "SlowDown")

    def refuse(self, method: str, query_part: str, count: int, status: int, code: str) -> None:
        with self.lock:
            self.throttled.append([method, query_part, count, status, code])

    def clear(self) -> None:
        with self.lock:
            self.delays, self.throttled, self.down, self.seen = [], [], False, []

    @staticmethod
    def _matches(method: str, query: str, rule_method: str, part: str) -> bool:
        wanted = [name for name in part.split("&") if name]
        names = {item.split("=", 1)[0] for item in query.split("&") if item}
        plain = [name for name in wanted if not name.startswith("!")]
        excluded = [name[1:] for name in wanted if name.startswith("!")]
        return (method == rule_method and all(name in names for name in plain)
                and not any(name in names for name in excluded))

    def _decide(self, method: str, path: str, query: str) -> tuple[float, tuple | None]:
        """(seconds to wait, (status, code) to answer instead of forwarding, or None)."""
        with self.lock:
            self.seen.append((method, path, query))
            delay = sum(seconds for rule_method, part, seconds in self.delays
                        if self._matches(method, query, rule_method, part))
            for rule in self.throttled:
                if rule[2] > 0 and self._matches(method, query, rule[0], rule[1]):
                    rule[2] -= 1
                    return delay, (rule[3], rule[4])
        return delay, None

    def start(self) -> FaultyS3:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.down:
                    self.close_connection = True
                    return
                target = urlsplit(self.path)
                delay, refuse = proxy._decide(self.command, target.path, target.query)
                time.sleep(delay)
                if refuse:
                    status, code = refuse
                    answer = (f'<?xml version="1.0"?><Error><Code>{code}</Code>'
                              "<Message>refused by the test</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(answer)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in proxy.HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    reply = upstream.getresponse()
                    content = reply.read()
                finally:
                    upstream.close()
                self.send_response(reply.status)
                reframed = proxy.HOP_BY_HOP | ({"content-length"} if content else set())
                for name, value in reply.getheaders():
                    if name.lower() not in reframed:
                        self.send_header(name, value)
                if content:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


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
        **settings: object,
    ):
        if default_data_dir and data_dir.name != "data":
            raise ValueError("the default data dir is called 'data'")
        self.data_dir = data_dir
        self.default_data_dir = default_data_dir
        #: A lower soft limit on open descriptors for the server's processes.
        self.nofile = nofile
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

    def environment(self) -> dict[str, str] | None:
        """The server's environment: this process's, for ``resumable serve``."""
        return None

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
        import json

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
        """Pids of the gunicorn workers (children of the master)."""
        if not self.process:
            return []
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split() if not _is_collector(int(pid))]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self) -> None:
        """Ask the server to stop (gunicorn's graceful stop), without waiting."""
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


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
        environment = dict(os.environ)
        values: dict[str, object] = {"data_dir": self.data_dir, **self.settings}
        if self.redis_url:
            values.update(redis_url=self.redis_url, redis_prefix=self.redis_prefix)
        for name, value in values.items():
            environment["RESUMABLE_" + name.upper()] = str(value)
        return environment


def nginx_executable() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


NGINX_MISSING = (
    "nginx is not installed: the proxy tests run Debian's nginx in front of the server "
    "(apt-get install nginx; scripts/test installs it)"
)


class Nginx:
    """``nginx -g 'daemon off;'`` with deploy/nginx.conf, everything else under ``workdir``."""

    def __init__(self, executable: str, workdir: Path, upstreams: list[str]):
        self.executable = executable
        self.workdir = workdir
        self.upstreams = upstreams
        self.port = free_port()
        self.conf_dir = workdir / "conf"
        self.main_config = self.conf_dir / "nginx.conf"
        self.error_log = workdir / "error.log"
        self.client_body_temp = workdir / "client_body_temp"
        self.proxy_temp = workdir / "proxy_temp"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.url + "/files/"

    def write_config(self) -> None:
        """The generated main config includes the shipped file, not a copy of it.

        Relative ``include`` paths in the shipped file resolve against the main
        config's directory, where the two test-specific include files go (in
        the nginx image that directory is /etc/nginx, where compose mounts them).
        """
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        # As deploy/resumable-upstream.conf names the replicas of docker-compose.
        servers = "".join(
            f"server {address} max_fails=1 fail_timeout={UPSTREAM_FAIL_TIMEOUT}s;\n"
            for address in self.upstreams
        )
        (self.conf_dir / "resumable-upstream.conf").write_text(servers)
        (self.conf_dir / "resumable-listen.conf").write_text(f"listen 127.0.0.1:{self.port};\n")
        work = self.workdir
        # As root nginx would run its workers as "nobody", who cannot enter
        # pytest's private temporary directory.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.main_config.write_text(
            f"{user}"
            "worker_processes 2;\n"
            f"pid {work / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    access_log {work / 'access.log'};\n"
            f"    client_body_temp_path {self.client_body_temp};\n"
            f"    proxy_temp_path {self.proxy_temp};\n"
            f"    fastcgi_temp_path {work / 'fastcgi_temp'};\n"
            f"    uwsgi_temp_path {work / 'uwsgi_temp'};\n"
            f"    scgi_temp_path {work / 'scgi_temp'};\n"
            f"    include {SHIPPED_NGINX_CONFIG};\n"
            "}\n"
        )

    def start(self) -> Nginx:
        self.write_config()
        command = [
            self.executable,
            "-g",
            "daemon off;",
            "-c",
            str(self.main_config),
            "-p",
            str(self.workdir) + "/",
            "-e",
            str(self.error_log),
        ]
        output = open(self.workdir / "nginx.out", "ab")
        self.process = subprocess.Popen(
            command, stdout=output, stderr=output, start_new_session=True
        )
        output.close()
        if not wait_until(self.ready, 10, 0.05):
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.log()}")
        return self

    def ready(self) -> bool:
        if self.process and self.process.poll() is not None:
            return False
        try:
            return requests.options(self.endpoint, headers=TUS, timeout=1).status_code == 204
        except requests.RequestException:
            return False

    def log(self) -> str:
        texts = []
        for name in ("nginx.out", "error.log"):
            with contextlib.suppress(OSError):
                texts.append((self.workdir / name).read_text(errors="replace"))
        return "\n".join(texts)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class Proxied:
    """Replicas of the server behind nginx with the shipped config: one deployment, one URL.

    It answers what tests ask of a single ``Server`` (its URL, its settings,
    what the store holds, the log), so a test written for one server runs
    unchanged against a load-balanced deployment. Storage questions go to the
    first replica: replicas share their store (a bucket, or one data dir).
    """

    def __init__(self, replicas: list[Server], workdir: Path):
        self.replicas = replicas
        self.workdir = workdir
        executable = nginx_executable()
        if executable is None:
            raise RuntimeError(NGINX_MISSING)
        upstreams = [self.address(replica) for replica in replicas]
        self.nginx = Nginx(executable, workdir / "nginx", upstreams)

    def start(self) -> Proxied:
        for replica in self.replicas:
            replica.start()
        self.nginx.workdir.mkdir(parents=True)
        self.nginx.start()
        return self

    def address(self, replica: Server) -> str:
        """How nginx names a replica in ``$upstream_addr`` (and ``X-Upstream``)."""
        return f"127.0.0.1:{replica.port}"

    @property
    def addresses(self) -> set[str]:
        return {self.address(replica) for replica in self.replicas}

    @property
    def port(self) -> int:
        return self.nginx.port

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def endpoint(self) -> str:
        return self.nginx.endpoint

    @property
    def first(self) -> Server:
        return self.replicas[0]

    @property
    def settings(self) -> dict[str, object]:
        return self.first.settings

    @property
    def data_dir(self) -> Path:
        return self.first.data_dir

    @property
    def redis_url(self) -> str | None:
        return self.first.redis_url

    @property
    def redis_prefix(self) -> str:
        return self.first.redis_prefix

    def command(self) -> list[str]:
        return self.first.command()

    def upload_ids(self) -> list[str]:
        return self.first.upload_ids()

    def stored_names(self, upload_id: str = "") -> list[str]:
        return self.first.stored_names(upload_id)

    def stored_bytes(self, upload_id: str) -> int | None:
        return self.first.stored_bytes(upload_id)

    def stored_content(self, upload_id: str) -> bytes | None:
        return self.first.stored_content(upload_id)

    def worker_pids(self) -> list[int]:
        return [pid for replica in self.replicas for pid in replica.worker_pids()]

    def log(self) -> str:
        return "\n".join([*(replica.log() for replica in self.replicas), self.nginx.log()])

    def terminate(self) -> None:
        for replica in self.replicas:
            replica.terminate()

    def stop(self) -> None:
        self.nginx.stop()
        for replica in self.replicas:
            replica.stop()


def _is_collector(pid: int) -> bool:
    """The `resumable gc --every` child that `serve` starts beside its workers."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"gc" in argv and b"--every" in argv


def serving_workers(server: Server) -> list[int]:
    """The gunicorn workers of ``server`` (its children, less the gc collector)."""
    return server.worker_pids()


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


class TusClient:
    """Small, explicit tus requests for tests (no retries, no magic)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.session = requests.Session()

    def options(self, **headers: str) -> requests.Response:
        return self.session.options(self.endpoint, headers=headers, timeout=30)

    def create(
        self,
        length: int | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        all_headers = dict(TUS)
        if length is not None:
            all_headers["Upload-Length"] = str(length)
        if data is not None:
            all_headers["Content-Type"] = OFFSET_STREAM
        all_headers.update(headers or {})
        return self.session.post(self.endpoint, headers=all_headers, data=data, timeout=60)

    def new_upload(self, length: int | None, **kwargs) -> str:
        response = self.create(length, **kwargs)
        assert response.status_code == 201, (response.status_code, response.text)
        return response.headers["Location"]

    def head(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        return self.session.head(url, headers={**TUS, **(headers or {})}, timeout=30)

    def offset(self, url: str) -> int:
        response = self.head(url)
        assert response.status_code == 200, (response.status_code, response.text)
        return int(response.headers["Upload-Offset"])

    def patch(
        self, url: str, offset: int, data, headers: dict[str, str] | None = None
    ) -> requests.Response:
        all_headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM}
        all_headers.update(headers or {})
        return self.session.patch(url, headers=all_headers, data=data, timeout=600)

    def delete(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        return self.session.delete(url, headers={**TUS, **(headers or {})}, timeout=30)

    def get(
        self, url: str, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        return self.session.get(url, headers=headers or {}, timeout=600, stream=stream)


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic non-repeating-looking bytes, cheap to make in bulk."""
    block = bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(65536))
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


class SizedBody:
    """A streamed request body of known length: requests sends Content-Length."""

    def __init__(self, pieces: Iterable[bytes], length: int):
        self._pieces = pieces
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._pieces)


def decode_metadata(header: str | None) -> dict[str, str]:
    """Upload-Metadata as the server reports it, values decoded as UTF-8."""
    result: dict[str, str] = {}
    for pair in (header or "").split(","):
        if not pair.strip():
            continue
        key, _, value = pair.strip().partition(" ")
        result[key] = base64.b64decode(value).decode("utf-8")
    return result


def assert_finished(tus: TusClient, url: str, data: bytes) -> dict[str, str]:
    """HEAD says complete, GET streams exactly ``data``; HEAD's headers."""
    head = tus.head(url)
    assert head.status_code == 200, (head.status_code, head.text)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    response = tus.get(url, stream=True)
    assert response.status_code == 200, (response.status_code, response.text)
    digest = hashlib.sha256()
    received = 0
    for block in response.iter_content(1024 * 1024):
        digest.update(block)
        received += len(block)
    assert received == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    return dict(head.headers)


class HookReceiver:
    """A receiver of tusd-format HTTP hooks on a free port, as a team would run one.

    Records every POST (its JSON and headers, and when it came) and answers
    what ``answer(payload)`` returns: a dict sent as JSON with status 200, or
    an int status with an empty body. Unset, it answers ``{}``.
    """

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.lock = threading.Lock()
        self.answer = lambda payload: {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                import json

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                payload = json.loads(body)
                with receiver.lock:
                    receiver.received.append({
                        "payload": payload,
                        "headers": dict(self.headers.items()),
                        "at": time.monotonic(),
                    })
                answer = receiver.answer(payload)
                if isinstance(answer, int):
                    self.send_response(answer)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, kind: str | None = None, upload_id: str | None = None) -> list[dict]:
        with self.lock:
            found = list(self.received)
        return [
            event for event in found
            if (kind is None or event["payload"]["Type"] == kind)
            and (upload_id is None or event["payload"]["Event"]["Upload"]["ID"] == upload_id)
        ]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
