"""One line per request of the tus endpoint, on the ``resumable.access`` logger.

gunicorn's own access log sees only the HTTP exchange: not which upload a
request concerned, how many bytes of its body were stored, or the client
behind a trusted proxy; and in an app that mounts the endpoint it mixes in
the app's own routes. So the line is written by hooks on the tus blueprint:
its requests only, with what the views learned (``resumable.upload_id`` and
``resumable.bytes_received`` in the WSGI environment). The same hooks time
each request and count it in the metrics (metrics.py), so the log and the
metrics agree on every request's method, status, duration and bytes.

A line holds the method (as served: a ``POST`` overridden to ``PATCH`` is a
``PATCH``), the path without its query string (tokens are sometimes passed
there), the upload id, the status, the bytes received, the duration until the
response was handed to the server (a download's body streams after), the
client's address (through a trusted proxy, see forwarded.py) and a request id:
the request's own ``X-Request-ID`` when it is a plain token of at most 128
characters, else a new random one, sent back as ``X-Request-ID``. No other
header (so no ``Authorization``, no cookie) and nothing of a body is logged.

``--log-format text`` writes ``key=value`` pairs (``-`` when unknown; a value
holding a space, ``"``, ``=``, ``\\`` or anything outside printable ASCII is
JSON-quoted, so a line stays one line and splits unambiguously); ``json``
writes one JSON object per line with the same keys and ``time``, always all of
them (``null`` when unknown). ``resumable serve`` sends the lines to stderr
beside gunicorn's log (:func:`log_to_stderr`) whatever ``--log-level`` says,
as gunicorn's access log is; an app that mounts the endpoint gets them as INFO
records of ``resumable.access`` and routes them as it configures logging.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote

from flask import Request, Response, request

from . import metrics
from .transfer import BYTES_RECEIVED
from .views import UPLOAD_ID, blueprint, public, services

ACCESS_LOGGER = "resumable.access"
REQUEST_ID_HEADER = "X-Request-ID"
#: Keys this module keeps in the WSGI environment during a request.
STARTED = "resumable.started"
REQUEST_ID = "resumable.request_id"
STATUS = "resumable.status"
PATCH_IN_FLIGHT = "resumable.patch_in_flight"

#: An incoming request id is kept when it is a plain token of this form.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
#: Text values written as they are; any other is JSON-quoted.
_BARE = re.compile(r"[!#-<>-\[\]-~]+")  # printable ASCII but space, '"', '=' and '\'
_PATH_SAFE = "/:@!$&'()*+,;-._~"

access_log = logging.getLogger(ACCESS_LOGGER)
log = logging.getLogger("resumable")


def request_id_for(incoming: str | None) -> str:
    """The client's (or a proxy's) request id when it is safe to log and echo, else a new one."""
    if incoming is not None and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def _request_id(current: Request) -> str:
    environ = current.environ
    if REQUEST_ID not in environ:
        environ[REQUEST_ID] = request_id_for(current.headers.get(REQUEST_ID_HEADER))
    return cast(str, environ[REQUEST_ID])


def _is_patch(current: Request) -> bool:
    """A PATCH, or a POST that the views will serve as one (method override)."""
    if current.method == "PATCH":
        return True
    if current.method != "POST":
        return False
    return current.headers.get("X-HTTP-Method-Override", "").upper() == "PATCH"


# --------------------------------------------------------------------------
# The hooks on the tus blueprint
# --------------------------------------------------------------------------


@blueprint.url_value_preprocessor
def _begin(_endpoint: str | None, _values: dict[str, Any] | None) -> None:
    """Start the clock, name the request, count a PATCH in flight.

    A URL value preprocessor runs before every ``before_request`` function of
    the app and the blueprint, so a request one of them refuses (a 412 for a
    missing ``Tus-Resumable``) is timed and named like any other.
    """
    current = request._get_current_object()  # type: ignore[attr-defined]
    environ = current.environ
    environ[STARTED] = time.perf_counter()
    _request_id(current)
    if _is_patch(current):
        environ[PATCH_IN_FLIGHT] = True
        metrics.patch_started()


@blueprint.after_request
def _answered(response: Response) -> Response:
    current = request._get_current_object()  # type: ignore[attr-defined]
    current.environ[STATUS] = response.status_code
    response.headers[REQUEST_ID_HEADER] = _request_id(current)
    return response


@blueprint.teardown_request
def _end(_error: BaseException | None) -> None:
    """Count and log the request, however it ended (an error, a client gone)."""
    current = request._get_current_object()  # type: ignore[attr-defined]
    environ = current.environ
    try:
        if environ.pop(PATCH_IN_FLIGHT, False):
            metrics.patch_ended()
        started = environ.get(STARTED)
        seconds = 0.0 if started is None else time.perf_counter() - started
        # Without an answer from after_request the error escaped to the app: a 500.
        status = int(environ.get(STATUS, 500))
        received = environ.get(BYTES_RECEIVED)
        received = received if isinstance(received, int) and received > 0 else 0
        metrics.count_request(current.method, status, seconds, received)
        settings = services().settings
        if settings.access_log and access_log.isEnabledFor(logging.INFO):
            fields = line_fields(current, status, seconds, received)
            access_log.info(format_line(fields, settings.log_format), extra={"access": fields})
    except Exception:
        log.exception("recording a request of the tus endpoint failed")


def line_fields(current: Request, status: int, seconds: float, received: int) -> dict[str, Any]:
    """What one line says, in the order it says it."""
    upload_id = current.environ.get(UPLOAD_ID)
    return {
        "method": current.method,
        "path": quote(current.script_root + current.path, safe=_PATH_SAFE),
        "status": status,
        "upload_id": upload_id if isinstance(upload_id, str) else None,
        "bytes_received": received,
        "duration_ms": round(seconds * 1000, 3),
        "client": public().remote_addr or None,
        "request_id": _request_id(current),
    }


def format_line(fields: dict[str, Any], log_format: str) -> str:
    if log_format == "json":
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        return json.dumps({"time": stamp, **fields}, separators=(",", ":"))
    return " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


# --------------------------------------------------------------------------
# `resumable serve`
# --------------------------------------------------------------------------


def log_to_stderr(log_format: str) -> None:
    """Write the lines to stderr, beside gunicorn's log, and only there.

    Set in the master before the workers fork. The level is the logger's own:
    ``--log-level`` is gunicorn's, and ``--no-access-log`` turns the lines off.
    Not propagated, so a root handler (a library's ``basicConfig``) cannot
    print them a second time.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [access] %(message)s",
                              "%Y-%m-%d %H:%M:%S %z")
        )
    access_log.handlers[:] = [handler]
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
