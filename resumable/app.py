"""The Flask application factory: wiring, and the one place errors become responses."""

from __future__ import annotations

import errno
import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .body import abandon_unread_body
from .concat import BackgroundJoins, Concatenator
from .cors import apply_cors
from .demo import demo_blueprint
from .expiry import ExpiryPolicy
from .files import disk_full, is_disk_full
from .hooks import load_authorizer
from .middleware import MethodOverride, TrustedProxy
from .protocol import (
    TUS_VERSION,
    Locked,
    ServiceUnavailable,
    TusError,
)
from .registry import LeaseLost, RegistryUnavailable, make_registry
from .settings import Settings
from .store import StoreUnavailable, make_store
from .transfer import Appender, BufferPool
from .views import Services, blueprint

log = logging.getLogger("resumable")


def create_app(settings: Settings | None = None) -> Flask:
    """A tus server for ``settings`` (defaults and ``RESUMABLE_*`` when None)."""
    settings = settings or Settings.load()
    app = Flask(__name__)
    store = make_store(settings)
    registry = make_registry(settings, store)
    expiry = ExpiryPolicy.from_settings(settings)
    concatenator = Concatenator(registry, store, expiry, settings.max_size)
    app.extensions["resumable"] = Services(
        settings=settings,
        store=store,
        registry=registry,
        appender=Appender(settings, registry, store, BufferPool(settings.chunk_size), expiry),
        concatenator=concatenator,
        joins=BackgroundJoins(concatenator),
        expiry=expiry,
        authorizer=load_authorizer(settings.auth_hook),
    )
    app.register_blueprint(blueprint, url_prefix=settings.base_path.rstrip("/"))
    if settings.demo:
        app.register_blueprint(demo_blueprint)

    @app.after_request
    def tus_headers(response: Response) -> Response:
        response.headers["Tus-Resumable"] = TUS_VERSION
        apply_cors(request, response, settings.allowed_origins)
        return response

    app.register_error_handler(TusError, error_response)
    app.register_error_handler(LeaseLost, lost_lease_response)
    app.register_error_handler(HTTPException, http_error_response)
    app.register_error_handler(Exception, unexpected_error_response)

    app.wsgi_app = MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    if settings.trust_proxy:
        app.wsgi_app = TrustedProxy(app.wsgi_app)  # type: ignore[method-assign]
    return app


def error_response(error: TusError) -> Response:
    abandon_unread_body(request.environ)
    body = "" if request.method == "HEAD" else error.message + "\n"
    response = Response(
        body, status=error.status_line, headers=error.headers, mimetype="text/plain"
    )
    return response


def lost_lease_response(error: LeaseLost) -> Response:
    """Another request took the upload over while this one worked on it."""
    return error_response(Locked("another request took this upload over; retry"))


def http_error_response(error: HTTPException) -> Response:
    """Routing errors (404, 405) in the same plain form as protocol errors."""
    tus_error = TusError(error.description or error.name)
    tus_error.status = error.code or 500
    if error.code == 405 and error.valid_methods:
        tus_error.headers["Allow"] = ", ".join(error.valid_methods)
    return error_response(tus_error)


def unexpected_error_response(error: Exception) -> Response:
    if isinstance(error, RegistryUnavailable):
        log.warning("registry unavailable: %s", error)
        return error_response(ServiceUnavailable("the upload registry is unavailable; retry"))
    if isinstance(error, StoreUnavailable):
        log.warning("storage unavailable: %s", error)
        return error_response(ServiceUnavailable("the upload storage is unavailable; retry"))
    if is_disk_full(error):
        return error_response(disk_full())
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        # Files under the data directory are opened without following links
        # (files.py): a link there was planted by someone with access to it.
        log.error("refused a symbolic link in the data directory: %s", error.filename)
        return error_response(TusError("internal error"))
    log.exception("unexpected error")
    tus_error = TusError("internal error")
    return error_response(tus_error)
