"""Lifecycle hooks against real servers: tusd-format HTTP receivers and Python receivers.

The HTTP receiver is a real local server (tests/support/hooks.py HookReceiver)
answering as a receiver written for tusd would; the Python receivers are
tests/apps/hooks.py, loaded by ``--hooks``. Delivery across killed workers
is in tests/faults/test_hook_delivery.py.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ..support import (
    OFFSET_STREAM,
    TUS,
    HookReceiver,
    Server,
    SizedBody,
    TusClient,
    decode_metadata,
    encode_metadata,
    pattern_bytes,
    upload_id,
    wait_until,
)

BACKENDS = ("embedded", "redis")
PROGRESS_INTERVAL = 0.5


@pytest.fixture(scope="module")
def receiver() -> HookReceiver:
    hook = HookReceiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module", params=BACKENDS)
def hooked_server(request: pytest.FixtureRequest, receiver: HookReceiver, start_server) -> Server:
    """A server sending every event to ``receiver``, per backend."""
    return start_server(
        request.param,
        hooks_http=receiver.url,
        hooks_http_timeout=2,
        hooks_http_retries=1,
        hooks_http_backoff=0.2,
        progress_interval=PROGRESS_INTERVAL,
    )


@pytest.fixture
def hooked(hooked_server: Server, receiver: HookReceiver) -> Server:
    """The server, its receiver fresh: nothing received, answering ``{}``."""
    receiver.clear()
    receiver.answer = lambda payload: {}
    return hooked_server


def test_a_pre_create_refusal_reaches_the_client_unchanged(
    hooked: Server, receiver: HookReceiver
) -> None:
    def answer(payload: dict) -> dict:
        if payload["Type"] == "pre-create":
            return {"RejectUpload": True, "HTTPResponse": {
                "StatusCode": 418, "Body": "we only take tea", "Header": {"X-Why": "policy"}}}
        return {}

    receiver.answer = answer
    before = set(hooked.upload_ids())
    metadata = {"Upload-Metadata": encode_metadata(a="b")}
    response = TusClient(hooked.endpoint).create(5, headers=metadata)
    assert (response.status_code, response.text) == (418, "we only take tea\n")
    assert response.headers["X-Why"] == "policy"
    assert "Location" not in response.headers
    assert set(hooked.upload_ids()) == before  # nothing half-created
    [event] = receiver.events("pre-create")
    assert event["payload"]["Event"]["Upload"]["MetaData"] == {"a": "b"}
    assert event["payload"]["Event"]["HTTPRequest"]["Method"] == "POST"
    assert receiver.events("post-create") == []


def test_changed_metadata_shows_in_head(hooked: Server, receiver: HookReceiver) -> None:
    receiver.answer = lambda payload: (
        {"ChangeFileInfo": {"MetaData": {"filename": "renamed.bin", "owner": "alice"}}}
        if payload["Type"] == "pre-create" else {}
    )
    tus = TusClient(hooked.endpoint)
    url = tus.new_upload(3, headers={"Upload-Metadata": encode_metadata(filename="orig.bin")})
    metadata = decode_metadata(tus.head(url).headers["Upload-Metadata"])
    assert metadata == {"filename": "renamed.bin", "owner": "alice"}
    assert wait_until(lambda: receiver.events("post-create", upload_id(url)), 5)
    [created] = receiver.events("post-create", upload_id(url))
    assert created["payload"]["Event"]["Upload"]["MetaData"]["filename"] == "renamed.bin"


def test_a_vetoed_delete_leaves_the_upload(hooked: Server, receiver: HookReceiver) -> None:
    receiver.answer = lambda payload: (
        {"RejectTermination": True} if payload["Type"] == "pre-terminate" else {})
    tus = TusClient(hooked.endpoint)
    url = tus.new_upload(3)
    refused = tus.delete(url)
    assert refused.status_code == 400
    assert "termination has been rejected" in refused.text
    assert tus.head(url).status_code == 200
    receiver.answer = lambda payload: {}
    assert tus.delete(url).status_code == 204
    assert tus.head(url).status_code == 404
    assert wait_until(lambda: receiver.events("post-terminate", upload_id(url)), 5)
    [done] = receiver.events("post-terminate", upload_id(url))
    assert done["headers"]["Idempotency-Key"] == f"{upload_id(url)}.post-terminate"


def _slow_body(data: bytes, pieces: int, pause: float):
    size = len(data) // pieces
    for index in range(pieces):
        yield data[index * size : (index + 1) * size if index < pieces - 1 else len(data)]
        time.sleep(pause)


def test_post_receive_comes_at_the_configured_interval(
    hooked: Server, receiver: HookReceiver
) -> None:
    tus = TusClient(hooked.endpoint)
    # A slow body wakes the server every 64 KiB (body.py's LOW_WATER): 32 KiB pieces.
    data = pattern_bytes(20 * 32 * 1024)
    url = tus.new_upload(len(data))
    response = tus.patch(url, 0, SizedBody(_slow_body(data, 20, 0.15), len(data)))
    assert response.status_code == 204
    uid = upload_id(url)
    progress = receiver.events("post-receive", uid)
    # About 3 s of body at one event per half second: some, never closer than the interval.
    assert 3 <= len(progress) <= 8, [e["payload"]["Event"]["Upload"]["Offset"] for e in progress]
    gaps = [b["at"] - a["at"] for a, b in zip(progress, progress[1:], strict=False)]
    assert min(gaps) >= PROGRESS_INTERVAL * 0.8, gaps
    offsets = [e["payload"]["Event"]["Upload"]["Offset"] for e in progress]
    assert offsets == sorted(offsets) and 0 < offsets[-1] <= len(data)
    assert wait_until(lambda: receiver.events("post-finish", uid), 5)
    [finish] = receiver.events("post-finish", uid)
    upload = finish["payload"]["Event"]["Upload"]
    assert (upload["Offset"], upload["Size"], upload["SizeIsDeferred"]) == (
        len(data), len(data), False)
    assert finish["headers"]["Idempotency-Key"] == f"{uid}.post-finish"
    assert finish["payload"]["EventID"] == f"{uid}.post-finish"


def test_a_stopped_upload_keeps_what_came(hooked: Server, receiver: HookReceiver) -> None:
    receiver.answer = lambda payload: (
        {"StopUpload": True} if payload["Type"] == "post-receive"
        and payload["Event"]["Upload"]["Offset"] > 0 else {})
    tus = TusClient(hooked.endpoint)
    data = pattern_bytes(20 * 32 * 1024)
    url = tus.new_upload(len(data))
    response = tus.patch(url, 0, SizedBody(_slow_body(data, 20, 0.15), len(data)))
    assert response.status_code == 400, response.text
    assert "stopped" in response.text
    offset = tus.offset(url)
    assert 0 < offset < len(data)
    assert int(response.headers["Upload-Offset"]) == offset


def test_a_pre_finish_refusal_deletes_the_upload(hooked: Server, receiver: HookReceiver) -> None:
    receiver.answer = lambda payload: (
        {"RejectUpload": True, "HTTPResponse": {"StatusCode": 422, "Body": "not an image"}}
        if payload["Type"] == "pre-finish" else {})
    tus = TusClient(hooked.endpoint)
    url = tus.new_upload(4)
    assert tus.patch(url, 0, b"ab").status_code == 204
    refused = tus.patch(url, 2, b"cd")
    assert (refused.status_code, refused.text) == (422, "not an image\n")
    assert tus.head(url).status_code == 404
    time.sleep(1)
    assert receiver.events("post-finish", upload_id(url)) == []


def test_a_receiver_that_fails_refuses_pre_hooks(hooked: Server, receiver: HookReceiver) -> None:
    receiver.answer = lambda payload: 500 if payload["Type"] == "pre-create" else {}
    before = set(hooked.upload_ids())
    response = TusClient(hooked.endpoint).create(3)
    assert response.status_code == 503
    assert response.text == "the pre-create hook failed; retry later\n"
    assert len(receiver.events("pre-create")) == 2  # one retry
    assert set(hooked.upload_ids()) == before


def test_creation_with_upload_and_empty_uploads_finish(
    hooked: Server, receiver: HookReceiver
) -> None:
    tus = TusClient(hooked.endpoint)
    whole = tus.new_upload(5, data=b"hello")
    empty = tus.new_upload(0)
    for url in (whole, empty):
        assert wait_until(lambda u=url: receiver.events("post-finish", upload_id(u)), 5)
        assert len(receiver.events("pre-finish", upload_id(url))) == 1


def test_an_unreachable_receiver_gets_post_finish_when_it_is_back(
    start_server, tmp_path: Path
) -> None:
    """The post-finish is owed while the receiver is down, and delivered by the sweeper."""
    late = HookReceiver()
    url_of_receiver = late.url
    late.close()  # down while the upload finishes
    server = start_server("redis", hooks_http=url_of_receiver, hooks_http_timeout=1,
                          hooks_http_retries=0, hooks_enabled_events="post-finish")
    tus = TusClient(server.endpoint)
    url = tus.new_upload(3, data=b"abc")
    time.sleep(1.5)
    # The workers that owed it die; their replacements, serving nothing, deliver it.
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: len(server.worker_pids()) == 2, 10)
    port = int(url_of_receiver.split(":")[2].split("/")[0])
    back = _receiver_on(port)
    try:
        assert wait_until(lambda: back.events("post-finish", upload_id(url)), 20)
    finally:
        back.close()


def test_a_finished_upload_is_kept_while_its_post_finish_is_owed(start_server) -> None:
    """--finished-expiry counts only once the receiver has heard of the finish."""
    down = HookReceiver()
    port = down.server.server_address[1]
    down.close()
    server = start_server("embedded", hooks_http=down.url, hooks_http_timeout=0.5,
                          hooks_http_retries=0, hooks_enabled_events="post-finish",
                          finished_expiry=1, gc_interval=1)
    tus = TusClient(server.endpoint)
    url = tus.new_upload(3, data=b"abc")
    time.sleep(3.5)  # past its retention; the collector ran a few times
    assert tus.head(url).status_code == 200
    assert tus.get(url).content == b"abc"
    back = _receiver_on(port)
    try:
        assert wait_until(lambda: back.events("post-finish", upload_id(url)), 20)
        assert wait_until(lambda: tus.head(url).status_code in (404, 410), 10)
    finally:
        back.close()


def _receiver_on(port: int) -> HookReceiver:
    """A receiver on a given port (the one a server was configured with)."""
    import http.server

    original = http.server.ThreadingHTTPServer.__init__

    def bind_to(self, address, handler, *args, **kwargs):  # noqa: ANN001, ANN202
        original(self, ("127.0.0.1", port), handler, *args, **kwargs)

    http.server.ThreadingHTTPServer.__init__ = bind_to
    try:
        return HookReceiver()
    finally:
        http.server.ThreadingHTTPServer.__init__ = original


# -- Python receivers ------------------------------------------------------------


@pytest.fixture
def hook_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hooks.jsonl"
    path.touch()
    monkeypatch.setenv("HOOK_LOG", str(path))
    return path


def _logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_python_receivers(start_server, hook_log: Path) -> None:
    server = start_server("embedded", hooks="tests.apps.hooks:receivers",
                          progress_interval=PROGRESS_INTERVAL)
    tus = TusClient(server.endpoint)
    refused = tus.create(3, headers={"Upload-Metadata": encode_metadata(filename="setup.exe")})
    assert (refused.status_code, refused.text) == (422, "no executables, please\n")
    renamed = encode_metadata(filename="a", rename="b.txt")
    url = tus.new_upload(3, headers={"Upload-Metadata": renamed})
    assert decode_metadata(tus.head(url).headers["Upload-Metadata"]) == {"filename": "b.txt"}
    kept = tus.new_upload(2, headers={"Upload-Metadata": encode_metadata(keep="")})
    assert tus.delete(kept).status_code == 400
    assert tus.head(kept).status_code == 200
    assert tus.patch(url, 0, b"xyz").status_code == 204
    uid = upload_id(url)
    assert wait_until(
        lambda: any(e["type"] == "post-finish" and e["upload"]["id"] == uid
                    for e in _logged(hook_log)), 5)
    kinds = [e["type"] for e in _logged(hook_log) if e["upload"]["id"] == uid]
    assert kinds[:2] == ["pre-create", "post-create"] and "post-finish" in kinds

    data = pattern_bytes(20 * 32 * 1024)
    slow = tus.new_upload(len(data))
    assert tus.patch(slow, 0, SizedBody(_slow_body(data, 20, 0.15), len(data))).status_code == 204
    progress = [e for e in _logged(hook_log)
                if e["type"] == "post-receive" and e["upload"]["id"] == upload_id(slow)]
    gaps = [b["at"] - a["at"] for a, b in zip(progress, progress[1:], strict=False)]
    assert len(progress) >= 3 and min(gaps) >= PROGRESS_INTERVAL * 0.8, gaps
    stopped = tus.new_upload(len(data), headers={"Upload-Metadata": encode_metadata(stop="yes")})
    answer = tus.patch(stopped, 0, SizedBody(_slow_body(data, 20, 0.15), len(data)))
    assert (answer.status_code, answer.text) == (409, "stopped by the app\n")
    assert 0 < tus.offset(stopped) < len(data)


def test_hooks_that_cannot_be_loaded_stop_serve(tmp_path: Path) -> None:
    import subprocess
    import sys

    for spec, message in (("tests.apps.nothing:x", "cannot be imported"),
                          ("tests.apps.hooks", "must look like")):
        result = subprocess.run(
            [sys.executable, "-m", "resumable", "serve", "--data-dir", str(tmp_path),
             "--hooks", spec], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "resumable", "serve", "--data-dir", str(tmp_path),
         "--hooks-http", "ftp://example/"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr


def test_the_extension_decorator(tmp_path: Path) -> None:
    from flask import Flask

    from resumable import Resumable
    from resumable.events import HookAnswer

    app = Flask("decorated")
    app.config["RESUMABLE_DATA_DIR"] = str(tmp_path)
    uploads = Resumable()
    seen: list[str] = []
    finished = threading.Event()

    @uploads.hook("pre-create")
    def only_small(event):  # noqa: ANN001, ANN202
        seen.append(event.type)
        if (event.upload.size or 0) > 10:
            return HookAnswer(reject_upload=True, status=413, body="too big for us")
        return None

    uploads.init_app(app, url_prefix="/up")

    @uploads.hook("post-finish")
    def done(event):  # noqa: ANN001, ANN202
        from flask import current_app  # delivered on a thread, inside the app's context

        seen.append(f"{event.type} {event.upload.offset} {current_app.name}")
        finished.set()

    client = app.test_client()
    big = client.post("/up/", headers={**TUS, "Upload-Length": "11"})
    assert (big.status_code, big.get_data()) == (413, b"too big for us\n")
    small = client.post("/up/", headers={**TUS, "Upload-Length": "2",
                                          "Content-Type": OFFSET_STREAM}, data=b"hi")
    assert small.status_code == 201
    assert finished.wait(5)
    assert seen == ["pre-create", "pre-create", "post-finish 2 decorated"]
    assert wait_until(lambda: not os.listdir(tmp_path / "post-finish"), 5)  # nothing owed
    with pytest.raises(ValueError, match="no such event"):
        uploads.hook("post-upload")



def test_draft_uploads_reach_the_same_receivers(hooked: Server, receiver: HookReceiver) -> None:
    """An IETF draft upload is an upload like any other: its name and type are metadata."""
    import requests

    draft = {"Upload-Draft-Interop-Version": "9"}
    response = requests.post(hooked.endpoint, timeout=10, headers={  # careful: no 104
        **draft, "Upload-Complete": "?0", "Upload-Length": "11",
        "Content-Type": "text/plain", "Content-Disposition": 'attachment; filename="n.txt"'})
    assert response.status_code == 201
    url = response.headers["Location"]
    uid = upload_id(url)
    done = requests.patch(url, data=b"draft bytes", timeout=10, headers={
        **draft, "Upload-Complete": "?1", "Upload-Offset": "0",
        "Content-Type": "application/partial-upload"})
    assert done.status_code == 204
    assert wait_until(lambda: receiver.events("post-finish", uid), 5)
    [finish] = receiver.events("post-finish", uid)
    upload = finish["payload"]["Event"]["Upload"]
    assert upload["MetaData"] == {"filename": "n.txt", "filetype": "text/plain"}
    assert (upload["Size"], upload["Offset"]) == (11, 11)
    assert receiver.events("pre-create", uid)


@pytest.mark.parametrize("refusal", ["pre-finish", "repr-digest"])
def test_a_refused_draft_finish_deletes_the_upload(
    hooked: Server, receiver: HookReceiver, refusal: str
) -> None:
    """A draft upload's finish refused, by a pre-finish receiver or because the bytes do
    not match the creation's Repr-Digest: the upload is gone and post-finish never comes."""
    import hashlib

    import requests

    if refusal == "pre-finish":
        receiver.answer = lambda payload: (
            {"RejectUpload": True, "HTTPResponse": {"StatusCode": 422, "Body": "no"}}
            if payload["Type"] == "pre-finish" else {})
    meant = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    draft = {"Upload-Draft-Interop-Version": "9"}
    response = requests.post(hooked.endpoint, timeout=10, headers={
        **draft, "Upload-Complete": "?0", "Upload-Length": "11",
        "Repr-Digest": f"sha-256=:{meant}:" if refusal == "repr-digest" else "sha-512=:AA==:"})
    assert response.status_code == (201 if refusal == "repr-digest" else 400)
    if refusal == "pre-finish":  # that malformed digest refused: create it without one
        response = requests.post(hooked.endpoint, timeout=10, headers={
            **draft, "Upload-Complete": "?0", "Upload-Length": "11"})
    url = response.headers["Location"]
    done = requests.patch(url, data=b"draft bytes", timeout=10, headers={
        **draft, "Upload-Complete": "?1", "Upload-Offset": "0",
        "Content-Type": "application/partial-upload"})
    assert done.status_code == (422 if refusal == "pre-finish" else 400), done.text
    assert requests.head(url, headers=draft, timeout=10).status_code == 404
    time.sleep(1)
    assert receiver.events("post-finish", upload_id(url)) == []
