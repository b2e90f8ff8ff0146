"""The response cache's own routes: ``GET /api/cache`` (what it holds, hit ratios per route and
model) and ``DELETE /api/cache`` (empty it; an admin key when keys are on). Not to be confused
with ``POST /api/cache/clear``, the self-healing action that unloads models (healing.py)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

bp = Blueprint("cache", __name__)


@bp.get("/api/cache")
def cache_status() -> ResponseReturnValue:
    services = current_app.extensions["llm_service"]
    if services.cache is None:
        settings = services.settings
        return jsonify(
            enabled=False,
            max_bytes=0,
            ttl_seconds=settings.cache_ttl_seconds,
            entries=0,
            bytes=0,
            message="the response cache is off (set LLM_CACHE_MAX_MB to a size in MB)",
        )
    return jsonify(services.cache.snapshot())


@bp.delete("/api/cache")
def cache_empty() -> ResponseReturnValue:
    cache = current_app.extensions["llm_service"].cache
    removed = cache.clear() if cache is not None else 0
    return jsonify(status="emptied", removed_entries=removed, enabled=cache is not None)
