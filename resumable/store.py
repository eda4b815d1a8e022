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


class UploadWriter(ABC):
    """Appends to one upload, for the one request that holds its lock.

    Opened at the recorded offset; every ``write`` continues where the last
    one ended. Raises ``OSError`` as a file would (``ENOSPC`` when the
    storage is full): the append loop decides what is kept.
    """

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
    def cut(self, end: int) -> None:
        """Drop everything past ``end`` (bytes never acknowledged); appends continue there."""

    @abstractmethod
    def read_back(self, position: int, view: memoryview) -> int:
        """Read written bytes from ``position`` into ``view``: how many (0 at the end)."""

    @abstractmethod
    def settle(self) -> None:
        """Make every byte written so far stored (and synced, where configured)."""

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


class Store(ABC):
    """Uploads' bytes and the durable copies of their records."""

    @abstractmethod
    def create(self, upload_id: str) -> UploadWriter:
        """A new upload's empty data, and a writer at offset 0.

        The upload exists for others only once its record is written.
        """

    @abstractmethod
    def open_writer(self, upload_id: str, offset: int) -> UploadWriter:
        """A writer appending at ``offset``, having dropped whatever lies past it."""

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
