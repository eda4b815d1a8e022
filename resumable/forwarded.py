"""What a trusted proxy says about the request: scheme, host, prefix, client address.

With ``--trust-proxy`` the ``Forwarded`` / ``X-Forwarded-*`` headers decide the
URLs the server answers with (``Location``) and the client address it logs.
They are applied to a copy of the request's WSGI environment, only for the tus
endpoint's requests: an app that mounts the endpoint keeps its own view of
every other request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

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

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
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


@dataclass(frozen=True)
class PublicView:
    """The request as its client made it: ``scheme://host`` + ``script_root`` is the base URL."""

    scheme: str
    host: str
    script_root: str
    remote_addr: str


def _no_start(*_: object) -> None:
    """A start_response for a call that never answers (public_view)."""


def public_view(environ: dict[str, Any], trust_proxy: bool) -> PublicView:
    """The request's public address; through the proxy's headers only when it is trusted."""
    if trust_proxy:
        seen: dict[str, Any] = {}
        TrustedProxy(lambda fixed, _start: seen.update(fixed) or [])(dict(environ), _no_start)
        environ = seen
    request = Request(environ, populate_request=False, shallow=True)
    return PublicView(
        scheme=request.scheme,
        host=request.host,
        script_root=request.script_root,
        remote_addr=request.remote_addr or "",
    )
