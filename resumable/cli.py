"""``resumable``: the command line. ``serve`` runs the app under gunicorn.

Flags are generated from :class:`~resumable.settings.Settings`, so every
setting is a flag (``--data-dir``) and an environment variable
(``RESUMABLE_DATA_DIR``) with the same help text.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any

from gunicorn.app.base import BaseApplication

from . import __version__
from .settings import ENV_PREFIX, Settings, field_type


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


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings.load(overrides)


class GunicornServer(BaseApplication):
    """gunicorn configured from Settings; each worker builds its own app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}",
            "workers": s.workers,
            "worker_class": s.worker_class,
            "threads": s.threads,
            "worker_connections": max(1000, s.threads * 4),
            # Uploads last hours: gthread workers heartbeat from their main
            # thread, so this only catches a hung worker, never a long PATCH.
            "timeout": 60,
            "graceful_timeout": 30,
            "keepalive": 75,
            "loglevel": s.log_level,
            "accesslog": None,
            "errorlog": "-",
            "limit_request_field_size": 65536,
            "limit_request_fields": 200,
            "proc_name": "resumable",
            # One control socket per user would collide between servers.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):  # noqa: ANN201 - gunicorn's hook
        from .app import create_app

        return create_app(self.settings)


def serve(settings: Settings) -> int:
    GunicornServer(settings).run()
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.command == "serve":
        return serve(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
