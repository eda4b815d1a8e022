"""When an upload stops existing: the one place the expiry rules live.

* An unfinished upload expires ``--expiry`` seconds after its creation or its
  last commit of received bytes (a sliding expiry: an upload that keeps
  receiving bytes never expires). Its ``Upload-Expires`` header says when.
* A finished upload is kept until it is deleted, or, with
  ``--finished-expiry``, that many seconds after it finished, and never while
  its post-finish event is still owed to a hook receiver. tus defines
  ``Upload-Expires`` for unfinished uploads only, so finished ones never
  carry the header.
* A final concatenation still waiting for its partials has no expiry of its
  own: it lives as long as its partials (gc removes it once one is gone).

Past its expiry an upload answers ``410 Gone`` until ``resumable gc`` deletes
it. Records carry timestamps (``expires``, ``finished``), not durations, so
the same record means the same thing to every process reading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .protocol import format_http_date
from .records import UploadRecord
from .settings import Settings


@dataclass(frozen=True)
class ExpiryPolicy:
    #: Seconds an unfinished upload lives after its last commit; 0: forever.
    unfinished: float
    #: Seconds a finished upload is kept after it finished; 0: forever.
    finished: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ExpiryPolicy:
        return cls(unfinished=settings.expiry, finished=settings.finished_expiry)

    def stamp(self, record: UploadRecord, now: float) -> None:
        """Set the record's clock after it was created or changed, before it is saved."""
        if record.is_complete:
            record.expires = None
            if record.finished is None:
                record.finished = now
        elif record.is_final:
            record.expires = None  # lives as long as its partials
        else:
            record.expires = now + self.unfinished if self.unfinished > 0 else None

    def is_expired(
        self, record: UploadRecord, now: float, finish_owed: Callable[[str], bool] | None = None
    ) -> bool:
        """Past its time; a finished upload never while its post-finish is owed (lifecycle.py),
        which ``finish_owed(upload_id)`` tells."""
        if record.is_complete:
            return (
                self.finished > 0
                and record.finished is not None
                and record.finished + self.finished <= now
                and not (finish_owed is not None and finish_owed(record.id))
            )
        return record.expires is not None and record.expires <= now

    def header(self, record: UploadRecord) -> dict[str, str]:
        """``Upload-Expires`` for the answers that carry it (POST, PATCH, HEAD)."""
        if record.expires is None or record.is_complete:
            return {}
        return {"Upload-Expires": format_http_date(record.expires)}
