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
from collections.abc import Iterator
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

    def create(self, record: UploadRecord) -> None:
        """Make the empty data file, then the sidecar that makes it exist."""
        try:
            with open(self.data_path(record.id), "xb"):
                pass
            self.write_sidecar(record)
        except OSError as error:
            self.delete(record.id)
            raise_if_disk_full(error)
            raise

    def write_sidecar(self, record: UploadRecord) -> None:
        path = self.sidecar_path(record.id)
        temporary = path.with_suffix(f".json.{os.getpid()}.tmp")
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
        """A write descriptor positioned at ``offset``.

        Whatever the file holds past the recorded offset was never
        acknowledged (a crash between write and commit, or a rejected
        checksummed chunk), so it is cut off before appending.
        """
        fd = os.open(self.data_path(upload_id), os.O_WRONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def size(self, upload_id: str) -> int:
        return os.stat(self.data_path(upload_id)).st_size


def raise_if_disk_full(error: OSError) -> None:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise InsufficientStorage("the server's storage is full; retry later") from error
