"""Access control: one optional function that decides who may do what.

Configured as ``--auth-hook package.module:function``. The function is
called before a request changes or reveals anything::

    def authorize(action: str, upload_id: str | None, request: flask.Request) -> bool | None

``action`` is ``"create"`` (POST; ``upload_id`` is None), ``"read"`` (HEAD,
GET, and each partial a final concatenation lists), ``"append"`` (PATCH)
or ``"delete"`` (DELETE). Returning False answers 403; raising
:class:`resumable.protocol.Unauthorized` or ``Forbidden`` answers with that
status and message (and any headers, such as ``WWW-Authenticate``).
Anything else lets the request go on. OPTIONS is never asked, so CORS
preflights always pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

Authorizer = Callable[[str, "str | None", Any], "bool | None"]


def import_object(spec: str, setting: str, kind: str = "function") -> Any:
    """The object ``package.module:name`` names; ValueError naming ``setting`` otherwise."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{setting} must look like 'package.module:{kind}', not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{setting} module {module_name!r} cannot be imported: {error}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"{setting} {spec!r}: {module_name} has no {attribute!r}")
    return getattr(module, attribute)


def load_authorizer(spec: str | None) -> Authorizer | None:
    """Import ``module:function``; None when no hook is configured."""
    if not spec:
        return None
    function = import_object(spec, "auth_hook")
    if not callable(function):
        raise ValueError(f"auth_hook {spec!r} is not a function")
    return cast(Authorizer, function)
