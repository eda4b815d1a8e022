"""File operations shared by everything that keeps files: the file store, the embedded registry.

Every file under the data directory is opened with ``O_NOFOLLOW`` (new ones
also with ``O_EXCL``): a symbolic link planted in it is refused, never
followed to truncate or expose a file elsewhere. The directories are created
with the configured mode (``0700`` by default), so other local users cannot
plant anything in the first place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .protocol import InsufficientStorage, is_valid_upload_id

#: Flags of every open under the data directory: no link is ever followed.
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
DEFAULT_MODE = 0o700


def make_private_dir(path: Path, mode: int | None = None) -> None:
    """Create ``path`` (and missing parents) with ``mode``; an existing one is left as it is.

    ``mkdir``'s mode is masked by the umask, so it is set again explicitly
    on the directories this call created.
    """
    mode = DEFAULT_MODE if mode is None else mode
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=mode)
            os.chmod(folder, mode)


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    return os.open(path, flags | NOFOLLOW, mode)


#: fallocate(2) with FALLOC_FL_KEEP_SIZE, where the C library has it: the
#: standard library offers only posix_fallocate, which moves the end of file.
_FALLOC_FL_KEEP_SIZE = 1
_fallocate: Callable[[int, int, int, int], int] | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _fallocate = _libc.fallocate64
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - not Linux with glibc
    _fallocate = None


def preallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve disk blocks for bytes about to be written, without moving the end of file.

    Writing into reserved blocks spares the file system its per-page block
    reservation, which is a large part of the kernel's work when a body
    streams into the page cache. The end of file stays where the recorded
    offset is, so nothing about what was acknowledged changes. False when
    the system or file system cannot (or the disk has no room left for the
    whole range): the caller then just writes, and a full disk shows there.
    """
    if _fallocate is None:
        return False
    return _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0


def _read_all(fd: int) -> bytes:
    """A small file's bytes, from its start."""
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        chunks.append(chunk)
        if len(chunk) < 65536:  # a short read of a regular file is its end
            return b"".join(chunks)
        offset += len(chunk)


def read_small_file(path: Path) -> bytes | None:
    """A small file's bytes (opened without following links); None when it does not exist."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read_all(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a write may take only part)."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])


def copy_range(
    source: int, target: int, length: int, target_offset: int, source_offset: int = 0
) -> None:
    """Copy ``length`` bytes from ``source_offset`` of ``source`` to ``target_offset``."""
    copied = 0
    try:
        while copied < length:
            n = os.copy_file_range(
                source,
                target,
                length - copied,
                offset_src=source_offset + copied,
                offset_dst=target_offset + copied,
            )
            if n == 0:
                raise OSError(errno.EIO, "source file is shorter than its recorded length")
            copied += n
        return
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(target, target_offset + copied, os.SEEK_SET)
    while copied < length:
        n = os.sendfile(target, source, source_offset + copied, length - copied)
        if n == 0:
            raise OSError(errno.EIO, "source file is shorter than its recorded length")
        copied += n


def writable_problem(folder: Path) -> str | None:
    """Why a file cannot be written in ``folder`` now (its strerror: missing, read-only,
    full), or None."""
    probe = folder / f".write-test-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            write_all(fd, b"x")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as error:
        return error.strerror or str(error)
    return None


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the file system (or the user's quota) has no room left."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full() -> InsufficientStorage:
    """The ``507`` a full disk is answered with (an append says how much it kept instead)."""
    return InsufficientStorage("the server's storage is full; retry later")


def raise_if_disk_full(error: OSError) -> None:
    if is_disk_full(error):
        raise disk_full() from error


def remove_unknown(folder: Path, known: set[str], older_than: float) -> int:
    """Remove files of ``folder`` named for an upload not in ``known``, and temporary
    files, untouched since ``older_than``: how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in os.scandir(folder):
        name = entry.name
        upload_id = name.split(".", 1)[0]
        leftover = (
            name.endswith(".tmp")
            # Mailbox files of earlier versions: mailboxes live in lock files now.
            or ".release" in name
            or (is_valid_upload_id(upload_id) and upload_id not in known)
        )
        if not leftover:
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.stat().st_mtime < older_than:
                os.unlink(entry.path)
                removed += 1
    return removed
