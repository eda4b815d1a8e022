"""WSGI middleware that must act before routing: method override and proxies."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from werkzeug.middleware.proxy_fix import ProxyFix

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

_METHOD = re.compile(r"[A-Za-z]{1,16}")


class MethodOverride:
    """``POST`` + ``X-HTTP-Method-Override: PATCH`` is a PATCH (tus core).

    Only POST may be overridden, as tusd does: a GET or HEAD that turned into
    a DELETE could be triggered by a link or a prefetch.
    """

    def __init__(self, app: WSGIApp):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE")
        if override and environ.get("REQUEST_METHOD") == "POST" and _METHOD.fullmatch(override):
            environ["resumable.original_method"] = "POST"
            environ["REQUEST_METHOD"] = override.upper()
        return self.app(environ, start_response)


_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


def parse_forwarded(value: str) -> dict[str, str]:
    """The first element of an RFC 7239 ``Forwarded`` header, lower-cased keys."""
    first = value.split(",", 1)[0]
    result: dict[str, str] = {}
    for part in first.split(";"):
        match = _FORWARDED_PAIR.fullmatch(part)
        if match:
            key, raw = match.group(1).lower(), match.group(2)
            result[key] = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
    return result


class TrustedProxy:
    """Take scheme, host and prefix from the proxy in front (``--trust-proxy``).

    RFC 7239 ``Forwarded`` wins when present; otherwise the ``X-Forwarded-*``
    family is applied by Werkzeug's ProxyFix (one proxy hop).
    """

    _HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,255}")

    def __init__(self, app: WSGIApp):
        self.app = app
        self.proxy_fix = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        forwarded = environ.get("HTTP_FORWARDED")
        if not forwarded:
            return self.proxy_fix(environ, start_response)
        fields = parse_forwarded(forwarded)
        proto = fields.get("proto", "").lower()
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
        host = fields.get("host")
        if host and self._HOST.fullmatch(host):
            environ["HTTP_HOST"] = host
        if fields.get("for"):
            environ["REMOTE_ADDR"] = fields["for"]
        return self.app(environ, start_response)
