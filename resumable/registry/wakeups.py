"""Waking the thread that holds an upload when a release request is posted for it.

A writer holding an upload used to look for release requests on a timer, a
few times a second, whether or not anything had been asked: hundreds of idle
uploads meant thousands of wake-ups a second. Here a request rings a
doorbell instead. Each process keeps one thread that receives the rings for
the uploads its threads hold (a datagram socket for the embedded registry, a
pub/sub channel for Redis) and wakes the holder: its :class:`Wakeup` is an
``eventfd`` the body reader polls beside the client's socket, and a flag the
copy loop reads between slices. A ring that is lost costs only latency: the
requester asks again every half second, and a Redis holder also reads its
mailbox when it renews its lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("resumable")


class Wakeup:
    """One holder's doorbell: an eventfd to poll while waiting, a flag to read while busy."""

    __slots__ = ("fd", "rung")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.rung = False

    def ring(self) -> None:
        self.rung = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self.fd, 1)

    def answer(self) -> bool:
        """Whether it rang since the last answer; silences it."""
        rang, self.rung = self.rung, False
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)
        return rang

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Silent:
    """The doorbell of a holder nobody can ask (a creation still being born)."""

    fd = -1
    rung = False

    def ring(self) -> None:
        """Nobody rings it."""

    def answer(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to close."""


class Doorbells:
    """The holders of this process, by upload id, and the thread that rings them.

    ``listen(doorbells)`` runs on that thread, started when the first holder
    registers (and again in a forked child, which does not inherit threads).
    It calls :meth:`listening` once requests can reach it (the registration
    waits for that, so no request to the first holder is missed), then
    :meth:`ring` for every request it receives; it returns only if it cannot
    go on, and is then started again at the next registration.
    """

    #: Seconds a registration waits for a new listener to be reachable.
    START_SECONDS = 2.0

    def __init__(self, listen: Callable[[Doorbells], None], name: str):
        self.listen = listen
        self.name = name
        self.holders: dict[str, Wakeup] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.started = threading.Event()
        self.pid = 0

    def add(self, upload_id: str, wakeup: Wakeup) -> None:
        with self.lock:
            if self.pid != os.getpid():
                self.holders.clear()  # a forked child holds nothing yet
                self.thread = None
                self.pid = os.getpid()
            if self.thread is None or not self.thread.is_alive():
                self.started.clear()
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
                self.started.wait(self.START_SECONDS)
            self.holders[upload_id] = wakeup

    def listening(self) -> None:
        self.started.set()

    def remove(self, upload_id: str, wakeup: Wakeup | Silent) -> None:
        with self.lock:
            if self.holders.get(upload_id) is wakeup:
                del self.holders[upload_id]

    def ring(self, upload_id: str) -> None:
        wakeup = self.holders.get(upload_id)
        if wakeup is not None:
            wakeup.ring()

    def _run(self) -> None:
        try:
            self.listen(self)
        except Exception as error:  # noqa: BLE001 - holders fall back to asking again
            log.warning("release requests are not delivered for now: %s", error)
        finally:
            self.started.set()
