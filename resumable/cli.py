"""``resumable``: the command line. ``serve`` runs the app under gunicorn.

Flags are generated from :class:`~resumable.settings.Settings`, so every
setting is a flag (``--data-dir``) and an environment variable
(``RESUMABLE_DATA_DIR``) with the same help text.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from . import __version__, metrics
from .files import make_private_dir, writable_problem
from .hooks import load_authorizer
from .registry import RegistryUnavailable, describe_registry, unreachable_reason
from .settings import ENV_PREFIX, Settings, field_type

if TYPE_CHECKING:
    from flask import Flask

#: The worker class behind ``--worker-class gthread``: gthread with a header deadline.
GTHREAD_WORKER = "resumable.worker.ResumableThreadWorker"
#: Idle kept-alive connections a worker parks beside its busy threads.
KEPT_ALIVE_PER_WORKER = 64
#: Descriptors a streaming PATCH holds: its socket, data file, lock file, doorbell and pipe.
FILES_PER_UPLOAD = 6
#: Descriptors of a worker besides its uploads: listeners, logs, the registry, imports.
FILES_PER_WORKER = 64


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(f)
        default = None if f.default is MISSING else f.default
        help_text = f"{f.metadata['help']} (env {ENV_PREFIX}{f.name.upper()}; default {default!r})"
        if kind is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag, dest=f.name, type=kind, default=None, help=help_text, metavar=f.name.upper()
            )


def check_data_dir(path: str, mode: int | None = None) -> None:
    """Fail at the command line, not in every worker, when data cannot be stored."""
    try:
        make_private_dir(Path(path), mode)
    except OSError as error:
        raise ValueError(f"data_dir {path!r} is not writable: {error.strerror}") from None
    problem = writable_problem(Path(path))
    if problem is not None:
        raise ValueError(f"data_dir {path!r} is not writable: {problem}")


def check_bucket(settings: Settings) -> None:
    """A missing bucket or bad credentials stop the command here, with the reason."""
    if not settings.s3_bucket:
        return
    from .s3store import bucket_problem

    problem = bucket_problem(settings.s3_bucket, settings.s3_endpoint, settings.s3_region)
    if problem is not None:
        raise ValueError(problem)


def check_hooks(settings: Settings) -> None:
    """Hooks that cannot be loaded, or a hook URL that is no URL, stop the command here."""
    from .hooks_http import HttpHookSender
    from .lifecycle import load_receivers

    load_receivers(settings.hooks)
    HttpHookSender.from_settings(settings)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as RESUMABLE_* variables, to hand to a child process."""
    environment = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is not None:
            environment[ENV_PREFIX + f.name.upper()] = str(value)
    return environment


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings.load(overrides)


class GunicornServer(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn configured from Settings; each worker builds its own app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}",
            "workers": s.workers,
            "worker_class": GTHREAD_WORKER if s.worker_class == "gthread" else s.worker_class,
            "threads": s.threads,
            # Connections beyond the threads are kept-alive ones parked in the
            # worker's poller; a worker whose threads are all busy accepts none
            # (see worker.py).
            "worker_connections": s.threads + KEPT_ALIVE_PER_WORKER,
            # Uploads last hours: gthread workers heartbeat from their main
            # thread, so this only catches a hung worker, never a long PATCH.
            "timeout": 60,
            # On SIGTERM (and for the old workers of a reload) running PATCHes
            # stop reading, commit and answer at once (stopping.py); this is
            # what the rest (downloads, a slow S3 commit) get before the master
            # kills them. docker-compose's stop_grace_period must be longer.
            # gunicorn takes whole seconds only.
            "graceful_timeout": math.ceil(s.shutdown_timeout),
            "keepalive": 75,
            "loglevel": s.log_level,
            "accesslog": None,
            "errorlog": "-",
            "limit_request_line": 8190,
            "limit_request_field_size": 65536,
            # Proxy headers are honoured only through --trust-proxy (TrustedProxy),
            # never because the peer happens to be 127.0.0.1.
            "secure_scheme_headers": {},
            "forwarded_allow_ips": "",
            "limit_request_fields": 200,
            "proc_name": "resumable",
            # One control socket per user would collide between servers.
            "control_socket_disable": True,
        }
        options["when_ready"] = self._ready
        if s.metrics_path:
            options["child_exit"] = metrics.child_exit  # a dead worker's PATCHes end with it
        if s.gc_interval > 0:
            options["on_exit"] = self._stop_collector
        for key, value in options.items():
            self.cfg.set(key, value)

    collector: subprocess.Popen[bytes] | None = None

    def _ready(self, arbiter: Any) -> None:
        """Listening: say where, with what, and start the collector."""
        for line in startup_lines(self.settings):
            arbiter.log.info(line)
        shortage = raise_open_files_limit(self.settings.threads)
        if shortage is not None:
            arbiter.log.warning(shortage)
        problem = unreachable_reason(self.settings)
        if problem is not None:
            arbiter.log.warning(
                "Redis is unreachable (%s): requests answer 503 until it is back", problem
            )
        if self.settings.gc_interval > 0:
            self._start_collector()

    def _start_collector(self) -> None:
        """Run `resumable gc --every N` beside the workers, in its own process.

        A thread in the gunicorn master would be copied into every forked
        worker in whatever state its locks were; a child process is not.
        """
        command = [
            sys.executable,
            "-m",
            "resumable",
            "gc",
            "--every",
            str(self.settings.gc_interval),
            # The server's start-up already reports an unreachable Redis;
            # the first collection follows one interval later.
            "--first-after",
            str(self.settings.gc_interval),
        ]
        environment = dict(os.environ)
        environment.update(settings_environment(self.settings))
        self.collector = subprocess.Popen(command, env=environment)

    def _stop_collector(self, _arbiter: object) -> None:
        if self.collector is not None and self.collector.poll() is None:
            self.collector.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.collector.wait(5)

    def load(self) -> Flask:  # gunicorn's hook
        from .app import create_app

        return create_app(self.settings)


def tus_url(settings: Settings) -> str:
    """The endpoint's URL as a client on this host reaches it."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}{settings.base_path}"


def startup_lines(settings: Settings) -> list[str]:
    everywhere = " (all addresses)" if settings.host in ("0.0.0.0", "::", "") else ""
    lines = [
        f"resumable {__version__}: tus endpoint {tus_url(settings)}{everywhere}",
        f"registry: {describe_registry(settings)}",
        f"data: {settings.data_dir}",
    ]
    if settings.demo:
        lines.append(f"demo page: {tus_url(settings).removesuffix(settings.base_path)}/")
    return lines


def raise_open_files_limit(threads: int) -> str | None:
    """Raise this process's open-files limit to its hard limit; a warning when still short.

    Workers inherit the limit. Many systems start processes with a soft limit
    of 1024 descriptors under a far higher hard one, and a worker streaming
    a few hundred uploads would then fail to accept or open files (EMFILE)
    while its threads sit idle.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = threads * FILES_PER_UPLOAD + KEPT_ALIVE_PER_WORKER + FILES_PER_WORKER
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    uploads = max(0, (soft - KEPT_ALIVE_PER_WORKER - FILES_PER_WORKER) // FILES_PER_UPLOAD)
    return (
        f"the open files limit ({soft}) holds about {uploads} streaming uploads per worker, "
        f"fewer than --threads {threads}: raise it (ulimit -n, LimitNOFILE=) to {needed}"
    )


def serve(settings: Settings) -> int:
    if settings.access_log:
        from .request_log import log_to_stderr

        log_to_stderr(settings.log_format)
    # Before the workers fork: they all write their metrics to one directory (metrics.py).
    with metrics.shared_by_workers(enabled=bool(settings.metrics_path)):
        GunicornServer(settings).run()
    return 0


def collect_garbage(settings: Settings, every: float | None, first_after: float = 0.0) -> int:
    """One collection, or one every ``every`` seconds until the parent server exits."""
    from .expiry import ExpiryPolicy
    from .gc import collect
    from .lifecycle import Lifecycle
    from .registry import make_registry
    from .store import make_store

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s gc %(message)s")
    store = make_store(settings)
    registry = make_registry(settings, store)
    expiry = ExpiryPolicy.from_settings(settings)
    lifecycle = Lifecycle.from_settings(settings, store, registry)
    parent = os.getppid()
    if not every:
        problem = unreachable_reason(settings)
        if problem is not None:
            print(f"resumable gc: the registry is unreachable: {problem}", file=sys.stderr)
            return 1
    if every and not _sleep_while_parent_lives(first_after, parent):
        return 0
    while True:
        try:
            report = collect(registry, store, expiry, settings.max_size, lifecycle=lifecycle)
            if not every or report.expired or report.leftovers:
                print(report, flush=True)
        except RegistryUnavailable as error:
            if not every:
                print(f"resumable gc: the registry is unreachable: {error}", file=sys.stderr)
                return 1
            logging.warning("garbage collection failed: the registry is unreachable: %s", error)
        except Exception as error:  # noqa: BLE001 - a loop must outlive one failed round
            if not every:
                raise
            logging.warning("garbage collection failed: %s", error)
        if not every or not _sleep_while_parent_lives(every, parent):
            return 0


def _sleep_while_parent_lives(seconds: float, parent: int) -> bool:
    """Sleep; False as soon as the server that started us is gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            return False
        time.sleep(min(1.0, seconds))
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resumable",
        description="A tus 1.0 resumable upload server (Flask + gunicorn, Redis or embedded).",
    )
    parser.add_argument("--version", action="version", version=f"resumable {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="run the server under gunicorn",
        description="Run the tus server. Every flag can also be set by its environment variable.",
    )
    add_settings_flags(serve_parser)
    gc_parser = commands.add_parser(
        "gc",
        help="delete expired uploads and leftovers of crashes",
        description="Delete unfinished uploads past their expiry, under their locks: safe "
        "while servers run, and on several hosts at once.",
    )
    add_settings_flags(gc_parser)
    gc_parser.add_argument(
        "--every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep running, one collection every SECONDS",
    )
    gc_parser.add_argument(
        "--first-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --every: wait SECONDS before the first collection",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
        check_data_dir(settings.data_dir, settings.data_dir_permissions)
        check_bucket(settings)
        load_authorizer(settings.auth_hook)
        check_hooks(settings)
    except ValueError as error:
        parser.error(str(error))
    if args.command == "serve":
        return serve(settings)
    if args.command == "gc":
        return collect_garbage(settings, args.every, args.first_after)
    return 2


if __name__ == "__main__":
    sys.exit(main())
