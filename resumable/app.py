"""The standalone server's Flask app: the extension mounted in an app of its own."""

from __future__ import annotations

from flask import Flask, Response, request

from . import draft
from .demo import demo_blueprint
from .extension import Resumable
from .protocol import TUS_VERSION
from .responses import http_error_response
from .settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """A tus server for ``settings`` (defaults and ``RESUMABLE_*`` when None)."""
    settings = settings or Settings.load()
    app = Flask(__name__)
    # `resumable serve` collects garbage in a process of its own (cli.py).
    Resumable(app, settings=settings, collect_garbage=False)
    if settings.demo:
        app.register_blueprint(demo_blueprint)
    # The app is the endpoint's alone: its other URLs answer in the endpoint's
    # plain form too, and name the protocol.
    app.register_error_handler(404, http_error_response)
    app.register_error_handler(405, http_error_response)

    @app.after_request
    def tus_version(response: Response) -> Response:
        if draft.VERSION not in request.environ:  # an IETF draft answer names no tus
            response.headers.setdefault("Tus-Resumable", TUS_VERSION)
        return response

    return app
