"""Health: the 4-point ``/health`` (Docker and the self-healing engine read it), liveness and
readiness probes."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from management_api import __version__
from management_api.errors import ServiceUnavailable
from management_api.ollama import OllamaError

bp = Blueprint("health", __name__)

READY_PROBE_TIMEOUT_SECONDS = 2.0


@bp.get("/health")
def health() -> ResponseReturnValue:
    status, body = current_app.extensions["llm_service"].health.evaluate()
    response = jsonify(body)
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


@bp.get("/health/live")
def live() -> ResponseReturnValue:
    services = current_app.extensions["llm_service"]
    return jsonify(
        status="alive", version=__version__, uptime_seconds=round(services.uptime_seconds(), 3)
    )


@bp.get("/health/ready")
def ready() -> ResponseReturnValue:
    services = current_app.extensions["llm_service"]
    started = time.perf_counter()
    try:
        version = services.ollama.version(read_timeout=READY_PROBE_TIMEOUT_SECONDS, retry=False)
    except OllamaError:
        raise ServiceUnavailable(
            "Ollama is not reachable", status="not_ready", headers={"Retry-After": "5"}
        ) from None
    latency_ms = (time.perf_counter() - started) * 1000
    return jsonify(
        status="ready",
        ollama={"reachable": True, "version": version, "latency_ms": round(latency_ms, 2)},
    )
