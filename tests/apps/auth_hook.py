"""A bearer-token access-control hook for tests/faults/test_hostile_input.py.

The README's example (loaded as ``--auth-hook tests.apps.auth_hook:authorize``)
plus two things a test needs: every call is appended to the file named by
``HOOK_LOG`` (``<verdict> <action> <upload id or -> <method>``), and the
token ``deny`` (or a ``read`` of an id listed in the file ``HOOK_DENY_READ``)
makes the hook return False, which the server answers with 403.
"""

from __future__ import annotations

import hmac
import os

from resumable.protocol import Unauthorized

TOKEN = os.environ["HOOK_TOKEN"]


def _record(verdict: str, action: str, upload_id: str | None, method: str) -> None:
    line = f"{verdict} {action} {upload_id or '-'} {method}\n"
    with open(os.environ["HOOK_LOG"], "a", encoding="utf-8") as log:
        log.write(line)


def _denied_reads() -> set[str]:
    path = os.environ.get("HOOK_DENY_READ")
    if not path or not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as handle:
        return set(handle.read().split())


def authorize(action, upload_id, request):
    """action: "create", "read" (HEAD, GET, partials of a final), "append" or "delete"."""
    supplied = request.headers.get("Authorization", "")
    if hmac.compare_digest(supplied.encode("latin-1"), b"Bearer deny"):
        _record("false", action, upload_id, request.method)
        return False
    if not hmac.compare_digest(supplied.encode("latin-1"), f"Bearer {TOKEN}".encode()):
        _record("401", action, upload_id, request.method)
        raise Unauthorized("a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    if action == "read" and upload_id in _denied_reads():
        _record("false", action, upload_id, request.method)
        return False
    _record("ok", action, upload_id, request.method)
    return None
