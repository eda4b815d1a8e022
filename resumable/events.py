"""Lifecycle events: what hook receivers are told, and what they may answer.

An event describes one moment of one upload (created, received bytes,
finished, deleted, and the "pre" moments before creation, finishing and
deletion, which a receiver may refuse). Python receivers get these objects;
the HTTP sender (hooks_http.py) translates them to and from tusd's JSON, so
receivers written for tusd work unchanged.

Every event carries an ``id`` that is the same each time the same event is
delivered again (a post-finish retried after a crash), so a receiver can
drop the rare duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRE_CREATE = "pre-create"
POST_CREATE = "post-create"
POST_RECEIVE = "post-receive"
PRE_FINISH = "pre-finish"
POST_FINISH = "post-finish"
PRE_TERMINATE = "pre-terminate"
POST_TERMINATE = "post-terminate"

#: Events whose answer decides whether the request goes on.
BLOCKING_EVENTS = frozenset({PRE_CREATE, PRE_FINISH, PRE_TERMINATE})


@dataclass(frozen=True)
class UploadInfo:
    """An upload as hooks see it (tusd's ``FileInfo``)."""

    id: str
    size: int | None  # None while the length is deferred
    offset: int
    metadata: dict[str, str]
    is_partial: bool = False
    is_final: bool = False
    partial_uploads: tuple[str, ...] = ()
    storage: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestInfo:
    """The HTTP request that caused the event; none for events delivered later by gc."""

    method: str
    uri: str
    remote_addr: str
    headers: dict[str, list[str]]


@dataclass(frozen=True)
class HookEvent:
    type: str
    id: str
    upload: UploadInfo
    request: RequestInfo | None = None


@dataclass
class HookAnswer:
    """What a receiver answered; every field is optional (tusd's ``HookResponse``).

    ``status``/``body``/``headers`` shape the HTTP response of a refused
    request; ``reject_upload`` refuses a creation or a finish,
    ``reject_termination`` a DELETE; ``metadata`` replaces the upload's
    metadata on pre-create; ``stop_upload`` ends a running upload on
    post-receive.
    """

    status: int | None = None
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reject_upload: bool = False
    reject_termination: bool = False
    metadata: dict[str, str] | None = None
    stop_upload: bool = False


class HookFailed(Exception):
    """A receiver could not be reached, timed out, or answered something unreadable."""
