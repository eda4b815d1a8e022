"""The file store: one data file and one small sidecar record per upload, on local disk.

The sidecar (``<id>.json``) is the durable copy of the upload record. The
embedded registry uses it as *the* record; the Redis registry rebuilds a lost
Redis record from it (docs/architecture.md, invariant 8).

A sidecar holds two slots of the same size, each a header line (a CRC-32 and
a sequence number, in hex) and the record's JSON, padded with spaces. It is
created whole (a temporary file renamed into place); every later commit
overwrites the slot *not* holding the newest record, in place. A reader takes
the valid slot with the highest sequence number, so it never sees half a
record: a write it races (or one cut by a crash) fails its checksum, and the
other slot still holds the commit before. Updating in place matters: a new
file per commit made the file system allocate and free an inode every time,
and with hundreds of uploads committing it spent more time searching past
recently freed inodes than everything else the server did. A record that
outgrows its slots, or a sidecar in the older plain-JSON form, is written
whole again.

Files are opened as :mod:`resumable.files` says: never through a link.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from .files import (
    DEFAULT_MODE,
    _read_all,
    copy_range,
    make_private_dir,
    open_nofollow,
    preallocate,
    raise_if_disk_full,
    read_small_file,
    remove_unknown,
    writable_problem,
    write_all,
)
from .protocol import is_valid_upload_id
from .records import UploadRecord
from .store import Store, StoredAhead, StoredData, UploadWriter

#: Room left in each slot for the record to grow (its offset's digits, a length
#: learnt late, an expiry or finish time), so it is rarely written whole again.
SLOT_SPARE = 160
SLOT_ALIGN = 256
_HEADER = "{crc:08x} {seq:016x}\n"
_HEADER_SIZE = 26


def _slot(data: bytes, seq: int, size: int) -> bytes:
    """One slot: header, the record's JSON, spaces up to ``size`` bytes, a newline."""
    crc = zlib.crc32(data, seq)
    content = _HEADER.format(crc=crc, seq=seq).encode() + data
    return content.ljust(size - 1) + b"\n"


def _read_slot(raw: bytes) -> tuple[int, bytes] | None:
    """(sequence, JSON) of a slot whose checksum matches, else None."""
    header, data = raw[:_HEADER_SIZE], raw[_HEADER_SIZE:].rstrip(b" \n")
    try:
        crc, seq = int(header[:8], 16), int(header[9:25], 16)
    except ValueError:
        return None
    if header[8:9] != b" " or header[25:26] != b"\n" or zlib.crc32(data, seq) != crc:
        return None
    return seq, data


def _newest_slot(raw: bytes) -> tuple[int, int, bytes] | None:
    """(index, sequence, JSON) of the newest valid slot of a sidecar's bytes."""
    size = len(raw) // 2
    best = None
    for index in (0, 1):
        found = _read_slot(raw[index * size : (index + 1) * size]) if size else None
        if found is not None and (best is None or found[0] > best[1]):
            best = (index, *found)
    return best


def read_sidecar_file(path: Path) -> UploadRecord | None:
    """The newest record a sidecar holds; None when the file does not exist."""
    raw = read_small_file(path)
    if raw is None:
        return None
    if raw.startswith(b"{"):  # the plain-JSON form of earlier versions
        return UploadRecord.from_json(raw)
    newest = _newest_slot(raw)
    if newest is None:
        raise ValueError(f"{path.name} holds no valid record")
    return UploadRecord.from_json(newest[2])


class FileWriter(UploadWriter):
    """Appends to a data file through one descriptor, positioned at the end of what is kept."""

    def __init__(self, fd: int, fsync: bool):
        self.fd = fd
        self.fsync = fsync

    def write(self, data: memoryview) -> None:
        write_all(self.fd, data)

    def splice_target(self) -> int | None:
        return self.fd

    def reserve(self, offset: int, length: int) -> bool:
        return preallocate(self.fd, offset, length)

    def cut(self, end: int) -> int:
        os.ftruncate(self.fd, end)
        os.lseek(self.fd, end, os.SEEK_SET)
        return end

    def read_back(self, position: int, view: memoryview) -> int:
        return os.preadv(self.fd, [view], position)

    def settle(self, record: UploadRecord) -> None:
        """The bytes are in the page cache once written; with --fsync, on disk too."""
        if self.fsync:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class FileStore(Store):
    """Uploads under ``<root>/uploads``: ``<id>`` (the bytes) and ``<id>.json`` (the sidecar)."""

    def __init__(self, root: str | os.PathLike[str], fsync: bool = False, mode: int | None = None):
        self.root = Path(root)
        self.mode = DEFAULT_MODE if mode is None else mode
        self.uploads = self.root / "uploads"
        make_private_dir(self.uploads, self.mode)
        self.fsync = fsync

    def storage_info(self, upload_id: str) -> dict[str, str]:
        return {"Type": "filestore", "Path": str(self.data_path(upload_id))}

    def problem(self) -> str | None:
        reason = writable_problem(self.uploads)
        return None if reason is None else f"{self.uploads} is not writable: {reason}"

    # -- paths ---------------------------------------------------------------

    def data_path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.uploads / upload_id

    def sidecar_path(self, upload_id: str) -> Path:
        return self.data_path(upload_id).with_suffix(".json")

    # -- records: the sidecar ----------------------------------------------------

    def write_record(self, record: UploadRecord) -> None:
        """Commit ``record``: into the older slot in place, or the whole file anew."""
        path = self.sidecar_path(record.id)
        data = record.to_json().encode()
        try:
            fd = open_nofollow(path, os.O_RDWR)
        except FileNotFoundError:
            self._write_whole(path, data, 1)
            return
        except OSError as error:
            raise_if_disk_full(error)
            raise
        try:
            raw = _read_all(fd)
            newest = _newest_slot(raw)
            size = len(raw) // 2
            if newest is None or len(data) + _HEADER_SIZE + 1 > size:
                seq = 1 if newest is None else newest[1] + 1
                os.close(fd)
                fd = -1
                self._write_whole(path, data, seq)
                return
            index, seq, _ = newest
            os.pwrite(fd, _slot(data, seq + 1, size), (1 - index) * size)
            if self.fsync:
                os.fdatasync(fd)
        except OSError as error:
            raise_if_disk_full(error)
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    def _write_whole(self, path: Path, data: bytes, seq: int) -> None:
        """A new sidecar (the record in slot 0, slot 1 blank) renamed over ``path``."""
        size = -(-(len(data) + _HEADER_SIZE + 1 + SLOT_SPARE) // SLOT_ALIGN) * SLOT_ALIGN
        # Unique per call: two threads (or a lapsed and a new holder) never
        # write into each other's temporary file.
        temporary = path.with_suffix(f".json.{secrets.token_hex(8)}.tmp")
        try:
            fd = open_nofollow(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                write_all(fd, _slot(data, seq, size) + b" " * (size - 1) + b"\n")
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

    def read_record(self, upload_id: str) -> UploadRecord | None:
        """The newest record of the sidecar, or None when the upload does not exist."""
        return read_sidecar_file(self.sidecar_path(upload_id))

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

    def remove_leftovers(self, older_than: float) -> int:
        """Data files without a sidecar (a crashed creation or deletion) and
        temporary sidecars, untouched since ``older_than``."""
        known = set(self.upload_ids())
        return remove_unknown(self.uploads, known, older_than)

    # -- data ----------------------------------------------------------------

    def create(self, upload_id: str) -> FileWriter:
        """A new upload's empty data file, open read-write; its sidecar makes it exist later."""
        try:
            fd = open_nofollow(self.data_path(upload_id), os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except OSError as error:
            raise_if_disk_full(error)
            raise
        return FileWriter(fd, self.fsync)

    def open_writer(self, upload_id: str, offset: int) -> FileWriter:
        """A writer positioned at ``offset`` (its reads verify trailers).

        Whatever the file holds past the recorded offset was never
        acknowledged (a crash between write and commit, or a rejected
        checksummed chunk), so it is cut off before appending; unless the
        sidecar already records it. Behind Redis the sidecar is written
        before each commit reaches Redis (architecture.md, invariant 8), so
        a crash between the two leaves it ahead of the offset asked for,
        with the bytes in the file: cutting them would leave a sidecar that
        claims bytes the file no longer has, and a Redis rebuilt from it
        would resume the client past them. StoredAhead moves the offset up
        instead (the bytes are the client's own), as the S3 store does.
        """
        fd = open_nofollow(self.data_path(upload_id), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size > offset:
                recorded = self.read_record(upload_id)
                if recorded is not None and offset < recorded.offset <= size:
                    raise StoredAhead(recorded.offset)
            if size != offset:
                os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return FileWriter(fd, self.fsync)

    def open_data(self, upload_id: str) -> StoredData:
        """The data file for a download (a link in its place is refused), described
        by ``fstat`` of the same descriptor, so what is described is what is sent."""
        file = open(open_nofollow(self.data_path(upload_id), os.O_RDONLY), "rb")
        try:
            status = os.fstat(file.fileno())
        except BaseException:
            file.close()
            raise
        return StoredData(file, status.st_size, status.st_mtime)

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


#: Bytes joined between two lease renewals during a concatenation.
COPY_PIECE = 256 * 1024 * 1024
