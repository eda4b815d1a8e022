"""Embedded registry: one host, no Redis, any number of workers and threads.

The store's durable record (the file store's sidecar) is the record. Locks
are ``flock`` locks on ``<directory>/locks/<id>.lock``, in the local
directory it is given (the data directory): each acquisition opens its own file description, so
they exclude threads of one process as well as other processes, and the
kernel drops them when a worker dies, however it dies.

The lock file is two fixed slots of :data:`SLOT` bytes, overwritten in
place: the holder's token and process id, then the mailbox, holding
``hard:<token>``, ``soft:<token>``, ``ack:<token>`` or blanks. A release
request is a write into the mailbox slot and a datagram with the upload's id
to the holder's process, whose doorbell thread wakes the holder (see
wakeups.py). Nothing is created, renamed or removed per request: with
thousands of uploads streaming, the file system stalled every directory
operation for seconds while it wrote back dirty pages (a rename freeing the
replaced file's block waited behind the writeback, holding the directory),
and a mailbox file replaced per ``HEAD`` put every ``HEAD`` in that queue.
A read racing a write may see a mix of both; a mixed slot names no holder's
token, so it reads as no request, and the requester asks again.

Each process listens on an abstract unix socket named after the data
directory and its pid, so nothing is left on disk when it dies. Like every
file under the data directory, lock files are opened without following
links (see files.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import secrets
import shutil
import socket
from pathlib import Path

from ..files import DEFAULT_MODE, make_private_dir, open_nofollow, read_small_file, remove_unknown
from ..ledger import FileLedger, FinishLedger
from ..records import UploadRecord
from ..store import Store
from .base import HeartbeatResult, Lease, LeaseLost, Registry, ReleaseState
from .wakeups import Doorbells, Wakeup

#: Bytes of each slot of a lock file: a token of 32 hex digits with its pid or its kind.
SLOT = 64


class FileLease(Lease):
    #: The kernel keeps an flock for as long as its holder lives: nothing to renew.
    interval = math.inf

    def __init__(
        self, registry: EmbeddedRegistry, upload_id: str, fd: int, token: str, wakeup: Wakeup
    ):
        self.registry = registry
        self.upload_id = upload_id
        self.fd = fd
        self.token = token
        self.wakeup = wakeup

    def heartbeat(self) -> HeartbeatResult:
        request = self._mailbox()
        if request == f"hard:{self.token}":
            return HeartbeatResult.HARD_RELEASE
        if request == f"soft:{self.token}":
            return HeartbeatResult.SOFT_RELEASE
        return HeartbeatResult.HELD

    def acknowledge(self) -> None:
        if self._mailbox() == f"soft:{self.token}":
            os.pwrite(self.fd, _slot(f"ack:{self.token}"), SLOT)

    def is_valid(self) -> bool:
        return self.fd >= 0  # the kernel keeps the lock for as long as we live

    def _mailbox(self) -> str:
        """The mailbox, read through the lock file the holder keeps open."""
        return _slots_of(os.pread(self.fd, 2 * SLOT, 0))[1]

    def release(self) -> None:
        if self.fd < 0:
            return
        if self._mailbox().endswith(self.token):
            os.pwrite(self.fd, _slot(""), SLOT)
        fd, self.fd = self.fd, -1
        self.registry.doorbells.remove(self.upload_id, self.wakeup)
        self.wakeup.close()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class EmbeddedRegistry(Registry):
    def __init__(
        self,
        store: Store,
        directory: str | os.PathLike[str],
        lock_ttl: float,
        lock_wait: float,
        renewal_interval: float,
        mode: int | None = None,
    ):
        super().__init__(store, lock_ttl, lock_wait, renewal_interval)
        self.mode = DEFAULT_MODE if mode is None else mode
        self.doorbells = Doorbells(self._listen, "resumable-doorbells")
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        #: Abstract socket names of this data directory's processes, without the pid.
        self.address_prefix = b"\0resumable-" + hashlib.sha256(
            str(Path(directory).resolve()).encode()
        ).hexdigest()[:24].encode()
        self.locks = Path(directory) / "locks"
        make_private_dir(self.locks, self.mode)
        self.waiting = Path(directory) / "waiting"
        self.directory = Path(directory)

    def finish_ledger(self) -> FinishLedger:
        return FileLedger(self.directory, self.mode)

    def remove_leftovers(self, older_than: float) -> int:
        """Lock files of uploads that are gone (a crash between deleting and unlocking)."""
        return remove_unknown(self.locks, set(self.store.upload_ids()), older_than)

    def lock_path(self, upload_id: str) -> Path:
        return self.locks / f"{upload_id}.lock"

    def read_mailbox(self, upload_id: str) -> str | None:
        slots = _read_slots(self.lock_path(upload_id))
        return None if slots is None else slots[1]

    def write_mailbox(self, upload_id: str, value: str) -> None:
        """Overwrite the mailbox slot; no lock file means nobody holds the upload."""
        with contextlib.suppress(FileNotFoundError):
            fd = open_nofollow(self.lock_path(upload_id), os.O_WRONLY)
            try:
                os.pwrite(fd, _slot(value), SLOT)
            finally:
                os.close(fd)

    # -- records ---------------------------------------------------------------

    def put_record(self, record: UploadRecord) -> None:
        self.store.write_record(record)

    def get(self, upload_id: str) -> UploadRecord | None:
        return self.store.read_record(upload_id)

    def save_locked(self, lease: Lease, record: UploadRecord) -> None:
        if not lease.is_valid():
            raise LeaseLost(f"lost the lock on {record.id}")
        self.store.write_record(record)

    def delete_locked(self, lease: Lease) -> None:
        upload_id = lease.upload_id
        self.store.delete(upload_id)
        with contextlib.suppress(FileNotFoundError):
            self.lock_path(upload_id).unlink()

    # -- concatenation: waiting/<part id>/<final id> marker files ----------------

    def add_waiting(self, final_id: str, part_ids: list[str]) -> None:
        for part_id in set(part_ids):
            self._add_marker(self.waiting / part_id, final_id)

    def _add_marker(self, folder: Path, final_id: str) -> None:
        """Create ``folder/final_id``, whatever removes an empty ``folder`` meanwhile.

        ``remove_waiting`` removes a part's folder once it is empty, and a
        deleted part's folder goes with it: either can happen between our
        ``mkdir`` and the marker's creation. Trying again is safe, as both
        steps are idempotent; a part deleted for good leaves a marker nobody
        reads, and gc removes the final that waits for it.
        """
        for _attempt in range(100):
            try:
                make_private_dir(folder, self.mode)
                fd = open_nofollow(folder / final_id, os.O_WRONLY | os.O_CREAT)
            except FileNotFoundError:
                continue  # the folder was removed under us
            os.close(fd)
            return
        raise OSError(f"could not index final {final_id} under {folder.name}")

    def waiting_finals(self, part_id: str) -> list[str]:
        try:
            return sorted(os.listdir(self.waiting / part_id))
        except FileNotFoundError:
            return []

    def remove_waiting(self, final_id: str, part_ids: list[str]) -> None:
        for part_id in set(part_ids):
            with contextlib.suppress(FileNotFoundError):
                (self.waiting / part_id / final_id).unlink()
            with contextlib.suppress(OSError):
                (self.waiting / part_id).rmdir()  # only when empty

    def drop_waiting_index(self, part_id: str) -> None:
        shutil.rmtree(self.waiting / part_id, ignore_errors=True)

    # -- locks -----------------------------------------------------------------

    def _open_lock(self, upload_id: str) -> int:
        return open_nofollow(self.lock_path(upload_id), os.O_RDWR | os.O_CREAT)

    def try_acquire(self, upload_id: str) -> Lease | None:
        fd = self._open_lock(upload_id)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        token = secrets.token_hex(16)
        wakeup = None
        try:
            wakeup = Wakeup()
            self.doorbells.add(upload_id, wakeup)
            os.pwrite(fd, _slot(f"{token} {os.getpid()}") + _slot(""), 0)
            if os.fstat(fd).st_size > 2 * SLOT:
                os.ftruncate(fd, 2 * SLOT)
        except BaseException:
            if wakeup is not None:
                self.doorbells.remove(upload_id, wakeup)
                wakeup.close()
            os.close(fd)  # drops the lock: never keep one nobody holds
            raise
        return FileLease(self, upload_id, fd, token, wakeup)

    def _holder(self, upload_id: str) -> tuple[str, int] | None:
        """The holder's token and process id, or None when nobody holds the lock."""
        if not self.is_locked(upload_id):
            return None
        slots = _read_slots(self.lock_path(upload_id))
        token, _, pid = (slots[0] if slots else "").partition(" ")
        if not token:
            return None
        return token, int(pid) if pid.isdigit() else 0

    def request_release(self, upload_id: str, hard: bool) -> bool:
        holder = self._holder(upload_id)
        if holder is None:
            return False
        token, pid = holder
        if hard:
            self.write_mailbox(upload_id, f"hard:{token}")
        elif self.read_mailbox(upload_id) != f"hard:{token}":
            self.write_mailbox(upload_id, f"soft:{token}")
        self._ring(pid, upload_id)
        return True

    # -- doorbells: a datagram to the holder's process ---------------------------

    def _address(self, pid: int) -> bytes:
        return self.address_prefix + b"-%d" % pid

    def _ring(self, pid: int, upload_id: str) -> None:
        """Tell the holder's process; a process that is gone or busy just misses it."""
        with contextlib.suppress(OSError):
            self.sender.sendto(upload_id.encode(), socket.MSG_DONTWAIT, self._address(pid))

    def _listen(self, doorbells: Doorbells) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as inbox:
            inbox.bind(self._address(os.getpid()))
            doorbells.listening()
            while True:
                doorbells.ring(inbox.recv(64).decode("ascii", "replace"))

    def release_state(self, upload_id: str) -> ReleaseState:
        if not self.is_locked(upload_id):
            return ReleaseState.UNLOCKED
        value = self.read_mailbox(upload_id)
        if value and value.startswith("ack:"):
            return ReleaseState.ACKNOWLEDGED
        return ReleaseState.PENDING

    def is_locked(self, upload_id: str) -> bool:
        try:
            fd = open_nofollow(self.lock_path(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we may just have taken
        return False


def _slot(text: str) -> bytes:
    """``text`` as one slot of the lock file: padded with blanks, ending in a newline."""
    data = text.encode()
    if len(data) >= SLOT:
        raise ValueError(f"lock file entry longer than {SLOT - 1} bytes")
    return data + b" " * (SLOT - 1 - len(data)) + b"\n"


def _read_slots(path: Path) -> tuple[str, str] | None:
    """The holder and the mailbox of a lock file, None when it does not exist."""
    data = read_small_file(path)
    return None if data is None else _slots_of(data)


def _slots_of(data: bytes) -> tuple[str, str]:
    text = data.decode("ascii", "replace")
    return text[:SLOT].strip(), text[SLOT : 2 * SLOT].strip()
