"""Waiting for a state instead of sleeping a guessed while."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds, asked every ``interval``.

    Servers, workers and replicas change state in their own time: a test polls
    for the state it needs, and asks once more after the deadline so that a
    loaded machine's late success still counts.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
