"""nginx with the shipped deploy/nginx.conf in front of server replicas: one deployment, one URL."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import requests

from .http import TUS
from .paths import ROOT
from .processes import free_port, stop_group
from .servers import Server
from .waiting import wait_until

SHIPPED_NGINX_CONFIG = ROOT / "deploy" / "nginx.conf"
#: Seconds nginx sets a replica aside after it refused a connection (deploy/*.conf).
UPSTREAM_FAIL_TIMEOUT = 2


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
        stop_group(self.process)


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
