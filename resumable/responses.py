"""The one place errors become responses: plain text, the error's own status and headers.

Registered on the tus blueprint, so an app that mounts the endpoint keeps its
own error pages for everything else.
"""

from __future__ import annotations

import errno
import logging

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, default_exceptions

from . import metrics
from .body import abandon_unread_body
from .files import disk_full, is_disk_full
from .protocol import Locked, ServiceUnavailable, TusError
from .registry import LeaseLost, RegistryUnavailable
from .store import StoreUnavailable

log = logging.getLogger("resumable")


def register_error_handlers(target: Blueprint | Flask) -> None:
    target.register_error_handler(TusError, error_response)
    target.register_error_handler(LeaseLost, lost_lease_response)
    target.register_error_handler(HTTPException, http_error_response)
    # Flask asks handlers registered by status code before those registered by
    # class, the app's before a blueprint's: an app's own @errorhandler(405)
    # would answer the endpoint's 405 unless the endpoint names the codes too.
    for code in default_exceptions:
        target.register_error_handler(code, http_error_response)
    target.register_error_handler(Exception, unexpected_error_response)


def error_response(error: TusError) -> Response:
    abandon_unread_body(request.environ)
    body = "" if request.method == "HEAD" else error.body()
    return Response(body, status=error.status_line, headers=error.headers,
                    mimetype=error.mimetype)


def lost_lease_response(error: LeaseLost) -> Response:
    """Another request took the upload over while this one worked on it."""
    return error_response(Locked("another request took this upload over; retry"))


def http_error_response(error: HTTPException) -> Response:
    """Routing errors (404, 405) in the same plain form as protocol errors."""
    tus_error = TusError(error.description or error.name)
    tus_error.status = error.code or 500
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        tus_error.headers["Allow"] = ", ".join(error.valid_methods)
    return error_response(tus_error)


def unexpected_error_response(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return http_error_response(error)
    if isinstance(error, RegistryUnavailable):
        metrics.count_registry_error()
        log.warning("registry unavailable: %s", error)
        return error_response(ServiceUnavailable("the upload registry is unavailable; retry"))
    if isinstance(error, StoreUnavailable):
        metrics.count_storage_error()
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
    return error_response(TusError("internal error"))
