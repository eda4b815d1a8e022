"""CORS for browser clients (Uppy, tus-js-client) served from other origins."""

from __future__ import annotations

from flask import Request, Response

from .protocol import ALLOWED_REQUEST_HEADERS, EXPOSED_HEADERS

ALLOWED_METHODS = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"
PREFLIGHT_MAX_AGE = "86400"


def apply_cors(request: Request, response: Response, allowed_origins: tuple[str, ...]) -> None:
    """Echo an allowed Origin, expose every tus header, answer preflights.

    The origin is echoed rather than answered with ``*`` so the answer is
    the same with and without credentials; ``Vary: Origin`` keeps caches
    honest. Credentials are allowed only when origins are listed explicitly.
    """
    origin = request.headers.get("Origin")
    if not origin:
        return
    wildcard = "*" in allowed_origins
    if not wildcard and origin not in allowed_origins:
        return
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = origin
    headers.add("Vary", "Origin")
    if not wildcard:
        headers["Access-Control-Allow-Credentials"] = "true"
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_REQUEST_HEADERS)
        headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    else:
        headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
