"""The request log under real gunicorn: one line per request, the right fields, nothing secret."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from resumable.request_log import format_line, request_id_for

from ..support import OFFSET_STREAM, TUS, HostedApp, upload_id, wait_until

UNKNOWN_ID = "0" * 32
SECRETS = ("TOPSECRET-AUTH", "TOPSECRET-COOKIE", "TOPSECRET-QUERY", "SECRETBODY")
JSON_KEYS = {"time", "method", "path", "status", "upload_id", "bytes_received", "duration_ms",
             "client", "request_id"}
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def text_lines(log: str) -> list[dict[str, str]]:
    """The access lines of a text log, as key -> value (quoted values decoded)."""
    lines = []
    for line in log.splitlines():
        if "] [access] " not in line:
            continue
        pairs = _PAIR.findall(line.split("] [access] ", 1)[1])
        lines.append({k: json.loads(v) if v.startswith('"') else v for k, v in pairs})
    return lines


def json_lines(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines()
            if line.startswith("{") and '"request_id"' in line]


def only(lines: list[dict], request_id: str) -> dict:
    found = [line for line in lines if line["request_id"] == request_id]
    assert len(found) == 1, (request_id, lines)
    return found[0]


def test_text_lines_one_per_request(start_server) -> None:
    # At gunicorn's default log level, as `resumable serve` runs by default.
    server = start_server("embedded", workers=2, log_level="info")
    earlier = len(text_lines(server.log()))  # the readiness probe's
    session = requests.Session()
    created = session.post(server.endpoint, headers={**TUS, "Upload-Length": "10",
                                                     "X-Request-ID": "t-create"})
    assert created.status_code == 201
    assert created.headers["X-Request-ID"] == "t-create"
    url = created.headers["Location"]
    uid = upload_id(url)
    patched = session.patch(
        url + "?token=TOPSECRET-QUERY",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM,
                 "Authorization": "Bearer TOPSECRET-AUTH", "Cookie": "session=TOPSECRET-COOKIE",
                 "X-Request-ID": "t-patch"},
        data=b"SECRETBODY",
    )
    assert patched.status_code == 204, patched.text
    assert session.head(url, headers={**TUS, "X-Request-ID": "t-head",
                                      "X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert session.head(server.endpoint + UNKNOWN_ID,
                        headers={**TUS, "X-Request-ID": "t-404"}).status_code == 404
    refused = session.head(url, headers={"X-Request-ID": "t-412"})  # no Tus-Resumable
    assert refused.status_code == 412
    assert refused.headers["X-Request-ID"] == "t-412"
    replaced = []
    for bad in ("a" * 500, 'id with "quotes" and spaces'):
        answer = session.head(url, headers={**TUS, "X-Request-ID": bad})
        assert answer.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-ID"])
        replaced.append(answer.headers["X-Request-ID"])
    assert session.get(server.url + "/metrics").status_code == 200  # not the endpoint's

    assert wait_until(lambda: len(text_lines(server.log())) >= earlier + 7, 5), server.log()
    log = server.log()
    lines = text_lines(log)[earlier:]
    assert len(lines) == 7, lines
    assert only(lines, "t-create") | {"duration_ms": "-"} == {
        "method": "POST", "path": "/files/", "status": "201", "upload_id": uid,
        "bytes_received": "0", "duration_ms": "-", "client": "127.0.0.1",
        "request_id": "t-create",
    }
    patch_line = only(lines, "t-patch")
    assert patch_line["method"] == "PATCH"
    assert patch_line["path"] == f"/files/{uid}"
    assert (patch_line["status"], patch_line["upload_id"]) == ("204", uid)
    assert patch_line["bytes_received"] == "10"
    assert float(patch_line["duration_ms"]) >= 0
    head_line = only(lines, "t-head")
    assert (head_line["method"], head_line["status"]) == ("HEAD", "200")
    assert head_line["client"] == "127.0.0.1"  # a proxy header counts only with --trust-proxy
    missing = only(lines, "t-404")
    assert (missing["status"], missing["upload_id"]) == ("404", UNKNOWN_ID)
    assert only(lines, "t-412")["status"] == "412"
    for request_id in replaced:
        assert only(lines, request_id)["status"] == "200"
    assert "a" * 129 not in log and "quotes" not in log
    for secret in SECRETS:
        assert secret not in log


def test_json_lines_behind_a_trusted_proxy(start_server) -> None:
    server = start_server("embedded", workers=2, log_format="json", trust_proxy=True)
    earlier = len(json_lines(server.log()))  # the readiness probe's
    created = requests.post(server.endpoint, headers={**TUS, "Upload-Length": "4",
                                                      "X-Request-ID": "j-create"})
    url = created.headers["Location"]
    patched = requests.patch(url, data=b"abcd", headers={
        **TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM,
        "X-Forwarded-For": "203.0.113.7", "X-Request-ID": "j-patch"})
    assert patched.status_code == 204
    assert requests.options(server.endpoint, headers={"X-Request-ID": "j-options"}
                            ).status_code == 204
    assert requests.head(server.endpoint + UNKNOWN_ID, headers={**TUS, "X-Request-ID": "j-404"}
                         ).status_code == 404

    assert wait_until(lambda: len(json_lines(server.log())) >= earlier + 4, 5), server.log()
    lines = json_lines(server.log())[earlier:]
    assert len(lines) == 4
    assert all(set(line) == JSON_KEYS for line in lines)
    patch_line = only(lines, "j-patch")
    assert patch_line["client"] == "203.0.113.7"
    assert (patch_line["method"], patch_line["status"]) == ("PATCH", 204)
    assert (patch_line["upload_id"], patch_line["bytes_received"]) == (upload_id(url), 4)
    assert isinstance(patch_line["duration_ms"], float)
    assert only(lines, "j-create")["upload_id"] == upload_id(url)
    options_line = only(lines, "j-options")
    assert (options_line["upload_id"], options_line["status"]) == (None, 204)
    assert only(lines, "j-404")["status"] == 404


def test_no_access_log(start_server) -> None:
    server = start_server("embedded", workers=1, access_log=False, log_level="info")
    created = requests.post(server.endpoint, headers={**TUS, "Upload-Length": "1"})
    assert created.status_code == 201
    assert requests.head(created.headers["Location"], headers=TUS).status_code == 200
    # Each line is written before its response goes out: none is still to come.
    assert text_lines(server.log()) == []
    assert "method=" not in server.log()


GUNICORN_CONFIG = """\
import logging

access = logging.getLogger("resumable.access")
access.setLevel(logging.INFO)
access.addHandler(logging.StreamHandler())
access.propagate = False
"""


class HostedWithLogging(HostedApp):
    """The host app under a gunicorn config that routes ``resumable.access`` to stderr."""

    def command(self) -> list[str]:
        config = self.data_dir.parent / f"gunicorn-{self.port}.conf.py"
        config.write_text(GUNICORN_CONFIG)
        command = super().command()
        return [*command[:-1], "--config", str(config), command[-1]]


def test_hosted_app_lines_go_to_its_logger(tmp_path: Path) -> None:
    server = HostedWithLogging(tmp_path / "data").start()
    try:
        earlier = server.log().count("method=")  # the readiness probe's
        assert requests.get(server.url + "/", timeout=10).text == "host home\n"
        created = requests.post(server.endpoint, timeout=10,
                                headers={**TUS, "Upload-Length": "1", "X-Request-ID": "h-1"})
        assert created.status_code == 201
        assert created.headers["X-Request-ID"] == "h-1"
        assert "X-Request-ID" not in requests.get(server.url + "/me", timeout=10).headers
        assert wait_until(lambda: "request_id=h-1" in server.log(), 5), server.log()
        lines = [line for line in server.log().splitlines() if "method=" in line][earlier:]
        assert len(lines) == 1  # the app's own routes are not the endpoint's
        assert lines[0].startswith("method=POST path=/api/uploads/ status=201 upload_id=")
    finally:
        server.stop()


@pytest.mark.parametrize("incoming", ["a\nb", "a" * 129, "", "x y", 'a"b', "é"])
def test_unsafe_request_ids_are_replaced(incoming: str) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_for(incoming))


@pytest.mark.parametrize("incoming", ["abc-123", "a" * 128, "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
                                      "Root=1-5759e988-bd862e3fe1be46a994272793"])
def test_sane_request_ids_are_kept(incoming: str) -> None:
    assert request_id_for(incoming) == incoming


def test_text_values_stay_on_one_line() -> None:
    fields = {"method": "PATCH", "path": "/files/x", "upload_id": 'bad "id"\nnext=line',
              "client": None}
    line = format_line(fields, "text")
    assert "\n" not in line
    pairs = {k: json.loads(v) if v.startswith('"') else v for k, v in _PAIR.findall(line)}
    assert pairs == {"method": "PATCH", "path": "/files/x", "upload_id": 'bad "id"\nnext=line',
                     "client": "-"}
