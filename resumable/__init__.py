"""resumable: a tus 1.0 resumable upload server on Flask, gunicorn and Redis."""

from typing import Any

# The one place the version is set: pyproject.toml's build reads it from here (setuptools
# evaluates this literal without importing the package); ``resumable --version``, the
# startup log line, the hook sender's User-Agent and the demo page show it.
__version__ = "0.1.0"

__all__ = ["Resumable", "Settings", "__version__", "create_app"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import Flask
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Resumable":
        from .extension import Resumable

        return Resumable
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(name)
