"""The HTTP hook sender against a real local receiver, in tusd's hook format.

Each test scripts what a small ThreadingHTTPServer answers, one reply per
request (the last one repeats), and reads back what the sender POSTed and
when, so retries and their backoff are observed on the wire.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from resumable.events import (
    POST_FINISH,
    POST_RECEIVE,
    PRE_CREATE,
    PRE_TERMINATE,
    HookAnswer,
    HookEvent,
    HookFailed,
    RequestInfo,
    UploadInfo,
)
from resumable.hooks_http import (
    MAX_ANSWER_BYTES,
    HttpHookSender,
    canonical_header_name,
    event_payload,
    parse_answer,
)
from resumable.settings import Settings

JSON = {"Content-Type": "application/json"}


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Send the body one byte per this many seconds (after the head).
    drip: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """A hook receiver on 127.0.0.1 that answers scripted replies and records requests."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply()]
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # A client that gave up (timeouts, oversize answers) breaks the pipe: expected.
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.seen.append(
                    Seen(self.command, self.path, dict(self.headers), body, time.monotonic())
                )
                reply = (
                    receiver.replies.pop(0) if len(receiver.replies) > 1 else receiver.replies[0]
                )
                if reply.delay and receiver.stopping.wait(reply.delay):
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if not reply.drip:
                    self.wfile.write(reply.body)
                    return
                for byte in reply.body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if receiver.stopping.wait(reply.drip):
                        return

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def sender_for(url: str, **options: float) -> HttpHookSender:
    settings = {"timeout": 2.0, "retries": 0, "backoff": 0.0, **options}
    return HttpHookSender(url, ["pre-create", "post-finish"], **settings)  # type: ignore[arg-type]


def upload(**changes: object) -> UploadInfo:
    values: dict = {
        "id": "abc123",
        "size": 11,
        "offset": 5,
        "metadata": {"filename": "hello.txt"},
    }
    return UploadInfo(**{**values, **changes})


REQUEST = RequestInfo(
    method="POST",
    uri="/files/?x=1",
    remote_addr="10.0.0.7:51234",
    headers={"tus-resumable": ["1.0.0"], "upload-length": ["11"], "Host": ["up.example"]},
)


def event(type: str = POST_FINISH, request: RequestInfo | None = REQUEST, **changes) -> HookEvent:
    return HookEvent(type=type, id="evt-42", upload=upload(**changes), request=request)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The request: tusd's HookRequest, plus EventID.


def test_payload_of_an_event_with_a_request() -> None:
    assert event_payload(event(storage={"Type": "filestore", "Path": "/d/abc123"})) == {
        "Type": "post-finish",
        "Event": {
            "Upload": {
                "ID": "abc123",
                "Size": 11,
                "SizeIsDeferred": False,
                "Offset": 5,
                "MetaData": {"filename": "hello.txt"},
                "IsPartial": False,
                "IsFinal": False,
                "PartialUploads": None,
                "Storage": {"Type": "filestore", "Path": "/d/abc123"},
            },
            "HTTPRequest": {
                "Method": "POST",
                "URI": "/files/?x=1",
                "RemoteAddr": "10.0.0.7:51234",
                "Header": {
                    "Tus-Resumable": ["1.0.0"],
                    "Upload-Length": ["11"],
                    "Host": ["up.example"],
                },
            },
        },
        "EventID": "evt-42",
    }


def test_payload_of_a_deferred_size_without_a_request() -> None:
    """Later deliveries have no request: the keys stay, empty, and Size is tusd's 0."""
    payload = event_payload(event(PRE_CREATE, request=None, id="", size=None, offset=0))
    assert payload["Event"] == {
        "Upload": {
            "ID": "",
            "Size": 0,
            "SizeIsDeferred": True,
            "Offset": 0,
            "MetaData": {"filename": "hello.txt"},
            "IsPartial": False,
            "IsFinal": False,
            "PartialUploads": None,
            "Storage": None,
        },
        "HTTPRequest": {"Method": "", "URI": "", "RemoteAddr": "", "Header": {}},
    }


def test_payload_of_concatenation() -> None:
    partial = event_payload(event(is_partial=True, metadata={}))["Event"]["Upload"]
    assert (partial["IsPartial"], partial["IsFinal"], partial["PartialUploads"]) == (
        True,
        False,
        None,
    )
    assert partial["MetaData"] == {}
    final = event_payload(event(is_final=True, partial_uploads=("p1", "p2")))["Event"]["Upload"]
    assert (final["IsPartial"], final["IsFinal"], final["PartialUploads"]) == (
        False,
        True,
        ["p1", "p2"],
    )


def test_header_names_are_spelt_as_go_spells_them() -> None:
    request = RequestInfo("PATCH", "/files/a", "::1", {"x-api-KEY": ["a"], "X-API-Key": ["b"]})
    header = event_payload(event(request=request))["Event"]["HTTPRequest"]["Header"]
    assert header == {"X-Api-Key": ["a", "b"]}
    assert canonical_header_name("www-authenticate") == "Www-Authenticate"
    assert canonical_header_name("x-b3-traceid") == "X-B3-Traceid"
    assert canonical_header_name("bad name") == "bad name"


def test_the_request_on_the_wire(receiver: Receiver) -> None:
    sender = sender_for(receiver.url + "?token=t%20k")
    assert sender.send(event(size=None)) == HookAnswer()
    [seen] = receiver.seen
    assert (seen.method, seen.path) == ("POST", "/hooks?token=t%20k")
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Idempotency-Key"] == "evt-42"
    assert "Authorization" not in seen.headers
    assert seen.json == json.loads(json.dumps(event_payload(event(size=None))))
    assert seen.json["EventID"] == "evt-42"
    assert seen.json["Event"]["Upload"]["SizeIsDeferred"] is True


def test_credentials_in_the_url_become_basic_auth(receiver: Receiver) -> None:
    url = receiver.url.replace("http://", "http://hook%40user:s%3Acret@")
    sender_for(url).send(event())
    expected = base64.b64encode(b"hook@user:s:cret").decode()
    assert receiver.seen[0].headers["Authorization"] == f"Basic {expected}"


def test_the_same_event_sent_again_keeps_its_id(receiver: Receiver) -> None:
    sender = sender_for(receiver.url)
    sender.send(event())
    sender.send(event())
    assert [seen.headers["Idempotency-Key"] for seen in receiver.seen] == ["evt-42", "evt-42"]


# The answer: tusd's HookResponse.


def test_a_full_answer_is_understood(receiver: Receiver) -> None:
    answer = {
        "HTTPResponse": {
            "StatusCode": 403,
            "Body": '{"message":"no"}',
            "Header": {"Content-Type": "application/json", "X-Reason": "quota"},
        },
        "RejectUpload": True,
        "RejectTermination": True,
        "ChangeFileInfo": {
            "ID": "ignored-id",
            "MetaData": {"filename": "renamed.txt"},
            "Storage": {"Path": "ignored"},
        },
        "StopUpload": True,
    }
    receiver.script(Reply(body=json.dumps(answer).encode()))
    assert sender_for(receiver.url).send(event(PRE_CREATE)) == HookAnswer(
        status=403,
        body='{"message":"no"}',
        headers={"Content-Type": "application/json", "X-Reason": "quota"},
        reject_upload=True,
        reject_termination=True,
        metadata={"filename": "renamed.txt"},
        stop_upload=True,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", HookAnswer()),
        (b" \r\n", HookAnswer()),
        (b"null", HookAnswer()),
        (b"{}", HookAnswer()),
        (b'{"Unknown": [1, 2], "HTTPResponse": null}', HookAnswer()),
        (b'{"RejectTermination": true}', HookAnswer(reject_termination=True)),
        (b'{"StopUpload": true, "HTTPResponse": {"StatusCode": 0}}', HookAnswer(stop_upload=True)),
        (b'{"ChangeFileInfo": {"MetaData": {}}}', HookAnswer(metadata={})),
        (b'{"ChangeFileInfo": {"MetaData": null}}', HookAnswer(metadata=None)),
        # Go matches field names ignoring case; receivers rely on it.
        (
            b'{"rejectUpload": true, "httpResponse": {"statusCode": 400, "body": "x"}}',
            HookAnswer(status=400, body="x", reject_upload=True),
        ),
    ],
)
def test_answers(body: bytes, expected: HookAnswer) -> None:
    assert parse_answer(body) == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "invalid JSON"),
        (b"<html>ok</html>", "invalid JSON"),
        (b"[]", "the answer must be an object"),
        (b'{"RejectUpload": "yes"}', "RejectUpload must be true or false"),
        (b'{"HTTPResponse": []}', "HTTPResponse must be an object"),
        (b'{"HTTPResponse": {"StatusCode": 99}}', "StatusCode must be an HTTP status code"),
        (b'{"HTTPResponse": {"StatusCode": 400.5}}', "StatusCode must be an HTTP status code"),
        (b'{"HTTPResponse": {"Body": 1}}', "HTTPResponse.Body must be a string"),
        (b'{"HTTPResponse": {"Header": {"X": 1}}}', "Header must be an object of strings"),
        (b'{"ChangeFileInfo": {"MetaData": ["a"]}}', "MetaData must be an object"),
    ],
)
def test_unusable_answers_fail(body: bytes, reason: str) -> None:
    with pytest.raises(HookFailed, match=reason):
        parse_answer(body)


@pytest.mark.parametrize("status", [200, 201, 204])
def test_an_empty_2xx_answer_changes_nothing(receiver: Receiver, status: int) -> None:
    receiver.script(Reply(status=status, body=b"", headers={}))
    assert sender_for(receiver.url).send(event()) == HookAnswer()


def test_invalid_json_fails_without_retry(receiver: Receiver) -> None:
    receiver.script(Reply(body=b"not json"))
    with pytest.raises(HookFailed, match="^hook receiver answered invalid JSON"):
        sender_for(receiver.url, retries=2).send(event())
    assert len(receiver.seen) == 1


def test_an_oversize_answer_fails(receiver: Receiver) -> None:
    body = b'{"HTTPResponse": {"Body": "' + b"x" * MAX_ANSWER_BYTES + b'"}}'
    receiver.script(Reply(body=body))
    with pytest.raises(HookFailed, match=f"answer exceeds {MAX_ANSWER_BYTES} bytes"):
        sender_for(receiver.url, retries=2).send(event())
    assert len(receiver.seen) == 1


# Failures and retries.


def test_a_5xx_is_retried_until_it_succeeds(receiver: Receiver) -> None:
    receiver.script(Reply(500, b"busy"), Reply(503), Reply(body=b'{"RejectUpload": true}'))
    answer = sender_for(receiver.url, retries=3, backoff=0.01).send(event(PRE_CREATE))
    assert answer == HookAnswer(reject_upload=True)
    assert len(receiver.seen) == 3


def test_a_lasting_5xx_fails_after_every_retry_with_doubling_backoff(receiver: Receiver) -> None:
    receiver.script(Reply(500, b"Internal\n  Server Error", {}))
    started = time.monotonic()
    with pytest.raises(HookFailed) as failed:
        sender_for(receiver.url, retries=3, backoff=0.05).send(event())
    assert str(failed.value) == (
        "hook receiver answered 500: Internal Server Error (after 4 attempts)"
    )
    times = [seen.at for seen in receiver.seen]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(times) == 4
    for gap, backoff in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert backoff <= gap < backoff + 0.5
    assert time.monotonic() - started < 2


def test_send_may_override_the_retries(receiver: Receiver) -> None:
    receiver.script(Reply(502, b""))
    with pytest.raises(HookFailed, match="^hook receiver answered 502$"):
        sender_for(receiver.url, retries=5, backoff=0.01).send(event(), retries=0)
    assert len(receiver.seen) == 1


@pytest.mark.parametrize("status", [302, 400, 403, 404, 429])
def test_other_failing_answers_are_not_retried(receiver: Receiver, status: int) -> None:
    receiver.script(Reply(status, b"", {}))
    with pytest.raises(HookFailed, match=f"^hook receiver answered {status}$"):
        sender_for(receiver.url, retries=3, backoff=0.01).send(event())
    assert len(receiver.seen) == 1


def test_a_slow_receiver_times_out_in_bounded_time(receiver: Receiver) -> None:
    receiver.script(Reply(delay=5))
    started = time.monotonic()
    with pytest.raises(HookFailed, match=r"^hook receiver timed out after 0\.2 s \(after 2"):
        sender_for(receiver.url, timeout=0.2, retries=1, backoff=0.01).send(event())
    assert time.monotonic() - started < 1.5
    assert len(receiver.seen) == 2


def test_a_trickled_answer_is_bounded_by_the_timeout(receiver: Receiver) -> None:
    """Each read alone would be quick; the timeout bounds them all together."""
    receiver.script(Reply(body=b"{" + b" " * 100 + b"}", drip=0.02))
    started = time.monotonic()
    with pytest.raises(HookFailed, match="timed out after 0.3 s"):
        sender_for(receiver.url, timeout=0.3).send(event())
    assert time.monotonic() - started < 1


def test_an_unreachable_receiver_fails() -> None:
    url = f"http://127.0.0.1:{closed_port()}/hooks"
    started = time.monotonic()
    with pytest.raises(
        HookFailed, match=r"^hook receiver unreachable: connection refused \(after 3 attempts\)$"
    ):
        sender_for(url, retries=2, backoff=0.01).send(event())
    assert time.monotonic() - started < 1


def test_https_to_a_plain_http_receiver_fails_in_tls(receiver: Receiver) -> None:
    with pytest.raises(HookFailed, match="^hook receiver TLS failed: "):
        sender_for(receiver.url.replace("http://", "https://")).send(event())


# Configuration.


def test_wants_only_the_enabled_events() -> None:
    sender = HttpHookSender("http://127.0.0.1:9/", {PRE_CREATE, POST_FINISH}, 1.0, 0, 0.0)
    assert sender.wants(PRE_CREATE) and sender.wants(POST_FINISH)
    assert not sender.wants(POST_RECEIVE) and not sender.wants(PRE_TERMINATE)


def test_from_settings() -> None:
    assert HttpHookSender.from_settings(Settings.load(environ={})) is None
    settings = Settings.load(
        {
            "hooks_http": "https://hooks.example/tus",
            "hooks_enabled_events": "pre-create, post-finish",
            "hooks_http_timeout": 4.0,
            "hooks_http_retries": 2,
            "hooks_http_backoff": 0.5,
        },
        environ={},
    )
    sender = HttpHookSender.from_settings(settings)
    assert sender is not None
    assert (sender.url, sender.timeout, sender.retries, sender.backoff) == (
        "https://hooks.example/tus",
        4.0,
        2,
        0.5,
    )
    assert sender.enabled_events == {PRE_CREATE, POST_FINISH}


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example/", "http://", "hooks.example/tus", "http://h:99999/"]
)
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="hooks_http"):
        HttpHookSender(url, [PRE_CREATE])
