"""Where an upload's bytes and the durable copy of its record live: one interface.

The views, the append loop, downloads, concatenation, gc and the registries
talk to a :class:`Store` and the :class:`UploadWriter` it opens, never to
paths or descriptors, so a second store (object storage) changes no other
layer. A store keeps its own fast paths inside itself: the file store lets
the kernel splice a body into the file (``UploadWriter.splice_target``) and
copy parts with ``copy_file_range``.

What a store promises (docs/architecture.md, "Stores"):

* bytes a writer has ``settle``\\ d are stored: the registry may then commit
  an offset that counts them, and a crash afterwards does not lose them;
* bytes written but not settled may be lost, and bytes past the recorded
  offset may remain (a crash between writing and committing): a writer
  opened at an offset drops whatever lies past it before appending;
* ``write_record`` keeps the durable copy of an upload's record, from which
  a registry that lost its own (Redis flushed or failed over) rebuilds it;
* an upload exists for the store while its record does: ``delete`` removes
  the record first, then the data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .records import UploadRecord
from .settings import Settings


class UploadWriter(ABC):
    """Appends to one upload, for the one request that holds its lock.

    Opened at the recorded offset; every ``write`` continues where the last
    one ended. Raises ``OSError`` as a file would (``ENOSPC`` when the
    storage is full): the append loop decides what is kept.
    """

    #: Called about every second while the writer waits on its storage (parts
    #: in flight, an object being put together), so the request that holds
    #: the upload keeps its lock through a slow store. It raises to end the
    #: wait when the lock is lost. Set by the append loop.
    keepalive: Callable[[], None] | None = None

    @abstractmethod
    def write(self, data: memoryview) -> None:
        """Append all of ``data``."""

    def splice_target(self) -> int | None:
        """A descriptor the kernel may move body bytes into directly, or None.

        The append loop then moves a body socket → pipe → here without the
        bytes passing through Python; they count as written.
        """
        return None

    def reserve(self, offset: int, length: int) -> bool:
        """Reserve room for bytes about to be written; False when it cannot."""
        return False

    @abstractmethod
    def cut(self, end: int) -> int:
        """Drop everything past ``end`` (bytes never settled); appends continue there.

        Returns where the bytes now end: a store that cannot keep unsettled
        bytes (object storage) goes back to what was settled.
        """

    @abstractmethod
    def read_back(self, position: int, view: memoryview) -> int:
        """Read written bytes from ``position`` into ``view``: how many (0 at the end)."""

    def hold(self) -> None:
        """Keep this request's bytes readable by ``read_back`` until settled (a trailer
        digest is checked after the last byte)."""
        return None

    @abstractmethod
    def settle(self, record: UploadRecord) -> None:
        """Make every byte written so far stored (and synced, where configured).

        ``record`` is the upload as the commit that follows will record it
        (its offset counts the bytes written). When it is complete, a store
        that keeps finished uploads in another form (one object) makes it
        now, before that commit says so.
        """

    @abstractmethod
    def close(self) -> None:
        """Let go of the writer's resources; unsettled bytes may be lost."""


@dataclass
class StoredData:
    """An upload's bytes opened for a download, and what describes them."""

    #: Readable, seekable, closed with the response.
    file: BinaryIO
    size: int
    #: Seconds since the epoch of the last change (Last-Modified, the ETag).
    modified: float


class StoreUnavailable(Exception):
    """The storage cannot be reached now (object storage down, throttling): answered 503."""


class StoredAhead(Exception):
    """The store holds more of an upload than the registry's offset and cannot cut it back.

    A crash between the store's write and the registry's commit leaves the
    store ahead; those bytes were never acknowledged, but they are the
    client's own, so the offset moves up to them and the client is told (409).
    """

    def __init__(self, offset: int):
        super().__init__(f"the store holds {offset} bytes")
        self.offset = offset


class Store(ABC):
    """Uploads' bytes and the durable copies of their records."""

    @abstractmethod
    def create(self, upload_id: str) -> UploadWriter:
        """A new upload's empty data, and a writer at offset 0.

        The upload exists for others only once its record is written.
        """

    @abstractmethod
    def open_writer(self, upload_id: str, offset: int) -> UploadWriter:
        """A writer appending at ``offset``, having dropped whatever lies past it.

        StoredAhead when what lies past it cannot be dropped.
        """

    def assemble(self, record: UploadRecord) -> None:
        """Make a complete upload's bytes readable by ``open_data`` before the commit that
        says it is complete (so they can be checked first). Files need nothing; object
        storage puts its object together and notes it in its own record."""
        return None

    @abstractmethod
    def open_data(self, upload_id: str) -> StoredData:
        """The bytes for a download; FileNotFoundError when they are gone."""

    @abstractmethod
    def write_record(self, record: UploadRecord) -> None:
        """Keep ``record`` as the upload's durable record (after each commit)."""

    @abstractmethod
    def read_record(self, upload_id: str) -> UploadRecord | None:
        """The durable record, or None when the upload does not exist here."""

    @abstractmethod
    def delete(self, upload_id: str) -> None:
        """Remove the upload: its record first, then its bytes."""

    @abstractmethod
    def upload_ids(self) -> Iterator[str]:
        """Every upload that has a durable record (for gc)."""

    @abstractmethod
    def concatenate(
        self,
        upload_id: str,
        part_ids: list[str],
        lengths: list[int],
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """Replace the data of ``upload_id`` by the parts' first ``lengths`` bytes, in order.

        ``between`` is called now and then during a long join (the caller's
        lease renewal, which may stop it by raising). A part that is gone
        raises FileNotFoundError.
        """

    @abstractmethod
    def remove_leftovers(self, older_than: float) -> int:
        """Remove what crashes left behind before ``older_than``: how many pieces."""

    def storage_info(self, upload_id: str) -> dict[str, str]:
        """Where the upload's bytes are, for hook receivers (tusd's ``Storage``)."""
        return {}

    @abstractmethod
    def problem(self) -> str | None:
        """Why uploads cannot be stored now (for /readyz), or None."""


def make_store(settings: Settings) -> Store:
    """The S3 store when a bucket is configured, else the file store in the data directory."""
    if settings.s3_bucket:
        from .s3store import S3Store

        return S3Store(
            settings.s3_bucket,
            settings.data_dir,
            prefix=settings.s3_prefix,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            part_size=settings.s3_part_size,
            mode=settings.data_dir_permissions,
        )
    from .filestore import FileStore

    return FileStore(settings.data_dir, fsync=settings.fsync, mode=settings.data_dir_permissions)
