"""Telemetry and service information: ``/api/stats``, ``/api/stats/history``, ``/api/info``,
``/metrics``. All read published state; none samples inline."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST

from management_api import __version__, errors
from management_api.telemetry import render_stats
from management_api.telemetry.history import DEFAULT_MAX_POINTS, downsample

bp = Blueprint("stats", __name__)

# The whole ring buffer at the shortest sensible interval (1 h at 0.5 s).
MAX_POINTS_LIMIT = 7200


@bp.get("/api/stats")
def stats() -> ResponseReturnValue:
    sampler = current_app.extensions["llm_service"].sampler
    return jsonify(
        render_stats(sampler.latest(), now=time.time(), interval_seconds=sampler.interval)
    )


@bp.get("/api/stats/history")
def history() -> ResponseReturnValue:
    sampler = current_app.extensions["llm_service"].sampler
    raw = request.args.get("seconds")
    seconds = None
    if raw is not None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise errors.BadRequest("seconds must be a number greater than 0", field="seconds")
    raw_max = request.args.get("max_points")
    max_points = DEFAULT_MAX_POINTS
    if raw_max is not None:
        try:
            max_points = int(raw_max)
        except ValueError:
            max_points = 0
        if not 1 <= max_points <= MAX_POINTS_LIMIT:
            raise errors.BadRequest(
                f"max_points must be a whole number from 1 to {MAX_POINTS_LIMIT}",
                field="max_points",
            )
    raw_points = sampler.history(seconds)
    points = downsample(raw_points, max_points)
    return jsonify(
        interval_seconds=sampler.interval,
        count=len(points),
        seconds=seconds,
        points=points,
        max_points=max_points,
        downsampled=len(points) < len(raw_points),
    )


@bp.get("/api/info")
def info() -> ResponseReturnValue:
    services = current_app.extensions["llm_service"]
    settings = services.settings
    limits = services.limiter.config
    return jsonify(
        service="llm-service",
        version=__version__,
        ollama_url=settings.ollama_url,
        default_model=settings.default_model,
        api_port=settings.management_port,
        proxy_port=settings.proxy_port if settings.proxy_enabled else None,
        proxy_enabled=settings.proxy_enabled,
        ollama_version=services.ollama_version(),
        platform=services.platform(),
        telemetry_source=services.sampler.gpu_source,
        stats_interval_seconds=settings.stats_interval,
        limits={
            "file": str(settings.limits_file),
            "defaults": limits.defaults.to_dict(),
            "global_max_concurrency": limits.global_max_concurrency,
            "model_rules": len(limits.models),
        },
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(services.started_at)),
        uptime_seconds=round(services.uptime_seconds(), 1),
    )


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    body = current_app.extensions["llm_service"].metrics.render()
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    content_type=CONTENT_TYPE_LATEST)  # fmt: skip
