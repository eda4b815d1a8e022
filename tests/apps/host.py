"""A host app with its own pages, login, error pages and hooks, mounting the tus endpoint.

Its uploads live under ``/api/uploads``; an access hook refuses users the app
has banned, reading the app's own session. ``create(uploads=False)`` builds
the same app without the endpoint, so tests can show the app's own answers do
not change when it is mounted.
"""

from __future__ import annotations

from flask import Flask, jsonify, request, session

from resumable import Resumable

BANNED = {"mallory"}


def may_upload(action: str, upload_id: str | None, req: object) -> bool:
    """The app's rule: anyone but a banned user may upload (the session is the app's)."""
    return session.get("user") not in BANNED


def create(uploads: bool = True) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "host-app-test-secret"
    # The endpoint's settings: RESUMABLE_* keys here, else the environment's variables.
    app.config["RESUMABLE_CORS_ALLOW_HEADERS"] = "X-Api-Key"

    @app.route("/")
    def home() -> str:
        return "host home\n"

    @app.route("/login", methods=["POST"])
    def login():  # noqa: ANN202
        session["user"] = request.form["user"]
        return jsonify(user=session["user"])

    @app.route("/me")
    def me():  # noqa: ANN202
        if "user" not in session:
            return jsonify(error="log in first"), 401
        return jsonify(user=session["user"])

    @app.errorhandler(404)
    def not_found(_error: Exception):  # noqa: ANN202
        return jsonify(error="the host app has no such page"), 404

    @app.errorhandler(405)
    def not_allowed(_error: Exception):  # noqa: ANN202
        return jsonify(error="the host app does not take that method here"), 405

    @app.after_request
    def stamp(response):  # noqa: ANN001, ANN202
        response.headers["X-Host-App"] = "1"
        return response

    if uploads:
        Resumable(app, url_prefix="/api/uploads", authorizer=may_upload)
    return app
