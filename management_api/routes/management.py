"""Management routes of the limiter: effective limits with live counters, and a reload."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

bp = Blueprint("management", __name__)


@bp.get("/api/limits")
def limits() -> ResponseReturnValue:
    services = current_app.extensions["llm_service"]
    snapshot = services.limiter.snapshot_with_scheduler()
    snapshot["file"] = str(services.limits_reloader.path)
    return jsonify(snapshot)


@bp.post("/api/limits/reload")
def reload_limits() -> ResponseReturnValue:
    services = current_app.extensions["llm_service"]
    applied = services.limits_reloader.reload_now()
    snapshot = services.limiter.snapshot_with_scheduler()
    status = "reloaded" if applied else "kept"
    message = (
        "limits reloaded"
        if applied
        else "the limits file could not be used; the last good config stays (see the log)"
    )
    return jsonify(status=status, message=message, limits=snapshot), 200 if applied else 422
