"""Lifecycle hooks: tell receivers what happens to uploads, and let them refuse.

Receivers are Python callables (``--hooks package.module:object``, or
``@uploads.hook("post-finish")`` on the extension) and an HTTP endpoint in
tusd's format (``--hooks-http URL``, hooks_http.py). Each gets a
:class:`~resumable.events.HookEvent` and may answer a
:class:`~resumable.events.HookAnswer` (None: no changes).

* ``pre-create``, ``pre-finish`` and ``pre-terminate`` are asked while the
  request waits. A refusal becomes the answer (the receiver's status, body
  and headers; 400 by default, as tusd); a receiver that fails or times out
  refuses too (503, the reason in the log), so nothing is created, finished
  or deleted on a receiver's silence. pre-create may replace the metadata.
  pre-finish is asked before the commit that finishes the upload: a refused
  finish deletes the upload, a failed one leaves its last bytes
  unacknowledged, so the client sends them again and the hook is asked again.
* ``post-create``, ``post-receive`` (at most every ``--progress-interval``
  per upload; may stop the upload), ``post-finish`` and ``post-terminate``
  are delivered in the background and retried with backoff.
* ``post-finish`` is never lost: it is owed in a ledger (ledger.py) before
  the finishing commit and paid when a receiver took it; any process's
  sweeper delivers what a killed one still owed.

Event ids are stable where an event can be delivered twice (``<id>.post-finish``),
so receivers drop the rare duplicate.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from . import metrics
from .events import (
    POST_CREATE,
    POST_FINISH,
    POST_RECEIVE,
    POST_TERMINATE,
    PRE_CREATE,
    PRE_FINISH,
    PRE_TERMINATE,
    HookAnswer,
    HookEvent,
    HookFailed,
    RequestInfo,
    UploadInfo,
)
from .forwarded import public_view
from .hooks import import_object
from .hooks_http import HttpHookSender
from .ledger import FinishLedger, Owed
from .protocol import TusError, UploadRejected, parse_metadata
from .records import UploadRecord
from .registry import Registry, RegistryUnavailable
from .settings import HOOK_EVENTS, Settings
from .store import Store

log = logging.getLogger("resumable.hooks")

Receiver = Callable[[HookEvent], "HookAnswer | None"]

#: Threads per process delivering post-events.
DELIVERY_THREADS = 8
#: Seconds between two looks at the ledger for post-finish events a process left owed.
SWEEP_SECONDS = 2.0
#: An owed post-finish whose upload is not complete this long after it was
#: written belongs to a finishing commit that failed.
ABANDONED_AFTER = 120.0

#: What a refusal answers when the receiver does not say (tusd's words).
REFUSALS = {
    PRE_CREATE: "upload creation has been rejected by server",
    PRE_FINISH: "upload has been rejected by server",
    PRE_TERMINATE: "upload termination has been rejected by server",
    POST_RECEIVE: "upload has been stopped by server",
}


class HookRefused(TusError):
    """A receiver refused the request (or stopped the upload): its status, body and headers."""

    def __init__(
        self, event_type: str, status: int, message: str, headers: Mapping[str, str] | None = None
    ):
        super().__init__(message, headers)
        self.event_type = event_type
        self.status = status


class FinishRefused(HookRefused, UploadRejected):
    """A pre-finish receiver refused the upload: it is deleted."""


class HookUnavailable(TusError):
    """A receiver that must answer before the request goes on failed or timed out."""

    status = 503


def refusal(event_type: str, answer: HookAnswer) -> HookRefused:
    """The error a refusing (or stopping) answer turns into."""
    status = answer.status or 400
    body = answer.body if answer.body is not None else REFUSALS[event_type]
    kind = FinishRefused if event_type == PRE_FINISH else HookRefused
    return kind(event_type, status, body, answer.headers)


def load_receivers(spec: str | None) -> dict[str, list[Receiver]]:
    """``package.module:object``: an object with methods, or a mapping, named after events.

    ``pre_create`` and ``"pre-create"`` both name the pre-create receiver.
    """
    receivers: dict[str, list[Receiver]] = {}
    if not spec:
        return receivers
    target = import_object(spec, "hooks", "object")
    if isinstance(target, Mapping):
        names = {str(name).replace("_", "-") for name in target}
        unknown = names - set(HOOK_EVENTS)
        if unknown:
            raise ValueError(f"hooks {spec!r} names unknown events: {', '.join(sorted(unknown))}")
        found = {str(name).replace("_", "-"): function for name, function in target.items()}
    else:
        found = {event: getattr(target, event.replace("-", "_"), None) for event in HOOK_EVENTS}
    for event, function in found.items():
        if function is None:
            continue
        if not callable(function):
            raise ValueError(f"hooks {spec!r}: {event} is not callable")
        receivers[event] = [function]
    if not receivers:
        raise ValueError(f"hooks {spec!r} has no receiver named after an event")
    return receivers


class Lifecycle:
    """Every lifecycle event of one server, to its receivers."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        receivers: dict[str, list[Receiver]] | None = None,
        http: HttpHookSender | None = None,
    ):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.receivers = {event: list(found) for event, found in (receivers or {}).items()}
        self.http = http
        self.ledger: FinishLedger | None = None
        #: Counts each receiver's invocation (event, failed): the metrics' by default.
        self.counter: Callable[[str, bool], None] = metrics.count_hook
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._sweeper_pid = 0
        self._update()

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, registry: Registry) -> Lifecycle:
        return cls(
            settings,
            store,
            registry,
            load_receivers(settings.hooks),
            HttpHookSender.from_settings(settings),
        )

    def add(self, event_type: str, receiver: Receiver) -> None:
        """One more Python receiver (the extension's ``@hook`` decorator)."""
        if event_type not in HOOK_EVENTS:
            raise ValueError(f"no such event {event_type!r}; events: {', '.join(HOOK_EVENTS)}")
        self.receivers.setdefault(event_type, []).append(receiver)
        self._update()

    def _update(self) -> None:
        """Whether post-finish is wanted decides whether finishes are owed in a ledger."""
        self.active = bool(self.http) or any(self.receivers.values())
        if self.wants(POST_FINISH) and self.ledger is None:
            self.ledger = self.registry.finish_ledger()
            self.registry.owed_finishes = self.ledger

    def wants(self, event_type: str) -> bool:
        if not self.active:  # no receivers at all: most servers, on every request
            return False
        if self.receivers.get(event_type):
            return True
        return self.http is not None and self.http.wants(event_type)

    # -- events of the request ----------------------------------------------------

    def ask(
        self, event_type: str, record: UploadRecord, environ: dict[str, Any] | None
    ) -> HookAnswer:
        """A pre-event: every receiver's answer merged; raises a refusal or a failure."""
        answer = HookAnswer()
        if not self.wants(event_type):
            return answer
        event = self.event(event_type, record, environ, str(uuid.uuid4()))
        for receiver in self.receivers.get(event_type, []):
            try:
                given = receiver(event)
            except Exception as error:  # noqa: BLE001 - the receiver's bug refuses, it does not 500
                self._count(event_type, True)
                log.warning("%s hook %r failed: %r", event_type, receiver, error)
                raise HookUnavailable(f"the {event_type} hook failed; retry later") from None
            self._count(event_type, False)
            if given is not None and _merge(answer, given, event_type):
                raise refusal(event_type, answer)
        if self.http is not None and self.http.wants(event_type):
            try:
                given = self.http.send(event)
            except HookFailed as error:
                self._count(event_type, True)
                log.warning("%s hook failed: %s", event_type, error)
                raise HookUnavailable(f"the {event_type} hook failed; retry later") from None
            self._count(event_type, False)
            if _merge(answer, given, event_type):
                raise refusal(event_type, answer)
        return answer

    def tell(self, event_type: str, record: UploadRecord, environ: dict[str, Any] | None = None,
             event_id: str | None = None,
             then: Callable[[HookAnswer], None] | None = None) -> None:
        """A post-event, delivered in the background; ``then`` gets the merged answer."""
        metrics.count_upload_event(event_type)
        if not self.wants(event_type):
            return
        event = self.event(event_type, record, environ, event_id or str(uuid.uuid4()))
        self._submit(self._deliver, event, then)

    def created(self, record: UploadRecord, environ: dict[str, Any] | None) -> None:
        """post-create, with the one id an upload's creation has."""
        self.tell(POST_CREATE, record, environ, f"{record.id}.post-create")

    # -- finishing -------------------------------------------------------------------

    @contextlib.contextmanager
    def finishing_commit(
        self, record: UploadRecord, environ: dict[str, Any] | None, finishes: bool = True
    ) -> Iterator[None]:
        """Around the commit that finishes ``record`` (when ``finishes``): pre-finish and the
        owed post-finish before it, the post-finish after it (not if the commit failed)."""
        if finishes:
            self.finishing(record, environ)
        yield
        if finishes:
            self.finished(record, environ)

    def finishing(self, record: UploadRecord, environ: dict[str, Any] | None) -> None:
        """Before the commit that finishes ``record``: pre-finish, then owe post-finish."""
        self.ask(PRE_FINISH, record, environ)
        if self.ledger is not None:
            info = upload_info(record, self.store)
            self.ledger.owe(Owed(record.id, asdict(info), time.time()))

    def finished(self, record: UploadRecord, environ: dict[str, Any] | None) -> None:
        """After that commit: deliver post-finish now, in the background."""
        metrics.count_upload_event(POST_FINISH)
        if self.ledger is None:
            return
        event = self.event(POST_FINISH, record, environ, finish_event_id(record.id))
        self._submit(self._pay, event)

    def sweep(self) -> int:
        """Deliver (or drop) what the ledger still owes; how many were delivered."""
        if self.ledger is None:
            return 0
        paid = 0
        now = time.time()
        for owed in self.ledger.entries():
            record = self.registry.get(owed.upload_id)
            if record is None and not owed.confirmed:
                if now - owed.since > ABANDONED_AFTER:
                    self.ledger.remove(owed.upload_id)  # its finishing commit never happened
                continue
            if record is not None and not record.is_complete:
                if now - owed.since > ABANDONED_AFTER:
                    self.ledger.remove(owed.upload_id)
                continue
            info = upload_info(record, self.store) if record is not None else _info(owed.upload)
            event = HookEvent(POST_FINISH, finish_event_id(owed.upload_id), info, None)
            if self._pay(event):
                paid += 1
        return paid

    def start_sweeper(self) -> None:
        """One sweeping thread per process (started from a request: after a fork)."""
        if self.ledger is None or self._sweeper_pid == os.getpid():
            return
        with self._lock:
            if self._sweeper_pid == os.getpid():
                return
            self._sweeper_pid = os.getpid()
            threading.Thread(target=self._sweep_forever, name="resumable-post-finish",
                             daemon=True).start()

    def _sweep_forever(self) -> None:
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                self.sweep()
            except RegistryUnavailable as error:
                log.warning("owed post-finish events wait: %s", error)
            except Exception:  # noqa: BLE001 - the loop must outlive one failed round
                log.exception("delivering owed post-finish events failed")

    def _pay(self, event: HookEvent) -> bool:
        """Deliver an owed post-finish unless another process is; clear it once taken."""
        assert self.ledger is not None
        upload_id = event.upload.id
        if not self.ledger.claim(upload_id, self._delivery_seconds()):
            return False
        if self._deliver(event) is None:
            self.ledger.unclaim(upload_id)
            return False
        self.ledger.remove(upload_id)
        return True

    # -- delivery ----------------------------------------------------------------------

    def _deliver(self, event: HookEvent,
                 then: Callable[[HookAnswer], None] | None = None) -> HookAnswer | None:
        """Every receiver of a post-event, each retried; None when one never took it."""
        answer = HookAnswer()
        delivered = True
        for receiver in self.receivers.get(event.type, []):
            given = self._retried(event, functools.partial(receiver, event))
            delivered = delivered and given is not False
            if isinstance(given, HookAnswer):
                _merge(answer, given, event.type)
        http = self.http
        if http is not None and http.wants(event.type):
            given = self._retried(event, lambda: http.send(event, retries=0))
            delivered = delivered and given is not False
            if isinstance(given, HookAnswer):
                _merge(answer, given, event.type)
        if then is not None:
            then(answer)
        return answer if delivered else None

    def _retried(self, event: HookEvent, call: Callable[[], Any]) -> Any:
        """``call()``'s answer, retried with backoff; False when every attempt failed."""
        pause = self.settings.hooks_http_backoff
        for attempt in range(self.settings.hooks_http_retries + 1):
            try:
                given = call()
            except Exception as error:  # noqa: BLE001 - a receiver's failure is retried
                self._count(event.type, True)
                log.warning("%s hook for %s failed (attempt %d): %s", event.type,
                            event.upload.id, attempt + 1, error)
                if attempt < self.settings.hooks_http_retries:
                    time.sleep(pause)
                    pause *= 2
                continue
            self._count(event.type, False)
            return given
        return False

    def _delivery_seconds(self) -> float:
        """How long one post-finish delivery may take with all its retries (its claim)."""
        s = self.settings
        attempts = s.hooks_http_retries + 1
        waits: float = s.hooks_http_backoff * (2**attempts)
        return attempts * s.hooks_http_timeout + waits + 5.0

    def _submit(self, function: Callable[..., Any], *args: Any) -> None:
        if self._pid != os.getpid():  # threads do not survive a fork: a pool per process
            with self._lock:
                if self._pid != os.getpid():
                    self._executor = ThreadPoolExecutor(DELIVERY_THREADS,
                                                        thread_name_prefix="resumable-hooks")
                    self._pid = os.getpid()
        assert self._executor is not None
        self._executor.submit(_logged, function, *args)

    def _count(self, event_type: str, failed: bool) -> None:
        self.counter(event_type, failed)

    # -- describing ------------------------------------------------------------------

    def event(self, event_type: str, record: UploadRecord, environ: dict[str, Any] | None,
              event_id: str) -> HookEvent:
        request = None if environ is None else request_info(environ, self.settings.trust_proxy)
        return HookEvent(event_type, event_id, upload_info(record, self.store), request)


def finish_event_id(upload_id: str) -> str:
    """The one id of an upload's post-finish, however often it is delivered."""
    return f"{upload_id}.post-finish"


def upload_info(record: UploadRecord, store: Store) -> UploadInfo:
    try:
        decoded = parse_metadata(record.metadata)
    except TusError:
        decoded = {}
    return UploadInfo(
        id=record.id,
        size=record.length,
        offset=record.offset,
        metadata={key: value.decode("utf-8", "replace") for key, value in decoded.items()},
        is_partial=record.is_partial,
        is_final=record.is_final,
        partial_uploads=tuple(record.parts),
        storage=store.storage_info(record.id),
    )


def _info(data: dict[str, Any]) -> UploadInfo:
    return UploadInfo(**{**data, "partial_uploads": tuple(data.get("partial_uploads") or ())})


def request_info(environ: dict[str, Any], trust_proxy: bool) -> RequestInfo:
    """The request as a receiver sees it (tusd's HTTPRequest), every header included."""
    headers: dict[str, list[str]] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
            headers.setdefault(name, []).append(value)
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").title()] = [environ[key]]
    view = public_view(environ, trust_proxy)
    query = environ.get("QUERY_STRING")
    uri = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    port = environ.get("REMOTE_PORT")
    remote = f"{view.remote_addr}:{port}" if port and not trust_proxy else view.remote_addr
    return RequestInfo(
        method=environ.get("REQUEST_METHOD", ""),
        uri=f"{uri}?{query}" if query else uri,
        remote_addr=remote,
        headers=headers,
    )


def _merge(answer: HookAnswer, given: HookAnswer, event_type: str) -> bool:
    """Fold one receiver's answer into ``answer``; True when it refuses or stops."""
    if given.status is not None:
        answer.status = given.status
    if given.body is not None:
        answer.body = given.body
    answer.headers.update(given.headers)
    if given.metadata is not None:
        answer.metadata = dict(given.metadata)
    answer.reject_upload = answer.reject_upload or given.reject_upload
    answer.reject_termination = answer.reject_termination or given.reject_termination
    answer.stop_upload = answer.stop_upload or given.stop_upload
    if event_type in (PRE_CREATE, PRE_FINISH):
        return answer.reject_upload
    if event_type == PRE_TERMINATE:
        return answer.reject_termination
    if event_type == POST_RECEIVE:
        return answer.stop_upload
    return False


def _logged(function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # noqa: BLE001 - a background delivery must not die silently
        log.exception("delivering a hook event failed")


__all__ = [
    "POST_CREATE",
    "POST_FINISH",
    "POST_RECEIVE",
    "POST_TERMINATE",
    "PRE_CREATE",
    "PRE_FINISH",
    "PRE_TERMINATE",
    "HookRefused",
    "HookUnavailable",
    "Lifecycle",
]
