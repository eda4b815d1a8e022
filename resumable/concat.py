"""Concatenation: a final upload made of partial uploads, joined by the kernel.

A final may be created before its partials finish (concatenation-unfinished).
It is completed by :meth:`Concatenator.complete` under the final's own lock,
which runs when a partial it waits for completes, and again whenever the
final is read (a safety net after a crash between the two). Completing
twice is harmless: the second call finds the final complete and stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .protocol import BadRequest, Locked, NotFound, PayloadTooLarge, is_valid_upload_id
from .records import UploadRecord
from .registry import LeaseLost, Mailbox, Registry
from .storage import FileStore


def parse_final(value: str, base_path: str, max_parts: int) -> list[str]:
    """``final;<url> <url> …`` → the partial ids in order (repeats allowed)."""
    kind, semicolon, rest = value.partition(";")
    if kind.strip() != "final" or not semicolon:
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    urls = rest.split()
    if not urls:
        raise BadRequest("Upload-Concat final lists no uploads")
    if len(urls) > max_parts:
        raise BadRequest(f"Upload-Concat final may list at most {max_parts} uploads")
    return [upload_id_from_url(url, base_path) for url in urls]


def upload_id_from_url(url: str, base_path: str) -> str:
    """The id of an upload URL: absolute, host-relative, or a bare id.

    Only the path counts (the client may know us under another host, e.g.
    behind a proxy); it must end in ``<base path><id>``.
    """
    try:
        path = unquote(urlsplit(url).path)
    except ValueError:  # e.g. unbalanced brackets of an IPv6 host
        raise NotFound(f"{url!r} is not an upload URL") from None
    if is_valid_upload_id(path):
        return path
    prefix, _, upload_id = path.rpartition("/")
    if not (prefix + "/").endswith(base_path) or not is_valid_upload_id(upload_id):
        raise NotFound(f"{url} is not an upload of this server")
    return upload_id


def final_length(parts: list[UploadRecord]) -> int | None:
    """Sum of the parts' lengths, once every one is known."""
    if any(part.length is None for part in parts):
        return None
    return sum(part.length for part in parts)  # type: ignore[misc]


@dataclass
class Concatenator:
    registry: Registry
    store: FileStore

    def load_parts(self, part_ids: list[str]) -> list[UploadRecord]:
        """The partials for a new final: each must exist and be a partial."""
        records: dict[str, UploadRecord] = {}
        for part_id in part_ids:
            if part_id in records:
                continue
            record = self.registry.get(part_id)
            if record is None:
                raise NotFound(f"partial upload {part_id} does not exist")
            if not record.is_partial:
                raise BadRequest(f"upload {part_id} is not a partial upload")
            records[part_id] = record
        return [records[part_id] for part_id in part_ids]

    def complete(self, final_id: str, wait: float = 0.0) -> UploadRecord | None:
        """Join the final's parts if all are complete; its record, or None if gone."""
        if wait == 0:
            lease = self.registry.try_acquire(final_id)
            if lease is None:  # someone else is joining it right now
                return self.registry.get(final_id)
        else:
            try:
                lease = self.registry.acquire(final_id, wait=wait)
            except Locked:
                return self.registry.get(final_id)
        try:
            final = self.registry.get(final_id)
            if final is None or final.is_complete:
                return final
            parts = [self.registry.get(part_id) for part_id in final.parts]
            if any(part is None or not part.is_complete for part in parts):
                return final
            lengths = [part.length for part in parts]  # type: ignore[union-attr]

            def keep_lease() -> None:
                # A long copy outlives a Redis lock's TTL unless renewed;
                # a lost lease means another request took over: stop.
                if lease.heartbeat() is Mailbox.LOST:
                    raise LeaseLost(final_id)

            try:
                self.store.concatenate(
                    final_id,
                    final.parts,
                    lengths,
                    keep_lease,  # type: ignore[arg-type]
                )
            except FileNotFoundError:
                return final  # a part was deleted meanwhile: it can never be joined
            final.length = final.offset = sum(lengths)  # type: ignore[arg-type]
            final.expires = None
            self.registry.save(lease, final)
            self.registry.remove_waiting(final_id, final.parts)
            return final
        finally:
            lease.release()

    def check_final_sizes(self, part_id: str, length: int, max_size: int) -> None:
        """Refuse a partial's late length that would make a waiting final too large."""
        for final_id in self.registry.waiting_finals(part_id):
            final = self.registry.get(final_id)
            if final is None or final.is_complete:
                continue
            total = 0
            for listed in final.parts:
                if listed == part_id:
                    total += length
                else:
                    part = self.registry.get(listed)
                    total += (part.length or 0) if part is not None else 0
            if total > max_size:
                raise PayloadTooLarge(
                    f"this length would make final upload {final_id} exceed {max_size} bytes"
                )

    def is_orphaned(self, final: UploadRecord, now: float) -> bool:
        """A waiting final that can never complete: a partial is gone or expired."""
        if final.is_complete:
            return False
        for part_id in set(final.parts):
            part = self.registry.get(part_id)
            if part is None or part.is_expired(now):
                return True
        return False

    def complete_waiting(self, part_id: str) -> None:
        """After ``part_id`` completed: complete every final that waited for it."""
        for final_id in self.registry.waiting_finals(part_id):
            self.complete(final_id, wait=self.registry.lock_wait)
