"""Self-healing routes: cache clear, GPU recover, session reset.

Callers (the dashboard, the self-healing agent) send these with no body and short timeouts and
read ``status`` plus a few figures; every answer keeps those fields (arasul-callers.md §4.2).
Each action that reaches its route is written to the healer's log (who, when, outcome), which
the status page shows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from management_api import errors, names
from management_api.bodies import json_object
from management_api.health.healing import (
    ModelNotInstalled,
    ResetInProgress,
    SupervisorUnavailable,
    UnloadResult,
)
from management_api.ollama import (
    OllamaError,
    OllamaStatusError,
    OllamaTimeout,
    OllamaUnreachable,
)

bp = Blueprint("healing", __name__)

CACHE_CLEAR_DEADLINE_SECONDS = 8.0
GPU_RECOVER_DEADLINE_SECONDS = 9.0


def _recorded(
    action: str,
) -> Callable[[Callable[[], ResponseReturnValue]], Callable[[], ResponseReturnValue]]:
    """Write the action's outcome to the healing log: the answer's message, or the error's."""

    def decorate(view: Callable[[], ResponseReturnValue]) -> Callable[[], ResponseReturnValue]:
        @functools.wraps(view)
        def run() -> ResponseReturnValue:
            healing_log = current_app.extensions["llm_service"].healer.log
            key = getattr(g, "key", None)
            who = key.name if key is not None else None
            started = time.monotonic()
            try:
                response = view()
            except errors.ApiError as exc:
                took = round((time.monotonic() - started) * 1000, 1)
                healing_log.record(action, who=who, ok=False, result=exc.message,
                                   duration_ms=took)  # fmt: skip
                raise
            except Exception:
                took = round((time.monotonic() - started) * 1000, 1)
                healing_log.record(action, who=who, ok=False, result="internal error",
                                   duration_ms=took)  # fmt: skip
                raise
            took = round((time.monotonic() - started) * 1000, 1)
            body = response.get_json(silent=True) if hasattr(response, "get_json") else None
            body = body if isinstance(body, dict) else {}
            ok = not body.get("failed_models")
            name = f"{action}_hard" if body.get("hard") is True else action
            healing_log.record(name, who=who, ok=ok, result=_summary(body), duration_ms=took)
            return response

        return run

    return decorate


def _summary(body: dict) -> str:
    """One line of words for the log, from the answer callers already get."""
    message = body.get("message")
    if isinstance(message, str) and message:
        return message
    unloaded = body.get("unloaded_models") or []
    failed = body.get("failed_models") or []
    text = f"{body.get('status', 'done')}: {len(unloaded)} model(s) unloaded"
    if failed:
        text += f", {len(failed)} stayed loaded"
    if body.get("freed_mb"):
        text += f", {body['freed_mb']} MB freed"
    return text


def _optional_json() -> dict:
    """Callers post with no body (or `Content-Type: application/json` and no body)."""
    return json_object(request.get_data(cache=True), required=False, status="error")


def _unload_failed(result: UnloadResult) -> errors.ApiError:
    if result.error == "Ollama is not reachable":
        return errors.ServiceUnavailable(
            "Ollama is not reachable", status="error", headers={"Retry-After": "5"}
        )
    return errors.UpstreamError(
        f"{len(result.failed)} model(s) could not be unloaded",
        status="error",
        unloaded_models=result.unloaded,
        failed_models=result.failed,
        duration_ms=result.duration_ms,
    )


@bp.post("/api/cache/clear")
@_recorded("cache_clear")
def cache_clear() -> ResponseReturnValue:
    _optional_json()
    healer = current_app.extensions["llm_service"].healer
    result = healer.unload_all(deadline=CACHE_CLEAR_DEADLINE_SECONDS)
    if result.error or result.failed:
        raise _unload_failed(result)
    count = len(result.unloaded)
    return jsonify(
        status="success",
        message=f"Cache cleared ({count} model{'' if count == 1 else 's'} unloaded)",
        unloaded_models=result.unloaded,
        failed_models=[],
        cancelled_requests=result.cancelled_requests,
        duration_ms=result.duration_ms,
    )


@bp.post("/api/gpu/recover")
@_recorded("gpu_recover")
def gpu_recover() -> ResponseReturnValue:
    _optional_json()
    healer = current_app.extensions["llm_service"].healer
    outcome = healer.gpu_recover(deadline=GPU_RECOVER_DEADLINE_SECONDS)
    result: UnloadResult = outcome["result"]
    if result.error == "Ollama is not reachable":
        raise _unload_failed(result)
    return jsonify(
        status="recovered" if not result.failed else "partial",
        freed_mb=outcome["freed_mb"],
        free_mb=outcome["free_mb"],
        unloaded_models=result.unloaded,
        failed_models=result.failed,
        can_retry=outcome["can_retry"],
        duration_ms=result.duration_ms,
    )


@bp.post("/api/session/reset")
@_recorded("session_reset")
def session_reset() -> ResponseReturnValue:
    payload = _optional_json()
    model = payload.get("model")
    hard = payload.get("hard", False)
    if model is not None and (not isinstance(model, str) or not names.is_valid(model)):
        raise errors.BadRequest("model must be a valid model name", status="error", field="model")
    if not isinstance(hard, bool):
        raise errors.BadRequest("hard must be true or false", status="error", field="hard")
    healer = current_app.extensions["llm_service"].healer
    try:
        outcome = healer.session_reset(model=model, hard=hard)
    except ResetInProgress:
        raise errors.Conflict("a session reset is already running", status="error") from None
    except SupervisorUnavailable:
        raise errors.ApiError(
            "a hard reset needs supervisord's control socket (LLM_SUPERVISOR_SOCKET), "
            "which is not available here",
            http_status=501,
            type="not_implemented",
            status="error",
        ) from None
    except ModelNotInstalled as exc:
        raise errors.NotFound(
            f"model '{exc.model}' is not downloaded; pull it first (POST /api/models/pull)",
            type="model_not_found",
            status="error",
            model=exc.model,
        ) from None
    except (OllamaUnreachable, OllamaTimeout):
        raise errors.ServiceUnavailable(
            "Ollama is not reachable", status="error", headers={"Retry-After": "5"}
        ) from None
    except OllamaStatusError as exc:
        raise errors.UpstreamError(
            f"Ollama could not load the model: {exc.message}", status="error"
        ) from None
    except OllamaError as exc:
        # Ollama answered, but the reset did not take (e.g. the model never appeared loaded).
        message = str(exc) if str(exc) else "the session reset did not complete"
        raise errors.UpstreamError(message, status="error") from None
    result: UnloadResult = outcome["result"]
    loaded = outcome["model"]
    message = f"Session reset, reloaded {loaded}" if loaded else "Session reset (no default model)"
    return jsonify(
        status="success",
        message=message,
        model=loaded,
        hard=hard,
        unloaded_models=result.unloaded,
        failed_models=result.failed,
        load_duration_ms=outcome["load_duration_ms"],
    )
