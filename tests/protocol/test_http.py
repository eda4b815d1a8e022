"""The HTTP surface around the tus core, against real gunicorn servers on both backends.

Tus-Resumable on every response, Tus-Max-Size, CORS for browser clients,
absolute and proxy-aware Location URLs, a custom base path, Upload-Metadata
as real clients send it, downloads (Range, Content-Disposition, types that
must not render inline), hostile upload ids, and the body framings clients
use (chunked, Expect: 100-continue, empty).

Requests whose path a client library would normalise, and those that need
control over the wire (100-continue), go through :func:`raw_request`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import unquote

import pytest
import requests

from ..support import (
    OFFSET_STREAM,
    TUS,
    Server,
    TusClient,
    b64,
    encode_metadata,
    make_upload,
    raw_request,
    upload_id,
)

ORIGIN = "https://app.example"
ALLOWED_ORIGIN = "https://a.example"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------
# Servers and guarded clients
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_server(backend: str, start_server) -> Server:
    """Behind a trusted proxy, one allowed CORS origin, no size limit."""
    return start_server(backend, trust_proxy=True, cors_origins=ALLOWED_ORIGIN)


@pytest.fixture(scope="module")
def prefixed_server(backend: str, start_server) -> Server:
    """The tus endpoint mounted at /up/ instead of /files/."""
    return start_server(backend, base_path="/up/")


@pytest.fixture
def tus(server: Server, guarded_client: Callable[[Server], TusClient]) -> TusClient:
    """A guarded client of the default server."""
    return guarded_client(server)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def finished_upload(tus: TusClient, data: bytes, **meta: str | bytes) -> str:
    headers = {"Upload-Metadata": encode_metadata(**meta)} if meta else None
    return make_upload(tus, len(data), data, headers)


def tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


_CD_PARAM = r'; ?([A-Za-z*]+)=("(?:[^"\\\r\n]|\\[^\r\n])*"|[^";\s]+)'
_CONTENT_DISPOSITION = re.compile(rf"(inline|attachment)((?:{_CD_PARAM})*)")


def parse_content_disposition(value: str) -> tuple[str, dict[str, str]]:
    """Disposition type and decoded parameters; asserts the header is well formed."""
    assert value.isascii() and "\r" not in value and "\n" not in value, value
    match = _CONTENT_DISPOSITION.fullmatch(value)
    assert match, f"malformed Content-Disposition: {value!r}"
    params: dict[str, str] = {}
    for name, raw in re.findall(_CD_PARAM, match.group(2)):
        name = name.lower()
        if name == "filename*":
            charset, _, encoded = raw.partition("''")
            assert charset.upper() == "UTF-8", raw
            params[name] = unquote(encoded, encoding="utf-8", errors="strict")
        elif raw.startswith('"'):
            params[name] = re.sub(r"\\(.)", r"\1", raw[1:-1])
        else:
            params[name] = raw
    return match.group(1), params


# --------------------------------------------------------------------------
# Tus-Resumable on every response
# --------------------------------------------------------------------------


def _upload_at(tus: TusClient, offset: int, length: int = 10) -> str:
    url = tus.new_upload(length)
    if offset:
        assert tus.patch(url, 0, b"x" * offset).status_code == 204
    return url


RESPONSES: dict[str, tuple[set[int], Callable[[TusClient, Server], requests.Response]]] = {
    "options": ({200, 204}, lambda t, s: t.options()),
    "options-bogus-version": ({200, 204}, lambda t, s: t.options(**{"Tus-Resumable": "9"})),
    "post-201": ({201}, lambda t, s: t.create(10)),
    "post-with-data-201": ({201}, lambda t, s: t.create(10, data=b"abc")),
    "head-200": ({200, 204}, lambda t, s: t.head(_upload_at(t, 3))),
    "patch-204": ({204}, lambda t, s: t.patch(_upload_at(t, 0), 0, b"abc")),
    "get-200": ({200}, lambda t, s: t.get(_upload_at(t, 10))),
    "get-206": ({206}, lambda t, s: t.get(_upload_at(t, 10), {"Range": "bytes=0-1"})),
    "delete-204": ({204}, lambda t, s: t.delete(_upload_at(t, 3))),
    "head-404": ({404}, lambda t, s: t.head(s.endpoint + secrets.token_hex(16))),
    "get-404": ({404}, lambda t, s: t.get(s.endpoint + secrets.token_hex(16))),
    "patch-404": ({404}, lambda t, s: t.patch(s.endpoint + secrets.token_hex(16), 0, b"")),
    "route-404": ({404}, lambda t, s: t.session.get(s.url + "/elsewhere", timeout=30)),
    "put-405": ({405}, lambda t, s: t.session.put(_upload_at(t, 0), headers=TUS, timeout=30)),
    "delete-collection-405": (
        {405},
        lambda t, s: t.session.delete(s.endpoint, headers=TUS, timeout=30),
    ),
    "post-400": ({400}, lambda t, s: t.create()),
    "patch-409": ({409}, lambda t, s: t.patch(_upload_at(t, 3), 0, b"abc")),
    "post-412": (
        {412},
        lambda t, s: t.session.post(s.endpoint, headers={"Upload-Length": "1"}, timeout=30),
    ),
    "head-412": ({412}, lambda t, s: t.session.head(_upload_at(t, 0), timeout=30)),
    "post-413": ({413}, lambda t, s: t.create(10**12)),
    "patch-413": ({413}, lambda t, s: t.patch(_upload_at(t, 8), 8, b"abc")),
    "patch-415": (
        {415},
        lambda t, s: t.patch(_upload_at(t, 0), 0, b"a", {"Content-Type": "text/plain"}),
    ),
    "patch-460": (
        {460},
        lambda t, s: t.patch(
            _upload_at(t, 0), 0, b"a", {"Upload-Checksum": "sha1 " + b64(b"x" * 20)}
        ),
    ),
}


@pytest.mark.parametrize("case", list(RESPONSES))
def test_tus_resumable_on_every_response(tus: TusClient, server: Server, case: str) -> None:
    statuses, send = RESPONSES[case]
    response = send(tus, server)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0", dict(response.headers)
    if response.status_code == 405:
        assert "Allow" in response.headers
    if response.status_code == 412:
        assert response.headers.get("Tus-Version") == "1.0.0"


def test_tus_resumable_on_raw_404(server: Server) -> None:
    response = raw_request(server, "HEAD", "/files/%2e%2e", TUS)
    assert response.status == 404
    assert response.headers.get("tus-resumable") == "1.0.0"


# --------------------------------------------------------------------------
# Tus-Max-Size
# --------------------------------------------------------------------------


def test_tus_max_size_advertised_when_limited(tus: TusClient) -> None:
    assert tus.options().headers.get("Tus-Max-Size") == "1000000000"


def test_tus_max_size_absent_without_limit(proxy_server: Server, guarded_client) -> None:
    response = guarded_client(proxy_server).options()
    assert response.status_code in (200, 204)
    assert "Tus-Version" in response.headers
    assert "Tus-Max-Size" not in response.headers
    # and without a limit, a large upload is accepted
    assert guarded_client(proxy_server).create(10**12).status_code == 201


# --------------------------------------------------------------------------
# CORS
# --------------------------------------------------------------------------


PREFLIGHT_HEADERS = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "PATCH",
    "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type,x-request-id",
}


@pytest.mark.parametrize("target", ["collection", "upload"])
def test_cors_preflight(tus: TusClient, server: Server, target: str) -> None:
    """A browser preflight (no Tus-Resumable) → 2xx allowing the tus methods and headers."""
    url = server.endpoint if target == "collection" else tus.new_upload(10)
    response = tus.session.options(url, headers=PREFLIGHT_HEADERS, timeout=30)
    assert 200 <= response.status_code < 300, (response.status_code, response.text)
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")
    methods = tokens(response.headers.get("Access-Control-Allow-Methods"))
    assert {"post", "head", "patch", "delete"} <= methods
    allowed = tokens(response.headers.get("Access-Control-Allow-Headers"))
    assert {
        "upload-offset",
        "tus-resumable",
        "x-request-id",
        "upload-length",
        "upload-metadata",
        "upload-defer-length",
        "upload-checksum",
        "upload-concat",
        "content-type",
        "x-http-method-override",
    } <= allowed


def test_cors_expose_headers(tus: TusClient, server: Server) -> None:
    """Normal responses to a cross-origin request expose the headers tus clients read."""
    needed = {"location", "upload-offset", "upload-length"}
    origin = {"Origin": ORIGIN}
    created = tus.create(10, headers=origin)
    assert created.status_code == 201
    url = created.headers["Location"]
    responses = {
        "POST": created,
        "HEAD": tus.head(url, origin),
        "PATCH": tus.patch(url, 0, b"abc", origin),
        "HEAD 404": tus.head(server.endpoint + secrets.token_hex(16), origin),
        "PATCH 409": tus.patch(url, 0, b"abc", origin),
    }
    for name, response in responses.items():
        assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*"), name
        exposed = tokens(response.headers.get("Access-Control-Expose-Headers"))
        assert needed <= exposed, (name, exposed)


def test_cors_listed_origin(proxy_server: Server, guarded_client) -> None:
    """With cors_origins set, a listed origin is echoed, preflight and normal alike."""
    client = guarded_client(proxy_server)
    preflight = client.session.options(
        proxy_server.endpoint, headers={**PREFLIGHT_HEADERS, "Origin": ALLOWED_ORIGIN}, timeout=30
    )
    assert 200 <= preflight.status_code < 300
    assert preflight.headers.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN
    assert "origin" in tokens(preflight.headers.get("Vary"))
    created = client.create(10, headers={"Origin": ALLOWED_ORIGIN})
    assert created.status_code == 201
    assert created.headers.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN


def test_cors_disallowed_origin(proxy_server: Server, guarded_client) -> None:
    """With cors_origins set, another origin gets no Access-Control-Allow-Origin."""
    client = guarded_client(proxy_server)
    evil = "https://evil.example"
    preflight = client.session.options(
        proxy_server.endpoint, headers={**PREFLIGHT_HEADERS, "Origin": evil}, timeout=30
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    created = client.create(10, headers={"Origin": evil})
    assert created.status_code == 201
    assert "Access-Control-Allow-Origin" not in created.headers
    assert "Access-Control-Allow-Credentials" not in created.headers
    head = client.head(created.headers["Location"], {"Origin": evil})
    assert "Access-Control-Allow-Origin" not in head.headers


# --------------------------------------------------------------------------
# Location: absolute, usable, proxy-aware
# --------------------------------------------------------------------------


def test_location_is_absolute_and_usable(tus: TusClient, server: Server) -> None:
    response = tus.create(5)
    assert response.status_code == 201
    location = response.headers["Location"]
    assert re.fullmatch(rf"http://127\.0\.0\.1:{server.port}/files/[0-9a-f]{{32}}", location)
    assert tus.offset(location) == 0
    assert tus.patch(location, 0, b"hello").status_code == 204
    assert tus.get(location).content == b"hello"
    assert tus.delete(location).status_code == 204


PROXY_HEADERS = {
    "x-forwarded": {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example"},
    "forwarded": {"Forwarded": "proto=https;host=uploads.example"},
}


@pytest.mark.parametrize("style", list(PROXY_HEADERS))
def test_location_behind_trusted_proxy(proxy_server: Server, guarded_client, style: str) -> None:
    client = guarded_client(proxy_server)
    response = client.create(5, headers=PROXY_HEADERS[style])
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    match = re.fullmatch(r"https://uploads\.example/files/([0-9a-f]{32})", location)
    assert match, location
    assert client.offset(proxy_server.endpoint + match.group(1)) == 0


@pytest.mark.parametrize("style", list(PROXY_HEADERS))
def test_proxy_headers_ignored_without_trust(tus: TusClient, server: Server, style: str) -> None:
    response = tus.create(5, headers=PROXY_HEADERS[style])
    assert response.status_code == 201
    location = response.headers["Location"]
    assert re.fullmatch(re.escape(server.endpoint) + "[0-9a-f]{32}", location), location


# --------------------------------------------------------------------------
# Custom base path
# --------------------------------------------------------------------------


@pytest.mark.parametrize("collection", ["/up/", "/up"])
def test_custom_base_path(prefixed_server: Server, guarded_client, collection: str) -> None:
    client = guarded_client(prefixed_server)
    response = client.session.post(
        prefixed_server.url + collection,
        headers={**TUS, "Upload-Length": "5"},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 201, (response.status_code, response.text)
    location = response.headers["Location"]
    assert re.fullmatch(
        rf"http://127\.0\.0\.1:{prefixed_server.port}/up/[0-9a-f]{{32}}", location
    ), location
    assert client.patch(location, 0, b"hello").status_code == 204
    assert client.offset(location) == 5
    assert client.get(location).content == b"hello"
    assert client.delete(location).status_code == 204
    assert client.head(location).status_code in (404, 410)


def test_custom_base_path_discovery_and_old_path(prefixed_server: Server, guarded_client) -> None:
    client = guarded_client(prefixed_server)
    options = client.options()
    assert client.endpoint.endswith("/up/")
    assert options.status_code in (200, 204)
    assert options.headers.get("Tus-Version") == "1.0.0"
    old = client.session.post(
        prefixed_server.url + "/files/", headers={**TUS, "Upload-Length": "5"}, timeout=30
    )
    assert old.status_code == 404


# --------------------------------------------------------------------------
# Upload-Metadata as clients send it (clients.md item 10)
# --------------------------------------------------------------------------


def test_empty_metadata_header(tus: TusClient) -> None:
    """tuspy sends an empty Upload-Metadata when there is none: accepted, nothing echoed."""
    response = tus.create(5, headers={"Upload-Metadata": ""})
    assert response.request.headers["Upload-Metadata"] == ""
    assert response.status_code == 201, response.text
    head = tus.head(response.headers["Location"])
    assert head.status_code == 200
    assert "Upload-Metadata" not in head.headers


@pytest.mark.parametrize(
    "value",
    [
        "is_confidential ,filename d29ybGQ=",  # tus-js-client: "key " for an empty value
        "filename d29ybGQ=,is_confidential",
        "b Yg==,a YQ==",  # order kept
        "a YQ==, b Yg==",  # whitespace after the comma kept
        "k /w==,K AA==",  # non-UTF-8 value; keys are case-sensitive
        "relativePath bnVsbA==,name cGhvdG8uanBn,type aW1hZ2UvanBlZw==,"
        "filetype aW1hZ2UvanBlZw==,filename cGhvdG8uanBn",  # Uppy
    ],
)
def test_metadata_echoed_byte_for_byte(tus: TusClient, value: str) -> None:
    response = tus.create(5, headers={"Upload-Metadata": value})
    assert response.status_code == 201, response.text
    head = tus.head(response.headers["Location"])
    assert head.headers.get("Upload-Metadata") == value


# --------------------------------------------------------------------------
# GET: download
# --------------------------------------------------------------------------


def test_download_full_and_range(tus: TusClient) -> None:
    url = finished_upload(tus, b"hello world", filename="hello.txt", filetype="text/plain")
    full = tus.get(url)
    assert full.status_code == 200
    assert full.content == b"hello world"
    assert full.headers["Content-Length"] == "11"
    part = tus.get(url, {"Range": "bytes=2-5"})
    assert part.status_code == 206, part.status_code
    assert part.content == b"llo "
    assert part.headers["Content-Range"] == "bytes 2-5/11"


def test_download_ascii_filename(tus: TusClient) -> None:
    url = finished_upload(tus, b"%PDF", filename="report.pdf", filetype="application/pdf")
    response = tus.get(url)
    assert response.status_code == 200
    kind, params = parse_content_disposition(response.headers["Content-Disposition"])
    assert kind == "attachment"
    assert params["filename"] == "report.pdf"


def test_download_non_ascii_filename(tus: TusClient) -> None:
    name = "résumé ✓ 2024.txt"
    url = finished_upload(tus, b"text", filename=name, filetype="text/plain")
    response = tus.get(url)
    assert response.status_code == 200
    value = response.headers["Content-Disposition"]
    assert "filename*=UTF-8''" in value
    kind, params = parse_content_disposition(value)
    assert kind == "inline"
    assert params["filename*"] == name
    assert params["filename"].isascii()


@pytest.mark.parametrize(
    "name",
    [
        'quote"d.txt',
        "crlf\r\nX-Injected: yes.txt",
        "lf\nX-Injected: yes.txt",
        "cr\rX-Injected: yes.txt",
        'naïve\r\n"both".txt',
        "back\\slash;semi=colon.txt",
        "nul\x00byte.txt",
    ],
    ids=["quote", "crlf", "lf", "cr", "non-ascii-crlf-quote", "backslash-semicolon", "nul"],
)
def test_download_hostile_filename(tus: TusClient, name: str) -> None:
    """Quotes, CR, LF, NUL in a file name never break or inject headers."""
    url = finished_upload(tus, b"data", filename=name)
    response = tus.get(url)
    assert response.status_code == 200
    assert response.content == b"data"
    assert "X-Injected" not in response.headers
    _, params = parse_content_disposition(response.headers["Content-Disposition"])
    assert params.get("filename"), params
    for decoded in params.values():
        assert not set(decoded) & set('"\r\n\x00'), decoded


@pytest.mark.parametrize(
    "filetype",
    [
        "text/html",
        "image/svg+xml",
        "TEXT/HTML",
        "text/html; charset=utf-8",
        "application/xhtml+xml",
        "text/xml",
    ],
)
def test_download_active_content_is_attachment(tus: TusClient, filetype: str) -> None:
    url = finished_upload(tus, b"<svg onload=alert(1)>", filename="x", filetype=filetype)
    response = tus.get(url)
    assert response.status_code == 200
    kind, _ = parse_content_disposition(response.headers["Content-Disposition"])
    assert kind == "attachment"
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


def test_download_png_is_inline(tus: TusClient) -> None:
    png = b"\x89PNG\r\n\x1a\n"
    url = finished_upload(tus, png, filename="pic.png", filetype="image/png")
    response = tus.get(url)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    disposition = response.headers.get("Content-Disposition")
    if disposition is not None:
        assert parse_content_disposition(disposition)[0] == "inline"
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.content == png


@pytest.mark.parametrize("deferred", [False, True], ids=["known-length", "deferred-length"])
def test_download_incomplete_upload_refused(tus: TusClient, deferred: bool) -> None:
    if deferred:
        url = tus.new_upload(None, headers={"Upload-Defer-Length": "1"})
    else:
        url = tus.new_upload(10)
    assert tus.patch(url, 0, b"abc").status_code == 204
    for headers in (None, {"Range": "bytes=0-1"}):
        response = tus.get(url, headers)
        assert response.status_code not in (200, 206), response.status_code
        assert 400 <= response.status_code < 500
        assert b"abc" not in response.content


def test_head_unknown_and_deleted_upload(tus: TusClient, server: Server) -> None:
    unknown = tus.head(server.endpoint + secrets.token_hex(16))
    assert unknown.status_code == 404
    assert "Upload-Offset" not in unknown.headers
    url = _upload_at(tus, 3)
    assert tus.delete(url).status_code == 204
    deleted = tus.head(url)
    assert deleted.status_code in (404, 410)
    assert "Upload-Offset" not in deleted.headers


# --------------------------------------------------------------------------
# Hostile upload ids
# --------------------------------------------------------------------------


BAD_IDS = {
    "dot-dot": "..",
    "encoded-dot-dot": "%2e%2e",
    "traversal": "a/../b",
    "nul": "%00",
    "5000-chars": "f" * 5000,
    "uppercase-of-existing": "UPPER",
    "31-chars-of-existing": "SHORT",
}


@pytest.mark.parametrize("kind", list(BAD_IDS))
def test_bad_upload_ids_are_404(tus: TusClient, server: Server, kind: str) -> None:
    """Ids the server cannot have made → 404 for HEAD/GET/PATCH/DELETE, never a 5xx."""
    existing = tus.new_upload(10)
    existing_id = upload_id(existing)
    bad_id = {"UPPER": existing_id.upper(), "SHORT": existing_id[:31]}.get(
        BAD_IDS[kind], BAD_IDS[kind]
    )
    target = "/files/" + bad_id
    answers = {}
    for method in ("HEAD", "GET", "PATCH", "DELETE"):
        headers = dict(TUS)
        if method == "PATCH":
            headers.update(
                {"Content-Type": OFFSET_STREAM, "Upload-Offset": "0", "Content-Length": "0"}
            )
        response = raw_request(server, method, target, headers)
        answers[method] = (
            response.status,
            "upload-offset" in response.headers,
            response.headers.get("tus-resumable"),
        )
    assert answers == {m: (404, False, "1.0.0") for m in answers}, answers
    assert tus.offset(existing) == 0  # the real upload was not touched


# --------------------------------------------------------------------------
# Body framings
# --------------------------------------------------------------------------


def test_chunked_patch(tus: TusClient) -> None:
    url = tus.new_upload(11)
    response = tus.patch(url, 0, iter([b"hello", b" ", b"world"]))
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "11"
    assert tus.get(url).content == b"hello world"


def test_chunked_patch_deferred_length(tus: TusClient) -> None:
    url = tus.new_upload(None, headers={"Upload-Defer-Length": "1"})
    response = tus.patch(url, 0, iter([b"abc", b"def"]))
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "6"
    assert tus.offset(url) == 6


#: Bodies sent after 100 Continue, as (framing headers, wire bytes, content).
CONTINUED_BODIES = {
    "content-length": ({"Content-Length": "5"}, b"hello", b"hello"),
    # tus-java-client: chunked, no Content-Length.
    "chunked": ({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                b"hello world"),
}


@pytest.mark.parametrize("framing", list(CONTINUED_BODIES))
def test_expect_100_continue(tus: TusClient, server: Server, framing: str) -> None:
    """Expect: 100-continue is answered 100 at once, then the body is taken."""
    extra, wire, content = CONTINUED_BODIES[framing]
    url = tus.new_upload(len(content))
    headers = {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": "0",
               "Expect": "100-continue", **extra}
    started = time.monotonic()
    response = raw_request(server, "PATCH", url, headers, wire, wait_for_continue=True)
    assert response.interim == [100]
    assert time.monotonic() - started < 3  # the body was not held back by a timeout
    assert response.status == 204, response
    assert response.headers["upload-offset"] == str(len(content))
    assert tus.get(url).content == content


def test_empty_patch_with_content_length_zero(tus: TusClient) -> None:
    url = _upload_at(tus, 3)
    response = tus.patch(url, 3, b"")
    assert response.request.headers.get("Content-Length") == "0"
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "3"
    assert tus.offset(url) == 3


def test_chunked_lines_split_across_packets(tus: TusClient, server: Server) -> None:
    """Chunk-size lines and the final CRLF arriving in pieces still make one body.

    Clients write whenever their buffers say so: a line may end in a later
    packet than it began.
    """
    url = tus.new_upload(10)
    pieces = [b"5\r", b"\nhello\r\n5", b"\r\nworld\r", b"\n0\r", b"\n\r", b"\n"]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM,
               "Transfer-Encoding": "chunked"}
    response = raw_request(server, "PATCH", url, headers, pieces, pause=0.05)
    assert response.status == 204, response
    assert tus.offset(url) == 10
    assert tus.get(url).content == b"helloworld"
