"""tus-js-client (the reference tus client) in Node against the real server, on both backends.

tests/js/tusjs_upload.mjs runs one scenario per Node process and prints a JSON line with the
upload URL, the client's events and every request it made with the server's answers. Each upload
is then checked byte-exact here with a GET and sha256, and through HEAD.

The set-up runs ``npm ci`` in tests/js when node_modules is missing or stale; a missing
node/npm or a failing ``npm ci`` fails the tests (they never skip).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from ..support import (
    OFFSET_STREAM,
    TESTS,
    MiB,
    Server,
    TusClient,
    assert_finished,
    decode_metadata,
    pattern_file,
)
from ..support.node import node_and_npm, npm_ci, run_json_script

#: Both registries on local disk, uploads kept in S3 (moto) on one instance, and two
#: replicas behind nginx with their own data dirs sharing Redis and the bucket.
BACKENDS = ("embedded", "redis", "redis-s3", "proxied-redis-s3")

JS_DIR = TESTS / "js"
SCRIPT = JS_DIR / "tusjs_upload.mjs"
CHUNK = 4 * MiB
SIZE = 12 * MiB + 4321  # three full chunks and a short one
FILENAME = "résumé 東京.bin"


# --------------------------------------------------------------------------
# Node and tus-js-client
# --------------------------------------------------------------------------


def locked_version() -> str:
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    return lock["packages"]["node_modules/tus-js-client"]["version"]


def installed_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "tus-js-client" / "package.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text())["version"]


@dataclass
class Node:
    executable: str
    node_version: str
    client_version: str


@pytest.fixture(scope="session")
def node() -> Node:
    """node, with tests/js/node_modules installed from the lock file (npm ci)."""
    executable, npm = node_and_npm("the tus-js-client tests")
    wanted = locked_version()
    if installed_version() != wanted:
        npm_ci(npm, JS_DIR)
        if installed_version() != wanted:
            pytest.fail(f"npm ci did not install tus-js-client {wanted}", pytrace=False)
    node_version = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Node(executable, node_version, wanted)


@pytest.fixture(autouse=True)
def _report_client_version(node: Node, request: pytest.FixtureRequest) -> None:
    """Name the client under test in the run's summary (tests/conftest.py prints it)."""
    request.node.user_properties.append(
        ("client under test", f"tus-js-client {node.client_version} on node {node.node_version}")
    )


def run_tusjs(node: Node, **spec: object) -> dict:
    """One scenario in Node; its JSON result, or a failure that shows the exchange."""
    spec.setdefault("timeoutMs", 40_000)
    result = run_json_script(
        [node.executable, str(SCRIPT), json.dumps(spec)], JS_DIR, 60,
        lambda result: "requests:\n" + "\n".join(
            json.dumps(entry) for entry in result.get("requests", [])),
    )
    assert result["version"] == node.client_version
    for entry in result["requests"]:
        if "status" in entry:  # only requests the client aborted itself have none
            assert 200 <= entry["status"] < 300, entry
    return result


def upload_file(
    node: Node, tmp_path: Path, endpoint: str, seed: int, size: int = SIZE, **spec: object
) -> tuple[dict, bytes]:
    """tus-js-client uploads a file of ``size`` pattern bytes in CHUNK requests: its
    result, and the bytes it sent."""
    path, data = pattern_file(tmp_path, size, seed)
    return run_tusjs(node, endpoint=endpoint, file=str(path), chunkSize=CHUNK, **spec), data


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def requests_of(result: dict, method: str | None = None, phase: int | None = None) -> list[dict]:
    return [
        entry
        for entry in result["requests"]
        if (method is None or entry["method"] == method)
        and (phase is None or entry["phase"] == phase)
    ]


def final_parts(upload_concat: str) -> list[str]:
    """The URLs listed by ``Upload-Concat: final;<url> <url> ...``."""
    assert upload_concat.startswith("final;"), upload_concat
    return upload_concat.removeprefix("final;").split()


def events_of(result: dict, kind: str) -> list[dict]:
    return [event for event in result["events"] if event["type"] == kind]


def assert_sequential_patches(
    patches: list[dict], start: int, size: int, content_type: str | None = OFFSET_STREAM,
    statuses: tuple[int, ...] = (204,),
) -> None:
    """Each PATCH starts where the server said the previous one ended, up to the end."""
    offset = start
    for patch in patches:
        assert int(patch["headers"]["Upload-Offset"]) == offset, patch
        assert patch["headers"].get("Content-Type") == content_type
        assert patch["status"] in statuses, patch
        answered = int(patch["response"]["Upload-Offset"])
        assert answered == min(offset + CHUNK, size), patch
        offset = answered
    assert offset == size


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["buffer", "stream"])
def test_tusjs_plain_upload(
    node: Node, server: Server, tus: TusClient, tmp_path: Path, source: str
) -> None:
    """From a Buffer and from an fs.ReadStream, in 4 MiB PATCHes, with metadata."""
    metadata = {"filename": FILENAME, "filetype": "application/octet-stream", "empty": ""}
    result, data = upload_file(node, tmp_path, server.endpoint, 31, source=source,
                               metadata=metadata)
    url = result["url"]
    assert url.startswith(server.endpoint)
    (post,) = requests_of(result, "POST")
    assert post["headers"]["Upload-Length"] == str(SIZE)
    assert post["status"] == 201 and post["response"]["Location"] == url
    patches = requests_of(result, "PATCH")
    assert len(patches) == 4
    assert_sequential_patches(patches, 0, SIZE)
    head = assert_finished(tus, url, data)
    assert decode_metadata(head.get("Upload-Metadata")) == metadata


def test_tusjs_parallel_uploads(node: Node, server: Server, tus: TusClient, tmp_path: Path) -> None:
    """parallelUploads: 3 → three partial uploads and a final concatenation."""
    metadata = {"filename": FILENAME}
    result, data = upload_file(
        node, tmp_path, server.endpoint, 32, metadata=metadata,
        options={"parallelUploads": 3, "metadataForPartialUploads": {"role": "part"}},
    )
    final_url = result["url"]
    posts = requests_of(result, "POST")
    partial_posts = [p for p in posts if p["headers"].get("Upload-Concat") == "partial"]
    final_posts = [p for p in posts if p["headers"].get("Upload-Concat", "").startswith("final;")]
    assert len(partial_posts) == 3 and len(final_posts) == 1, posts
    partial_urls = [p["response"]["Location"] for p in partial_posts]
    sent_parts = final_parts(final_posts[0]["headers"]["Upload-Concat"])
    assert sorted(sent_parts) == sorted(partial_urls)
    assert final_posts[0]["response"]["Location"] == final_url
    assert final_url not in partial_urls

    lengths = 0
    for partial in partial_urls:
        head = tus.head(partial)
        assert head.status_code == 200, (partial, head.status_code)
        assert head.headers["Upload-Concat"] == "partial"
        assert head.headers["Upload-Offset"] == head.headers["Upload-Length"]
        assert decode_metadata(head.headers.get("Upload-Metadata")) == {"role": "part"}
        lengths += int(head.headers["Upload-Length"])
    assert lengths == SIZE

    head = assert_finished(tus, final_url, data)
    assert head["Upload-Concat"].startswith("final;")
    listed = [urljoin(server.endpoint, part) for part in final_parts(head["Upload-Concat"])]
    assert listed == sent_parts  # the same parts in the same order
    assert decode_metadata(head.get("Upload-Metadata")) == metadata


@pytest.mark.parametrize("where", ["between-patches", "inside-patch"])
def test_tusjs_abort_and_resume_from_previous_upload(
    node: Node, server: Server, tus: TusClient, tmp_path: Path, where: str
) -> None:
    """abort(), then a new Upload finds the stored URL and finishes the same upload.

    "inside-patch" trickles the second PATCH's body and aborts it half-way, as a user
    pausing on a slow network does: the server keeps what arrived, the new Upload's HEAD
    must report it at once, and the next PATCH must not be refused as locked.
    """
    storage = tmp_path / "tus-url-storage.json"
    spec: dict[str, object] = {"metadata": {"filename": FILENAME}, "urlStorage": str(storage)}
    if where == "between-patches":
        spec.update(source="buffer", abortAt=CHUNK)
    else:
        spec.update(
            source="stream",
            abortAtSent=CHUNK + CHUNK // 2,
            throttle={"piece": 256 * 1024, "delayMs": 10},
        )
    result, data = upload_file(node, tmp_path, server.endpoint, 33, **spec)

    (abort,) = events_of(result, "abort")
    (aborted,) = events_of(result, "aborted")
    first_url = aborted["url"]
    (previous,) = events_of(result, "previous")
    assert previous["count"] == 1 and previous["urls"] == [first_url]
    assert result["url"] == first_url  # resumed, not re-created
    assert requests_of(result, "POST", phase=2) == []

    phase1 = requests_of(result, phase=1)
    if where == "inside-patch":
        cut = phase1[-1]
        assert cut["method"] == "PATCH" and "status" not in cut, cut  # aborted mid-body

    head, *patches = requests_of(result, phase=2)
    assert head["method"] == "HEAD" and head["url"] == first_url and head["status"] == 200
    resumed_at = int(head["response"]["Upload-Offset"])
    if where == "between-patches":
        assert resumed_at == abort["accepted"] == CHUNK
    else:
        assert CHUNK <= resumed_at <= abort["sent"] < SIZE
    assert all(p["method"] == "PATCH" for p in patches)
    assert_sequential_patches(patches, resumed_at, SIZE)
    assert_finished(tus, first_url, data)
    # removeFingerprintOnSuccess defaults to false: the finished upload stays stored.
    assert [entry["uploadUrl"] for entry in result["storage"]] == [first_url]


@pytest.mark.parametrize("size", [SIZE, 3 * MiB + 5], ids=["then-patches", "all-in-post"])
def test_tusjs_upload_data_during_creation(
    node: Node, server: Server, tus: TusClient, tmp_path: Path, size: int
) -> None:
    """uploadDataDuringCreation: the first chunk rides on the POST (creation-with-upload)."""
    result, data = upload_file(node, tmp_path, server.endpoint, 34, size,
                               metadata={"filename": FILENAME},
                               options={"uploadDataDuringCreation": True})
    url = result["url"]
    (post,) = requests_of(result, "POST")
    assert post["headers"]["Content-Type"] == OFFSET_STREAM
    assert post["headers"]["Upload-Length"] == str(size)
    assert post["status"] == 201
    assert post["response"]["Location"] == url
    first = min(CHUNK, size)
    assert post["response"]["Upload-Offset"] == str(first)
    patches = requests_of(result, "PATCH")
    if size <= CHUNK:
        assert patches == []
    else:
        assert_sequential_patches(patches, first, size)
    assert_finished(tus, url, data)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body_length: int
    status: int = 0
    response: dict[str, str] = field(default_factory=dict)


class RecordingProxy:
    """A tiny HTTP/1.1 proxy in front of the server that records what reaches it."""

    HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}

    def __init__(self, target: Server):
        self.target = target
        self.records: list[Recorded] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def forward(self) -> None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    raise RuntimeError("the recording proxy does not relay chunked bodies")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                record = Recorded(self.command, self.path, dict(self.headers), length)
                proxy.records.append(record)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target.port, timeout=60)
                try:
                    upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in proxy.HOP:
                            upstream.putheader(name, value)
                    upstream.endheaders(body)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                record.status = response.status
                record.response = dict(response.headers)
                self.send_response_only(response.status, response.reason)
                for name, value in response.headers.items():
                    if name.lower() not in proxy.HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", response.headers.get("Content-Length", "0"))
                    self.end_headers()
                else:
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_POST = do_PATCH = do_DELETE = do_OPTIONS = forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{self.target.endpoint.removeprefix(self.target.url)}"

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(server: Server) -> Iterator[RecordingProxy]:
    with RecordingProxy(server) as running:
        yield running


def test_tusjs_override_patch_method(
    node: Node, server: Server, tus: TusClient, proxy: RecordingProxy, tmp_path: Path
) -> None:
    """overridePatchMethod: the server receives POST + X-HTTP-Method-Override: PATCH."""
    result, data = upload_file(node, tmp_path, proxy.endpoint, 35,
                               options={"overridePatchMethod": True})
    url = result["url"]
    assert url.startswith(proxy.endpoint)  # Location follows the Host the client used
    upload_path = urlsplit(url).path
    assert not any(r.method == "PATCH" for r in proxy.records), proxy.records
    creation, *appends = [r for r in proxy.records if r.method == "POST"]
    assert creation.headers.get("Upload-Length") == str(SIZE) and creation.status == 201
    assert len(appends) == 4
    offset = 0
    for append in appends:
        assert append.path == upload_path
        assert append.headers.get("X-HTTP-Method-Override") == "PATCH"
        assert append.headers.get("Upload-Offset") == str(offset)
        assert append.headers.get("Content-Type") == OFFSET_STREAM
        assert append.status == 204, append
        assert int(append.response["Upload-Offset"]) == offset + append.body_length
        offset += append.body_length
    assert offset == SIZE
    assert_finished(tus, server.url + upload_path, data)


def test_tusjs_remove_fingerprint_on_success(
    node: Node, server: Server, tus: TusClient, tmp_path: Path
) -> None:
    """removeFingerprintOnSuccess: stored while uploading, gone from the storage after."""
    storage = tmp_path / "tus-url-storage.json"
    result, data = upload_file(node, tmp_path, server.endpoint, 36, urlStorage=str(storage),
                               options={"removeFingerprintOnSuccess": True})
    url = result["url"]
    (stored,) = events_of(result, "stored")  # looked up after the first PATCH
    assert [entry["uploadUrl"] for entry in stored["entries"]] == [url]
    assert result["storage"] == []
    assert json.loads(storage.read_text()) == {}
    assert_finished(tus, url, data)


# --------------------------------------------------------------------------
# The IETF draft: tus-js-client's protocol option (draft.py)
# --------------------------------------------------------------------------

#: tus-js-client's IETF modes and the interop version each sends.
IETF_MODES = {"ietf-draft-03": "5", "ietf-draft-05": "6"}
#: The Content-Type of its appends: none in -03 (interop 5 asks for none).
IETF_APPEND_TYPES = {"ietf-draft-03": None, "ietf-draft-05": "application/partial-upload"}


@pytest.mark.parametrize("mode", sorted(IETF_MODES))
def test_tusjs_ietf_draft_upload(
    node: Node, server: Server, tus: TusClient, tmp_path: Path, mode: str
) -> None:
    """protocol: 'ietf-draft-03' / '-05', in 4 MiB appends, byte-exact, no tus header."""
    result, data = upload_file(node, tmp_path, server.endpoint, 41, options={"protocol": mode})
    url = result["url"]
    assert url.startswith(server.endpoint)
    sent = requests_of(result)
    assert all(r["headers"].get("Upload-Draft-Interop-Version") == IETF_MODES[mode]
               for r in sent), sent
    assert all("Tus-Resumable" not in r["headers"] for r in sent)
    assert all("Tus-Resumable" not in r.get("response", {}) for r in sent)
    patches = requests_of(result, "PATCH")
    assert patches and patches[-1]["headers"]["Upload-Complete"] == "?1"
    assert_finished(tus, url, data)


@pytest.mark.parametrize("mode", sorted(IETF_MODES))
def test_tusjs_ietf_draft_abort_and_resume(
    node: Node, server: Server, tus: TusClient, tmp_path: Path, mode: str
) -> None:
    """Aborted inside an append on a slow link; a new Upload resumes the same URL."""
    result, data = upload_file(
        node, tmp_path, server.endpoint, 42, source="stream",
        urlStorage=str(tmp_path / "storage.json"), abortAtSent=CHUNK + CHUNK // 2,
        throttle={"piece": 256 * 1024, "delayMs": 10}, options={"protocol": mode},
    )
    (aborted,) = events_of(result, "aborted")
    assert result["url"] == aborted["url"]
    assert requests_of(result, "POST", phase=2) == []
    head, *patches = requests_of(result, phase=2)
    assert head["method"] == "HEAD" and head["status"] in (200, 204)
    resumed_at = int(head["response"]["Upload-Offset"])
    assert CHUNK <= resumed_at < SIZE
    # Interop 5 and 6 answer an incomplete append 201, the completing one 201 or 204.
    assert_sequential_patches(patches, resumed_at, SIZE, IETF_APPEND_TYPES[mode], (201, 204))
    assert_finished(tus, result["url"], data)
