"""Health endpoints for load balancers and orchestrators.

``/healthz`` answers 200 while the process serves requests at all (a liveness
probe: failing it means "restart me"). ``/readyz`` answers 200 only when an
upload could be taken now: the registry answers (Redis, when configured) and
the store accepts a write; otherwise 503 with the reason, so a balancer sends
clients to another replica instead of failing their uploads.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app

health_blueprint = Blueprint("resumable_health", __name__)


def _json(status: int, body: dict[str, object]) -> Response:
    response = Response(json.dumps(body) + "\n", status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@health_blueprint.route("/healthz", methods=["GET", "HEAD"])
def healthz() -> Response:
    return _json(200, {"status": "ok"})


@health_blueprint.route("/readyz", methods=["GET", "HEAD"])
def readyz() -> Response:
    services = current_app.extensions["resumable"]
    checks = {
        "registry": services.registry.problem(),
        "store": services.store.problem(),
    }
    problems = {name: problem for name, problem in checks.items() if problem is not None}
    if problems:
        return _json(503, {"status": "unavailable", "problems": problems})
    return _json(200, {"status": "ok"})
