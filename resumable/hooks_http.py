"""Lifecycle events POSTed to an HTTP receiver in tusd's (v2) HTTP hook format.

Receivers written for tusd's ``-hooks-http`` work unchanged, so the format is
tusd's, described here in our own words.

The request is ``POST <url>`` with ``Content-Type: application/json`` and a
JSON object holding:

* ``Type``: the event name (``pre-create`` ... ``post-terminate``);
* ``Event.Upload``: ``ID``, ``Size`` (0 while the length is deferred),
  ``SizeIsDeferred``, ``Offset``, ``MetaData`` (an object of strings, ``{}``
  when there is none), ``IsPartial``, ``IsFinal``, ``PartialUploads`` (the ids
  a final concatenation joins, else null) and ``Storage`` (where the store
  keeps the upload, null when it has not said);
* ``Event.HTTPRequest``: ``Method``, ``URI``, ``RemoteAddr`` and ``Header``
  (each name, spelt the way Go spells header names, mapped to a list of
  values). Events delivered later, without a client request (by the garbage
  collector or a retry), carry empty strings and an empty ``Header`` rather
  than null, so receivers that read these fields do not trip over them;
* ``EventID``, our addition: an id that stays the same when the same event
  is delivered again, so a receiver can drop duplicates. It is also sent as
  the ``Idempotency-Key`` request header. tusd receivers ignore both.

The receiver answers 2xx with a JSON object whose fields are all optional:
``HTTPResponse`` (``StatusCode``, ``Body``, ``Header`` as an object of
strings) shapes the answer to a refused or stopped request; ``RejectUpload``
refuses a creation; ``RejectTermination`` refuses a DELETE;
``ChangeFileInfo.MetaData`` replaces the upload's metadata on pre-create
(``ChangeFileInfo.ID`` and ``.Storage`` are ignored: this server chooses ids
and storage itself); ``StopUpload`` ends a running upload. Field names match
case-insensitively, as Go's JSON decoder matches them, so ``rejectUpload``
works here as it does with tusd. A field of the wrong type fails the hook,
as it does in tusd.

Where this sender differs from tusd, it is more lenient or more bounded,
never stricter towards a receiver that works with tusd:

* an empty 2xx body (a 204, say) means "no changes"; tusd fails it as
  unparseable JSON;
* the answer's ``Content-Type`` is not checked (tusd since v2.9 requires
  ``application/json``; receivers written for older versions may not send it);
* ``timeout`` bounds each attempt, where tusd bounds all attempts together;
* the wait between attempts doubles (``backoff``, ``2 * backoff``, ...),
  where tusd waits the same ``backoff`` each time;
* ``retries`` counts attempts after the first, where tusd's
  ``-hooks-http-retry`` counts all attempts;
* redirects are not followed: a 3xx fails the hook, so point the URL at the
  receiver itself; proxy environment variables are not consulted.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from . import __version__
from .events import HookAnswer, HookEvent, HookFailed, RequestInfo

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("resumable.hooks")

#: Largest answer read from a receiver: an answer is a few small fields, and a
#: receiver gone astray must not make a worker buffer without bound.
MAX_ANSWER_BYTES = 1024 * 1024
#: Longest wait between two attempts, however many retries are configured.
MAX_BACKOFF = 30.0
_READ_SIZE = 64 * 1024
#: Characters of a failed answer's body quoted in the failure reason.
_QUOTED_BODY = 200
#: Characters of an HTTP token (RFC 9110 §5.6.2), the only names Go rewrites.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def event_payload(event: HookEvent) -> dict[str, Any]:
    """The JSON object a receiver gets for ``event`` (see the module docstring)."""
    upload = event.upload
    return {
        "Type": event.type,
        "Event": {
            "Upload": {
                "ID": upload.id,
                "Size": 0 if upload.size is None else upload.size,
                "SizeIsDeferred": upload.size is None,
                "Offset": upload.offset,
                "MetaData": dict(upload.metadata),
                "IsPartial": upload.is_partial,
                "IsFinal": upload.is_final,
                "PartialUploads": list(upload.partial_uploads) or None,
                "Storage": dict(upload.storage) or None,
            },
            "HTTPRequest": _request_payload(event.request),
        },
        "EventID": event.id,
    }


def _request_payload(request: RequestInfo | None) -> dict[str, Any]:
    if request is None:
        return {"Method": "", "URI": "", "RemoteAddr": "", "Header": {}}
    header: dict[str, list[str]] = {}
    for name, values in request.headers.items():
        header.setdefault(canonical_header_name(name), []).extend(values)
    return {
        "Method": request.method,
        "URI": request.uri,
        "RemoteAddr": request.remote_addr,
        "Header": header,
    }


def canonical_header_name(name: str) -> str:
    """``name`` spelt as Go spells header names, which tusd receivers look up.

    The first letter and each letter after a hyphen are upper case, the others
    lower case (``x-api-KEY`` becomes ``X-Api-Key``); a name holding anything
    but token characters is left as it is, as Go leaves it.
    """
    if not name or not set(name) <= _TOKEN:
        return name
    letters = []
    upper = True
    for char in name:
        letters.append(char.upper() if upper else char.lower())
        upper = char == "-"
    return "".join(letters)


def parse_answer(data: bytes) -> HookAnswer:
    """A receiver's 2xx body as a :class:`HookAnswer`; HookFailed when it is unusable.

    An empty body (or JSON ``null``) means no changes. Invalid UTF-8 is
    replaced rather than refused, as Go's decoder does.
    """
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        return HookAnswer()
    try:
        document = json.loads(text)
    except ValueError as error:
        raise HookFailed(f"hook receiver answered invalid JSON: {error}") from None
    top = _object(document, "the answer")
    if top is None:
        return HookAnswer()
    response = _object(_field(top, "HTTPResponse"), "HTTPResponse") or {}
    changes = _object(_field(top, "ChangeFileInfo"), "ChangeFileInfo") or {}
    return HookAnswer(
        status=_status(_field(response, "StatusCode")),
        body=_string(_field(response, "Body"), "HTTPResponse.Body") or None,
        headers=_strings(_field(response, "Header"), "HTTPResponse.Header") or {},
        reject_upload=_bool(_field(top, "RejectUpload"), "RejectUpload"),
        reject_termination=_bool(_field(top, "RejectTermination"), "RejectTermination"),
        metadata=_strings(_field(changes, "MetaData"), "ChangeFileInfo.MetaData"),
        stop_upload=_bool(_field(top, "StopUpload"), "StopUpload"),
    )


def _field(document: Mapping[str, Any], name: str) -> Any:
    """``document[name]``, else the first key equal to it ignoring case, else None."""
    if name in document:
        return document[name]
    folded = name.casefold()
    for key, value in document.items():
        if key.casefold() == folded:
            return value
    return None


def _malformed(where: str, expected: str) -> HookFailed:
    return HookFailed(f"hook receiver's answer is malformed: {where} must be {expected}")


def _object(value: Any, where: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise _malformed(where, "an object")


def _bool(value: Any, where: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise _malformed(where, "true or false")


def _string(value: Any, where: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    raise _malformed(where, "a string")


def _strings(value: Any, where: str) -> dict[str, str] | None:
    """An object of strings; None when absent (which differs from ``{}``: "keep" vs "clear")."""
    mapping = _object(value, where)
    if mapping is not None and not all(isinstance(item, str) for item in mapping.values()):
        raise _malformed(where, "an object of strings")
    return mapping


def _status(value: Any) -> int | None:
    """An HTTP status, or None when absent or 0 (Go's "not set")."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    raise _malformed("HTTPResponse.StatusCode", "an HTTP status code")


class _AttemptFailed(HookFailed):
    """One attempt failed; ``retryable`` when another might succeed."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


class HttpHookSender:
    """Sends events to one receiver URL, retrying what a retry can mend.

    Like tusd, it retries transport failures (refused or broken connections,
    timeouts, TLS errors) and 5xx answers, which say the receiver is down or
    overloaded for now. It does not retry a 4xx (429 included, as in tusd),
    a 3xx, or a 2xx it cannot read: the receiver meant that answer and would
    give it again, and a blocking event's client is waiting meanwhile.

    Failure reasons are meant for the log, not for clients: a non-2xx reason
    quotes the start of the receiver's body.

    Thread-safe: it holds only its configuration, and each attempt opens and
    closes a connection of its own.
    """

    def __init__(
        self,
        url: str,
        enabled_events: Collection[str],
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"hooks_http must be an http:// or https:// URL, not {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"hooks_http has an invalid port: {url!r}") from None
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("hook timeout must be positive, retries and backoff >= 0")
        self.url = url
        self.enabled_events = frozenset(enabled_events)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"resumable/{__version__}",
        }
        if parts.username is not None:
            # As Go's client does with credentials in the URL: HTTP basic auth.
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpHookSender | None:
        """The sender ``settings`` configure; None when no receiver URL is set."""
        if not settings.hooks_http:
            return None
        return cls(
            settings.hooks_http,
            settings.enabled_hook_events,
            timeout=settings.hooks_http_timeout,
            retries=settings.hooks_http_retries,
            backoff=settings.hooks_http_backoff,
        )

    def wants(self, event_type: str) -> bool:
        """Whether events of this type are to be sent at all."""
        return event_type in self.enabled_events

    def send(self, event: HookEvent, retries: int | None = None) -> HookAnswer:
        """Deliver ``event`` and return the receiver's answer, or raise HookFailed.

        Tries ``1 + retries`` times (``retries`` defaults to the sender's),
        waiting ``backoff``, then twice as long before each next attempt (at
        most :data:`MAX_BACKOFF`). The exception holds the last attempt's reason.
        """
        retries = self.retries if retries is None else retries
        body = json.dumps(event_payload(event), ensure_ascii=False).encode("utf-8")
        headers = {**self._headers, "Idempotency-Key": event.id}
        attempt = 0
        while True:
            try:
                return self._attempt(body, headers)
            except _AttemptFailed as failure:
                if not failure.retryable or attempt >= retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise HookFailed(f"{failure}{tries}") from None
                delay = min(self.backoff * 2 ** min(attempt, 32), MAX_BACKOFF)
                attempt += 1
                log.warning(
                    "%s hook for upload %s failed: %s; retry %d of %d in %g s",
                    event.type,
                    event.upload.id or "(new)",
                    failure,
                    attempt,
                    retries,
                    delay,
                )
                time.sleep(delay)

    def _attempt(self, body: bytes, headers: dict[str, str]) -> HookAnswer:
        status, data = self._exchange(body, headers)
        if not 200 <= status < 300:
            quoted = " ".join(data[:_QUOTED_BODY].decode("utf-8", "replace").split())
            reason = f"hook receiver answered {status}" + (f": {quoted}" if quoted else "")
            raise _AttemptFailed(reason, retryable=status >= 500)
        if len(data) > MAX_ANSWER_BYTES:
            raise _AttemptFailed(
                f"hook receiver's answer exceeds {MAX_ANSWER_BYTES} bytes", retryable=False
            )
        try:
            return parse_answer(data)
        except HookFailed as error:
            raise _AttemptFailed(str(error), retryable=False) from None

    def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST ``body``; the status and at most MAX_ANSWER_BYTES + 1 bytes of answer.

        ``timeout`` bounds the whole exchange: each step (connecting, sending,
        each read) may take only what is left of it, so a receiver that
        trickles its answer cannot hold the caller longer.
        """
        deadline = time.monotonic() + self.timeout
        connection = self._connection()
        connected = False
        try:
            connection.connect()
            connected = True
            sock = connection.sock
            _limit(sock, deadline)
            connection.request("POST", self._target, body=body, headers=headers)
            _limit(sock, deadline)
            response = connection.getresponse()
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_ANSWER_BYTES and not response.isclosed():
                _limit(sock, deadline)
                chunk = response.read1(min(_READ_SIZE, MAX_ANSWER_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return response.status, b"".join(chunks)
        except (OSError, http.client.HTTPException) as error:
            raise self._transport_failure(error, connected) from None
        finally:
            connection.close()

    def _transport_failure(self, error: Exception, connected: bool) -> _AttemptFailed:
        """A short reason for a failed exchange; all are worth a retry, as in tusd."""
        if isinstance(error, TimeoutError):
            reason = f"timed out after {self.timeout:g} s"
        elif isinstance(error, ssl.SSLError):
            reason = f"TLS failed: {_ssl_reason(error)}"
        elif isinstance(error, socket.gaierror):
            reason = f"unreachable: cannot resolve {self._host}"
        elif isinstance(error, http.client.RemoteDisconnected):
            reason = "closed the connection unanswered"
        elif isinstance(error, http.client.IncompleteRead):
            reason = "broke off its answer"
        elif isinstance(error, http.client.HTTPException):
            reason = f"answered malformed HTTP ({type(error).__name__})"
        else:
            what = "connection failed" if connected else "unreachable"
            detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
            reason = f"{what}: {detail.lower()}"
        return _AttemptFailed(f"hook receiver {reason}", retryable=True)

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)


def _limit(sock: socket.socket | None, deadline: float) -> None:
    """Give the socket's next operations only what is left until ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    if sock is not None and sock.fileno() >= 0:
        sock.settimeout(left)


def _ssl_reason(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate {error.verify_message}"
    return (error.reason or str(error)).lower().replace("_", " ")
