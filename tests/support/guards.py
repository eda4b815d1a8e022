"""The suite's standing rule for servers: no 5xx, and no traceback in the server's log.

Design invariant 7 says bad input gets a 4xx, never a 5xx; and an exception a
worker logged is a bug even when the client got a fine answer. Suites hold
every request to it through :func:`guarded` clients (any 5xx fails the test at
once, naming the request) and every server to it through
:func:`assert_no_traceback`.
"""

from __future__ import annotations

from typing import Protocol

import pytest
import requests

from .http import TusClient


class Logging(Protocol):
    """A server whose log the test can read (a Server, a Proxied deployment)."""

    endpoint: str

    def log(self) -> str: ...


def fail_on_server_error(response: requests.Response, *args: object, **kwargs: object) -> None:
    """Response hook: any 5xx fails the test that received it."""
    if response.status_code >= 500:
        request = response.request
        pytest.fail(
            f"server error {response.status_code} for {request.method} {request.url} "
            f"(request headers {dict(request.headers)}): {response.text[:500]!r}"
        )


def guarded(server: Logging) -> TusClient:
    """A client of ``server`` whose every 5xx answer fails the test."""
    client = TusClient(server.endpoint)
    client.session.hooks["response"].append(fail_on_server_error)
    return client


def assert_no_traceback(server: Logging, since: int = 0) -> None:
    """The server logged no exception (after the first ``since`` characters of its log)."""
    new_log = server.log()[since:]
    assert "Traceback" not in new_log, f"server logged an exception:\n{new_log[-4000:]}"
