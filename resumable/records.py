"""The upload record: everything the server knows about one upload but its bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class UploadRecord:
    """State of one upload.

    ``length`` is None while the client defers it (creation-defer-length).
    ``metadata`` and ``concat`` are the raw request headers, kept so HEAD can
    echo them byte for byte. ``offset`` counts bytes that are in the data file
    *and* acknowledged; the file may hold more after a crash (docs/architecture.md,
    invariant 1).
    ``expires`` and ``finished`` are timestamps read by
    :class:`~resumable.expiry.ExpiryPolicy`, which owns the expiry rules.
    """

    id: str
    length: int | None
    offset: int = 0
    metadata: str | None = None
    concat: str | None = None
    parts: list[str] = field(default_factory=list)
    created: float = 0.0
    expires: float | None = None
    #: When the upload became complete (None before, and for records older than the field).
    finished: float | None = None
    #: The representation digest an IETF draft creation asked for (digests.py):
    #: ``"sha256 <base64>"`` to check or, once complete, as computed; ``"sha256"``
    #: to compute at completion.
    digest: str | None = None

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset == self.length

    @property
    def is_final(self) -> bool:
        return self.concat is not None and self.concat.startswith("final")

    @property
    def is_partial(self) -> bool:
        return self.concat == "partial"

    def to_json(self) -> str:
        # vars() rather than dataclasses.asdict: no deep copy of every field,
        # and this runs on every commit.
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> UploadRecord:
        data = json.loads(text)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)
