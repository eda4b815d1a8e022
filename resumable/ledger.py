"""The post-finish ledger: finished uploads whose post-finish event is still owed.

A receiver must hear of every finished upload at least once, even when the
process that finished it is killed between its commit and the delivery.
So an entry is written *before* the commit that finishes an upload, holding
what the event will say, and removed once a receiver took the event. Any
process may deliver an entry it can claim (claims expire, so a killed
deliverer's entries pass to another); what an entry means is decided by the
upload's record (lifecycle.py):

* the record is complete: the upload finished; deliver;
* the record is there and not complete, and the entry is older than a
  commit can take: the finishing commit failed; drop the entry (the next
  finishing commit writes a new one);
* the record is gone: the upload was deleted. A deletion of a finished
  upload *confirms* the entry first, under the upload's lock (deliver);
  an unconfirmed one belonged to a commit that never happened (drop).

Two backends, like the registry's: a folder of small files beside the
embedded registry, a Redis hash beside the Redis one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import make_private_dir, open_nofollow, read_small_file, write_all
from .protocol import is_valid_upload_id


@dataclass
class Owed:
    """One owed post-finish: the upload as the event describes it, and since when."""

    upload_id: str
    upload: dict[str, Any]
    since: float
    confirmed: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {"upload": self.upload, "since": self.since, "confirmed": self.confirmed},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, upload_id: str, text: str | bytes) -> Owed:
        data = json.loads(text)
        return cls(upload_id, data["upload"], float(data["since"]), bool(data["confirmed"]))


class FinishLedger(ABC):
    @abstractmethod
    def owe(self, owed: Owed) -> None:
        """Record an owed post-finish (before the commit that finishes the upload)."""

    @abstractmethod
    def get(self, upload_id: str) -> Owed | None:
        """The entry of ``upload_id``, or None."""

    def confirm(self, upload_id: str) -> None:
        """The upload is known finished (it is being deleted): its entry must be delivered."""
        owed = self.get(upload_id)
        if owed is not None and not owed.confirmed:
            owed.confirmed = True
            self.owe(owed)

    @abstractmethod
    def remove(self, upload_id: str) -> None:
        """The event was delivered, or is not owed after all."""

    @abstractmethod
    def entries(self) -> list[Owed]:
        """Every owed post-finish."""

    @abstractmethod
    def claim(self, upload_id: str, seconds: float) -> bool:
        """Deliver ``upload_id``'s event for the next ``seconds``, unless another process is."""

    @abstractmethod
    def unclaim(self, upload_id: str) -> None:
        """Give a claim back (the delivery failed; let the next attempt come sooner)."""


class FileLedger(FinishLedger):
    """``<data_dir>/post-finish/<id>.json`` per entry, ``<id>.claim`` per claim."""

    def __init__(self, root: str | os.PathLike[str], mode: int | None = None):
        self.folder = Path(root) / "post-finish"
        make_private_dir(self.folder, mode)

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.folder / f"{upload_id}{suffix}"

    def owe(self, owed: Owed) -> None:
        path = self._path(owed.upload_id, ".json")
        temporary = path.with_suffix(f".tmp-{os.getpid()}")
        fd = open_nofollow(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            write_all(fd, owed.to_json().encode())
        finally:
            os.close(fd)
        os.rename(temporary, path)

    def get(self, upload_id: str) -> Owed | None:
        text = read_small_file(self._path(upload_id, ".json"))
        return None if text is None else Owed.from_json(upload_id, text)

    def remove(self, upload_id: str) -> None:
        for suffix in (".json", ".claim"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(upload_id, suffix))

    def entries(self) -> list[Owed]:
        found = []
        for path in self.folder.glob("*.json"):
            owed = self.get(path.stem) if is_valid_upload_id(path.stem) else None
            if owed is not None:
                found.append(owed)
        return found

    def claim(self, upload_id: str, seconds: float) -> bool:
        path = self._path(upload_id, ".claim")
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime > time.time():
                return False  # claimed, and the claim runs until its mtime
            os.unlink(path)  # expired: its claimant died or gave up
        try:
            fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        os.close(fd)
        until = time.time() + seconds
        os.utime(path, (until, until))
        return True

    def unclaim(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(upload_id, ".claim"))


class RedisLedger(FinishLedger):
    """One hash, ``<prefix>post-finish``, of id → entry; claims as expiring keys."""

    def __init__(self, client: Any, prefix: str, translate: Any):
        self.redis = client
        self.hash = f"{prefix}post-finish"
        self.prefix = prefix
        #: Turns redis-py's errors into RegistryUnavailable (the registry's rule).
        self.translate = translate

    def _claim_key(self, upload_id: str) -> str:
        return f"{self.prefix}post-finish-claim:{upload_id}"

    def owe(self, owed: Owed) -> None:
        with self.translate():
            self.redis.hset(self.hash, owed.upload_id, owed.to_json())

    def get(self, upload_id: str) -> Owed | None:
        with self.translate():
            text = self.redis.hget(self.hash, upload_id)
        return None if text is None else Owed.from_json(upload_id, text)

    def remove(self, upload_id: str) -> None:
        with self.translate():
            self.redis.hdel(self.hash, upload_id)
            self.redis.delete(self._claim_key(upload_id))

    def entries(self) -> list[Owed]:
        with self.translate():
            items = self.redis.hgetall(self.hash)
        return [Owed.from_json(key.decode(), value) for key, value in items.items()]

    def claim(self, upload_id: str, seconds: float) -> bool:
        with self.translate():
            return bool(
                self.redis.set(self._claim_key(upload_id), os.getpid(), nx=True,
                               px=max(1, int(seconds * 1000)))
            )

    def unclaim(self, upload_id: str) -> None:
        with self.translate():
            self.redis.delete(self._claim_key(upload_id))
