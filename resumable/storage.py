"""Bytes on disk: one data file and one small sidecar record per upload.

The sidecar (``<id>.json``) is the durable copy of the upload record. The
embedded registry uses it as *the* record; the Redis registry rebuilds a lost
Redis record from it (design.md, invariant 8). It is always replaced whole
(write to a temporary file, then rename) so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from .protocol import InsufficientStorage, is_valid_upload_id
from .records import UploadRecord


class FileStore:
    def __init__(self, root: str | os.PathLike[str], fsync: bool = False):
        self.root = Path(root)
        self.uploads = self.root / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    # -- paths ---------------------------------------------------------------

    def data_path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.uploads / upload_id

    def sidecar_path(self, upload_id: str) -> Path:
        return self.data_path(upload_id).with_suffix(".json")

    # -- sidecar records -------------------------------------------------------

    def create_data(self, upload_id: str) -> None:
        """The empty data file of a new upload; its sidecar makes it exist later."""
        try:
            with open(self.data_path(upload_id), "xb"):
                pass
        except OSError as error:
            raise_if_disk_full(error)
            raise

    def write_sidecar(self, record: UploadRecord) -> None:
        path = self.sidecar_path(record.id)
        # Unique per call: two threads (or a lapsed and a new holder) never
        # write into each other's temporary file.
        temporary = path.with_suffix(f".json.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(record.to_json())
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise_if_disk_full(error)
            raise

    def read_sidecar(self, upload_id: str) -> UploadRecord | None:
        try:
            text = self.sidecar_path(upload_id).read_bytes()
        except FileNotFoundError:
            return None
        return UploadRecord.from_json(text)

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
        fd = os.open(self.data_path(upload_id), os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def concatenate(
        self,
        upload_id: str,
        part_ids: list[str],
        lengths: list[int],
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """Replace the data of ``upload_id`` by the parts' first ``lengths`` bytes, in order.

        The kernel copies (``copy_file_range``, else ``sendfile``): no byte
        passes through Python. Every part is opened before the copy starts,
        so one deleted meanwhile still copies whole (FileNotFoundError if it
        is already gone). ``between`` runs every COPY_PIECE bytes: the
        caller's lease renewal, which may stop a long copy.
        """
        sources: list[int] = []
        try:
            for part_id in part_ids:
                sources.append(os.open(self.data_path(part_id), os.O_RDONLY | os.O_CLOEXEC))
            with open(self.data_path(upload_id), "r+b") as target:
                target.truncate(0)
                out = target.fileno()
                position = 0
                for source, length in zip(sources, lengths, strict=True):
                    for start in range(0, length, COPY_PIECE):
                        piece = min(COPY_PIECE, length - start)
                        copy_range(source, out, piece, position, start)
                        position += piece
                        between()
                if self.fsync:
                    os.fsync(out)
        except OSError as error:
            raise_if_disk_full(error)
            raise
        finally:
            for fd in sources:
                os.close(fd)

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
