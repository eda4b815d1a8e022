"""Bytes on disk: one data file and one small sidecar record per upload.

The sidecar (``<id>.json``) is the durable copy of the upload record. The
embedded registry uses it as *the* record; the Redis registry rebuilds a lost
Redis record from it (docs/architecture.md, invariant 8). It is always replaced whole
(write to a temporary file, then rename) so a reader never sees half of one.

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
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .protocol import InsufficientStorage, is_valid_upload_id
from .records import UploadRecord

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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a write may take only part)."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])


class FileStore:
    def __init__(self, root: str | os.PathLike[str], fsync: bool = False, mode: int | None = None):
        self.root = Path(root)
        self.mode = DEFAULT_MODE if mode is None else mode
        self.uploads = self.root / "uploads"
        make_private_dir(self.uploads, self.mode)
        self.fsync = fsync

    # -- paths ---------------------------------------------------------------

    def data_path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.uploads / upload_id

    def sidecar_path(self, upload_id: str) -> Path:
        return self.data_path(upload_id).with_suffix(".json")

    # -- sidecar records -------------------------------------------------------

    def create_data(self, upload_id: str) -> int:
        """A new upload's empty data file, open read-write; its sidecar makes it exist later."""
        try:
            return open_nofollow(self.data_path(upload_id), os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except OSError as error:
            raise_if_disk_full(error)
            raise

    def write_sidecar(self, record: UploadRecord) -> None:
        path = self.sidecar_path(record.id)
        # Unique per call: two threads (or a lapsed and a new holder) never
        # write into each other's temporary file.
        temporary = path.with_suffix(f".json.{secrets.token_hex(8)}.tmp")
        try:
            fd = open_nofollow(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                write_all(fd, record.to_json().encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)  # replaces a planted link itself, never its target
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise_if_disk_full(error)
            raise

    def read_sidecar(self, upload_id: str) -> UploadRecord | None:
        try:
            fd = open_nofollow(self.sidecar_path(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        with open(fd, "rb") as handle:
            return UploadRecord.from_json(handle.read())

    def delete(self, upload_id: str) -> None:
        """Sidecar first: once it is gone the upload no longer exists."""
        for path in (self.sidecar_path(upload_id), self.data_path(upload_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def upload_ids(self) -> Iterator[str]:
        for entry in os.scandir(self.uploads):
            name = entry.name
            if name.endswith(".json") and is_valid_upload_id(name[:-5]):
                yield name[:-5]

    # -- data ----------------------------------------------------------------

    def open_for_append(self, upload_id: str, offset: int) -> int:
        """A read-write descriptor positioned at ``offset`` (reads verify trailers).

        Whatever the file holds past the recorded offset was never
        acknowledged (a crash between write and commit, or a rejected
        checksummed chunk), so it is cut off before appending.
        """
        fd = open_nofollow(self.data_path(upload_id), os.O_RDWR)
        try:
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_for_reading(self, upload_id: str) -> BinaryIO:
        """The data file for a download (a link in its place is refused)."""
        return open(open_nofollow(self.data_path(upload_id), os.O_RDONLY), "rb")

    def concatenate(
        self,
        upload_id: str,
        part_ids: list[str],
        lengths: list[int],
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """Replace the data of ``upload_id`` by the parts' first ``lengths`` bytes, in order.

        The kernel copies (``copy_file_range``, else ``sendfile``): no byte
        passes through Python. Parts are opened one at a time, so a join of
        a thousand parts holds two descriptors, not a thousand (several
        joins at once stay far below the usual limit of 1024). A part that
        is gone raises FileNotFoundError; the caller leaves the final
        unjoined. ``between`` runs every COPY_PIECE bytes: the caller's lease
        renewal, which may stop a long copy.
        """
        try:
            out = open_nofollow(self.data_path(upload_id), os.O_RDWR)
            try:
                os.ftruncate(out, 0)
                position = 0
                for part_id, length in zip(part_ids, lengths, strict=True):
                    source = open_nofollow(self.data_path(part_id), os.O_RDONLY)
                    try:
                        for start in range(0, length, COPY_PIECE):
                            piece = min(COPY_PIECE, length - start)
                            copy_range(source, out, piece, position, start)
                            position += piece
                            between()
                    finally:
                        os.close(source)
                if self.fsync:
                    os.fsync(out)
            finally:
                os.close(out)
        except OSError as error:
            raise_if_disk_full(error)
            raise

    def size(self, upload_id: str) -> int:
        return os.stat(self.data_path(upload_id)).st_size


#: Bytes joined between two lease renewals during a concatenation.
COPY_PIECE = 256 * 1024 * 1024


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


def raise_if_disk_full(error: OSError) -> None:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise InsufficientStorage("the server's storage is full; retry later") from error
