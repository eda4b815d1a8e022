"""The process is stopping: one flag and one descriptor that every running transfer watches.

On SIGTERM (``docker stop``, systemd, or the old workers of a graceful reload on
SIGHUP) gunicorn stops accepting, waits up to ``--shutdown-timeout`` seconds for
the connections it has, and then the master SIGKILLs what is left. A PATCH
streams for hours: left alone it would run into that kill, losing what arrived
since its last commit, leaving its client without an answer and, with Redis,
its lock in place for ``--lock-ttl`` while the client retries.

So the worker's exit signal begins the stop here (worker.py), and every
running transfer (transfer.py) ends its body at once: a thread asleep in
``poll`` wakes through :attr:`Stopping.fd` (polled beside the client's socket
and the upload's doorbell, body.py), a thread copying bytes sees
:attr:`Stopping.is_set`, read between slices. It then commits what arrived,
as for a body cut short, and answers with the offset reached; the client
resumes from there, on another server or after the restart.

A stop is never taken back: the flag stays set and the descriptor (an
eventfd, written and never read) stays readable, so a transfer that starts
its wait after the stop wakes at once too. Each process has its own: a
forked worker gets a fresh one, so stopping one worker wakes no other.
"""

from __future__ import annotations

import contextlib
import os


class Stopping:
    """One process's stop: ``is_set`` to read between slices, ``fd`` to poll while waiting."""

    __slots__ = ("fd", "is_set")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.is_set = False

    def set(self) -> None:
        """Begin stopping (safe in a signal handler): the flag, then the descriptor."""
        self.is_set = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self.fd, 1)


_process = Stopping()


def this_process() -> Stopping:
    """The stop of the calling process."""
    return _process


def begin() -> None:
    """This process is stopping: every running transfer ends its body and answers."""
    _process.set()


def _after_fork_in_child() -> None:
    global _process
    with contextlib.suppress(OSError):
        os.close(_process.fd)
    _process = Stopping()


os.register_at_fork(after_in_child=_after_fork_in_child)
