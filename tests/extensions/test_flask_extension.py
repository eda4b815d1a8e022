"""The endpoint mounted in a host app (tests/apps/host.py): scoped to its URLs, right URLs.

The protocol, extension and tuspy suites also run through the host app under
gunicorn (their ``hosted-redis`` backend); these tests check what mounting
adds: the host's own answers do not change, the endpoint's URLs are right
under a prefix, a ``SCRIPT_NAME`` and a trusted proxy, the host's session
works in the access hook, and settings come from the app's config.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from flask import Flask

from resumable import Resumable, Settings

from ..apps.host import create
from ..support import TUS, HostedApp, wait_until

#: Requests to the host app's own URLs, and answers that must not change.
HOST_REQUESTS = [
    ("GET", "/", {}),
    ("GET", "/no-such-page", {}),
    ("PUT", "/", {}),
    ("GET", "/me", {}),
    ("POST", "/login", {"data": {"user": "alice"}}),
    ("OPTIONS", "/", {"headers": {"Origin": "https://elsewhere.example",
                                   "Access-Control-Request-Method": "PATCH"}}),
    ("HEAD", "/api", {}),
    ("GET", "/api/uploadsX", {}),
]


@pytest.fixture
def host_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RESUMABLE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _answer(response) -> tuple:  # noqa: ANN001 - a Flask test response
    headers = sorted((k, v) for k, v in response.headers.items() if k != "Set-Cookie")
    return response.status_code, response.get_data(), headers


@pytest.mark.parametrize(("method", "path", "options"), HOST_REQUESTS)
def test_host_routes_answer_as_without_the_endpoint(
    host_env: Path, method: str, path: str, options: dict
) -> None:
    mounted = create(uploads=True).test_client().open(path, method=method, **options)
    alone = create(uploads=False).test_client().open(path, method=method, **options)
    assert _answer(mounted) == _answer(alone)
    assert "Tus-Resumable" not in mounted.headers
    assert mounted.headers["X-Host-App"] == "1"


def test_endpoint_errors_are_its_own_under_the_prefix(host_env: Path) -> None:
    client = create().test_client()
    missing = client.head("/api/uploads/0123456789abcdef0123456789abcdef", headers=TUS)
    assert missing.status_code == 404 and missing.headers["Tus-Resumable"] == "1.0.0"
    put = client.put("/api/uploads/0123456789abcdef0123456789abcdef", headers=TUS)
    assert put.status_code == 405
    assert put.headers["Allow"] == "GET, HEAD, PATCH, DELETE, OPTIONS"
    assert put.mimetype == "text/plain"
    deeper = client.get("/api/uploads/a/b")
    assert (deeper.status_code, deeper.get_data()) == (404, b"no such upload\n")
    old = client.post("/api/uploads/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "1"})
    assert old.status_code == 412 and old.headers["Tus-Version"] == "1.0.0"
    # The host's own pages keep the host's error form.
    assert client.get("/nothing").get_json() == {"error": "the host app has no such page"}


def _create(client, base_url: str = "http://localhost") -> str:  # noqa: ANN001
    response = client.post(
        "/api/uploads/", headers={**TUS, "Upload-Length": "3"}, base_url=base_url
    )
    assert response.status_code == 201, response.get_data()
    return response.headers["Location"]


def test_location_under_the_prefix_and_script_name(host_env: Path) -> None:
    client = create().test_client()
    assert _create(client).startswith("http://localhost/api/uploads/")
    under = _create(client, "http://localhost/shop")  # SCRIPT_NAME /shop
    assert under.startswith("http://localhost/shop/api/uploads/")


def test_location_behind_a_trusted_proxy_only(
    host_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example",
                 "X-Forwarded-Prefix": "/edge"}
    untrusted = create().test_client().post(
        "/api/uploads/", headers={**TUS, "Upload-Length": "3", **forwarded})
    assert untrusted.headers["Location"].startswith("http://localhost/api/uploads/")
    monkeypatch.setenv("RESUMABLE_TRUST_PROXY", "true")
    trusted = create().test_client().post(
        "/api/uploads/", headers={**TUS, "Upload-Length": "3", **forwarded})
    assert trusted.headers["Location"].startswith("https://uploads.example/edge/api/uploads/")


def test_settings_from_the_app_config(tmp_path: Path) -> None:
    app = Flask("configured")
    app.config.update(
        RESUMABLE_DATA_DIR=str(tmp_path / "data"),
        RESUMABLE_MAX_SIZE=4096,  # typed, as an app sets it
        RESUMABLE_EXPIRY="0",  # text, as from the environment
        RESUMABLE_CORS_ORIGINS="https://app.example",
        RESUMABLE_CORS_ALLOW_HEADERS="X-Api-Key",
        RESUMABLE_CORS_EXPOSE_HEADERS="X-Shard",
        RESUMABLE_CORS_MAX_AGE=600,
    )
    Resumable(app, url_prefix="/up")
    client = app.test_client()
    options = client.options("/up/")
    assert options.headers["Tus-Max-Size"] == "4096"
    assert "expiration" not in options.headers["Tus-Extension"]
    preflight = client.options("/up/", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"})
    assert "X-Api-Key" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Access-Control-Max-Age"] == "600"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    created = client.post("/up/", headers={**TUS, "Upload-Length": "1",
                                           "Origin": "https://app.example"})
    exposed = created.headers["Access-Control-Expose-Headers"]
    assert "X-Shard" in exposed and "X-Request-ID" in exposed
    other = client.post("/up/", headers={**TUS, "Upload-Length": "1",
                                         "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_a_bad_config_value_is_refused_with_its_name(tmp_path: Path) -> None:
    app = Flask("misconfigured")
    app.config.update(RESUMABLE_DATA_DIR=str(tmp_path), RESUMABLE_LOCK_TTL="soon")
    with pytest.raises(ValueError, match="RESUMABLE_LOCK_TTL='soon' is not a valid lock_ttl"):
        Resumable(app)


def test_init_app_with_a_factory_and_settings(tmp_path: Path) -> None:
    uploads = Resumable(settings=Settings(data_dir=str(tmp_path), base_path="/ignored/"))
    app = Flask("factory")
    uploads.init_app(app, url_prefix="/files")
    assert app.test_client().options("/files/").status_code == 204
    with pytest.raises(RuntimeError, match="already mounted"):
        uploads.init_app(app)


# -- under gunicorn ------------------------------------------------------------


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> HostedApp:
    server = HostedApp(tmp_path_factory.mktemp("hosted"), max_size=1000).start()
    yield server
    server.stop()


def test_the_access_hook_sees_the_host_session(hosted: HostedApp) -> None:
    create_upload = {**TUS, "Upload-Length": "3"}
    anonymous = requests.post(hosted.endpoint, headers=create_upload, timeout=10)
    assert anonymous.status_code == 201
    alice, mallory = requests.Session(), requests.Session()
    assert alice.post(hosted.url + "/login", data={"user": "alice"}, timeout=10).ok
    assert mallory.post(hosted.url + "/login", data={"user": "mallory"}, timeout=10).ok
    assert alice.post(hosted.endpoint, headers=create_upload, timeout=10).status_code == 201
    refused = mallory.post(hosted.endpoint, headers=create_upload, timeout=10)
    assert refused.status_code == 403 and refused.headers["Tus-Resumable"] == "1.0.0"
    assert mallory.get(hosted.url + "/me", timeout=10).json() == {"user": "mallory"}


def test_host_pages_under_gunicorn_carry_no_tus_headers(hosted: HostedApp) -> None:
    page = requests.get(hosted.url + "/", timeout=10)
    assert (page.status_code, page.text) == (200, "host home\n")
    assert "Tus-Resumable" not in page.headers and page.headers["X-Host-App"] == "1"
    missing = requests.get(hosted.url + "/missing", timeout=10)
    assert missing.json() == {"error": "the host app has no such page"}
    assert requests.get(hosted.url + "/healthz", timeout=10).json() == {"status": "ok"}


class SyncHostedApp(HostedApp):
    """The host app under gunicorn's default sync worker, which cuts long uploads.

    Without ``--threads``: gunicorn runs gthread when a sync worker is given threads.
    """

    def command(self) -> list[str]:
        command = super().command()
        for option in ("--worker-class", "--threads"):
            at = command.index(option)
            del command[at : at + 2]
        return command


def test_a_sync_worker_is_warned_about_once(tmp_path: Path) -> None:
    server = SyncHostedApp(tmp_path / "data", workers=1).start()
    try:
        for _ in range(3):
            requests.options(server.endpoint, timeout=10)
        assert wait_until(lambda: "sync worker" in server.log(), 5), server.log()
        assert server.log().count("sync worker") == 1
    finally:
        server.stop()


def test_under_another_wsgi_server(host_env: Path) -> None:
    """Werkzeug's threaded server: no gunicorn socket, bodies read through wsgi.input."""
    import threading

    from werkzeug.serving import make_server

    from ..support import OFFSET_STREAM, pattern_bytes

    server = make_server("127.0.0.1", 0, create(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        data = pattern_bytes(3 * 1024 * 1024 + 17)
        created = requests.post(base + "/api/uploads/", timeout=10,
                                headers={**TUS, "Upload-Length": str(len(data))})
        assert created.status_code == 201
        url = created.headers["Location"]
        half = len(data) // 2
        for offset, piece in ((0, data[:half]), (half, data[half:])):
            patched = requests.patch(url, data=piece, timeout=30, headers={
                **TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM})
            assert patched.status_code == 204, patched.text
        assert requests.get(url, timeout=30).content == data
        assert requests.get(base + "/", timeout=10).text == "host home\n"
    finally:
        server.shutdown()
