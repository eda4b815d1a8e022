"""CORS for browser clients (Uppy, tus-js-client) served from other origins."""

from __future__ import annotations

from flask import Request, Response

from .protocol import ALLOWED_REQUEST_HEADERS, EXPOSED_HEADERS
from .settings import Settings

ALLOWED_METHODS = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"


def apply_cors(request: Request, response: Response, settings: Settings) -> None:
    """Echo an allowed Origin, expose every tus header, answer preflights.

    The origin is echoed rather than answered with ``*`` so the answer is
    the same with and without credentials; ``Vary: Origin`` keeps caches
    honest. Credentials (cookies, ``Authorization``) are allowed only when
    origins are listed explicitly: a wildcard with credentials would let any
    site upload as the visitor.
    """
    origin = request.headers.get("Origin")
    if not origin:
        return
    allowed_origins = settings.allowed_origins
    wildcard = "*" in allowed_origins
    if not wildcard and origin not in allowed_origins:
        return
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = origin
    headers.add("Vary", "Origin")
    if not wildcard:
        headers["Access-Control-Allow-Credentials"] = "true"
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        allowed = [*ALLOWED_REQUEST_HEADERS, *settings.cors_extra_allowed]
        headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        headers["Access-Control-Allow-Headers"] = ", ".join(allowed)
        headers["Access-Control-Max-Age"] = str(settings.cors_max_age)
    else:
        exposed = [*EXPOSED_HEADERS, *settings.cors_extra_exposed]
        headers["Access-Control-Expose-Headers"] = ", ".join(exposed)
