"""The Structured Field values (RFC 9651) the IETF upload draft's headers use.

Only what those headers need: an Integer item (``Upload-Offset``,
``Upload-Length``, ``Upload-Draft-Interop-Version``), a Boolean item
(``Upload-Complete``, ``Upload-Incomplete``) and a Dictionary of Integers
(``Upload-Limit``). Parameters on an item are allowed and ignored, as RFC
9651 lets a recipient do. A value that does not parse is reported as None:
the draft treats an invalid field as absent.
"""

from __future__ import annotations

import re

#: sf-integer: at most 15 digits, optionally negative; ";param" may follow.
_INTEGER = re.compile(r"(-?[0-9]{1,15})(?:;.*)?")
_BOOLEAN = re.compile(r"\?([01])(?:;.*)?")


def parse_integer(value: str | None) -> int | None:
    """An Integer item, or None when absent or malformed."""
    if value is None:
        return None
    match = _INTEGER.fullmatch(value.strip(" "))
    return None if match is None else int(match.group(1))


def parse_boolean(value: str | None) -> bool | None:
    """A Boolean item (``?1``/``?0``), or None: ``true`` or ``1`` are not Booleans."""
    if value is None:
        return None
    match = _BOOLEAN.fullmatch(value.strip(" "))
    return None if match is None else match.group(1) == "1"


def boolean(value: bool) -> str:
    return "?1" if value else "?0"


def dictionary(values: dict[str, int]) -> str:
    """A Dictionary of Integers, in the order given (``max-size=1000, max-age=3600``)."""
    return ", ".join(f"{key}={value}" for key, value in values.items())
