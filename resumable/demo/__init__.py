"""The demo page of ``resumable serve --demo``: Uppy's Dashboard and a live status table.

``/`` is a small HTML page that loads only this package's own assets
(``/demo/static/demo.js`` and ``demo.css``, built from ``frontend/`` with
esbuild and committed, so no npm is needed at runtime). The page uploads to
the server's own tus endpoint (``settings.base_path``) and polls HEAD on each
recent upload every second. Off by default: the server answers 404 at ``/``
unless ``--demo`` is given.
"""

from __future__ import annotations

import hashlib
from functools import cache
from html import escape
from pathlib import Path

from flask import Blueprint, Response, current_app, request, send_from_directory, url_for
from werkzeug.exceptions import NotFound

from .. import __version__

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = ("demo.js", "demo.css")

#: The page runs only its own script; Uppy sets inline styles, thumbnails are blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

demo_blueprint = Blueprint("demo", __name__)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>resumable: upload demo</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{css}">
</head>
<body data-endpoint="{endpoint}">
<header class="site">
  <h1>resumable<small>tus 1.0 upload server</small></h1>
  <p class="server-info" id="server-info">endpoint {endpoint}</p>
  <ul class="extensions" id="extensions"></ul>
</header>
<main>
  <section class="panel">
    <h2>Upload</h2>
    <p class="hint">Files go to <code>{endpoint}</code> with Uppy's tus uploader.</p>
    <div id="dashboard"></div>
  </section>
  <section class="panel">
    <h2>Recent uploads <button type="button" class="quiet" id="forget">Forget list</button></h2>
    <p class="hint">Uploads started in this browser (kept in localStorage), each checked
      with <code>HEAD</code> every second: the server commits what it has received so far
      and answers with <code>Upload-Offset</code> and <code>Upload-Length</code>.</p>
    <table class="uploads" id="uploads">
      <colgroup><col class="name"><col class="url"><col class="num"><col class="num">
        <col class="progress"><col class="state"><col class="checked"></colgroup>
      <thead><tr><th>File</th><th>Upload</th><th class="num">Offset</th>
        <th class="num">Length</th><th>Progress</th><th>State</th><th>Checked</th></tr></thead>
      <tbody></tbody>
    </table>
    <p class="empty" id="empty">No uploads yet.</p>
  </section>
</main>
<footer class="site">resumable {version}</footer>
<script src="{js}" defer></script>
</body>
</html>
"""


@cache
def _asset_version(name: str) -> str:
    """A short content hash for cache busting (the files change only on upgrade)."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def _asset_url(name: str) -> str:
    return url_for("demo.static_file", filename=name, v=_asset_version(name))


@demo_blueprint.route("/", methods=["GET"])
def index() -> Response:
    settings = current_app.extensions["resumable"].settings
    endpoint = request.script_root + settings.base_path
    html = PAGE.format(
        css=escape(_asset_url("demo.css")),
        js=escape(_asset_url("demo.js")),
        endpoint=escape(endpoint),
        version=escape(__version__),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@demo_blueprint.route("/demo/static/<path:filename>", methods=["GET"])
def static_file(filename: str) -> Response:
    if filename not in ASSETS:
        raise NotFound()
    response = send_from_directory(STATIC_DIR, filename, max_age=3600)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
