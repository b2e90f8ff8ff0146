"""Model management: installed models, loaded models, pull jobs, delete.

Routes parse and validate, call the catalog or the pull manager, and render. Every validation
and disk-space error is answered before a stream starts, with a real status code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from management_api import errors, names
from management_api.bodies import json_object
from management_api.models.catalog import ModelNotFound
from management_api.models.disk import InsufficientDiskSpace
from management_api.models.pulls import PullJob, PullManagerClosed, PullQueueFull
from management_api.ollama import OllamaError, OllamaStatusError, OllamaTimeout
from management_api.proxy.transport import ClientWatch

bp = Blueprint("models", __name__)

RETRY_AFTER_SECONDS = "5"
PULL_QUEUE_RETRY_AFTER_SECONDS = "30"
ECHO_LIMIT = 100  # characters of a rejected name echoed back


def _services() -> Any:
    return current_app.extensions["llm_service"]


def _timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_object() -> dict[str, Any]:
    """The request's JSON object; an empty body counts as ``{}``."""
    return json_object(request.get_data(cache=True), required=False, field="body")


def _model_name(payload: dict[str, Any], *, from_query: bool = False) -> str:
    """``model`` (or its alias ``name``, or ``?model=``), validated against Ollama's grammar."""
    value = payload.get("model")
    if value is None or value == "":
        value = payload.get("name")
    if (value is None or value == "") and from_query:
        value = request.args.get("model") or request.args.get("name")
    if value is None or value == "":
        raise errors.BadRequest("model is required (field 'model' or 'name')", field="model")
    if not isinstance(value, str):
        raise errors.BadRequest("model must be a string", field="model")
    if len(value) > names.MAX_NAME_LENGTH:
        raise errors.BadRequest(
            f"model name is too long (at most {names.MAX_NAME_LENGTH} characters)",
            type="invalid_model_name",
            field="model",
        )
    if not names.is_valid(value):
        raise errors.BadRequest(
            f"invalid model name '{value[:ECHO_LIMIT]}'", type="invalid_model_name", field="model"
        )
    return value


def _unavailable(exc: OllamaError, detail: str = "") -> errors.ApiError:
    if isinstance(exc, OllamaStatusError):
        return errors.UpstreamError(exc.message + detail, upstream_status=exc.status)
    if isinstance(exc, OllamaTimeout):
        return errors.UpstreamTimeout("Ollama did not answer in time" + detail)
    return errors.ServiceUnavailable(
        "Ollama is not reachable" + detail, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


# --- installed and loaded models


@bp.get("/api/models")
def list_models() -> ResponseReturnValue:
    catalog = _services().catalog
    try:
        view = catalog.view()
    except OllamaError as exc:
        raise _unavailable(exc, ", and no model list has been cached yet") from None
    body: dict[str, Any] = {
        "models": list(view.entries),
        "count": len(view.entries),
        "cached": view.cached,
        "age_seconds": round(view.age_seconds, 3),
        "ttl_seconds": catalog.ttl_seconds,
        "stale": view.stale,
    }
    if view.stale:
        body["warning"] = (
            f"Ollama is not reachable; this list is {view.age_seconds:.0f} s old and may be out "
            "of date"
        )
    return jsonify(body)


@bp.get("/api/models/loaded")
def loaded_models() -> ResponseReturnValue:
    services = _services()
    # Always 200: existing callers read an `error` field rather than the status.
    try:
        rows = services.catalog.loaded()
    except OllamaTimeout:
        return jsonify(
            loaded_models=[], count=0, error="Timeout", type="timeout", timestamp=_timestamp()
        )
    except OllamaError:
        return jsonify(
            loaded_models=[],
            count=0,
            error="Could not query Ollama process status",
            type="ollama_unavailable",
            timestamp=_timestamp(),
        )
    limiter = services.limiter
    for row in rows:
        name = row.get("name")
        key = names.normalize(name) if isinstance(name, str) and names.is_valid(name) else None
        row["in_flight"] = limiter.in_flight_for(key) if key else 0
        row["queued"] = limiter.queued_for(key) if key else 0
    return jsonify(loaded_models=rows, count=len(rows), timestamp=_timestamp())


# --- pulls


def _job_location(job: PullJob) -> str:
    return url_for("models.get_pull", job_id=job.id)


def _ndjson(lines: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    try:
        for line in lines:
            yield (json.dumps(line, separators=(",", ":")) + "\n").encode()
    finally:
        # A client that left closes this generator (GeneratorExit): end following, nothing else.
        lines.close()  # type: ignore[attr-defined]


@bp.post("/api/models/pull")
def pull() -> ResponseReturnValue:
    payload = _json_object()
    model = _model_name(payload)
    stream = payload.get("stream", True)
    if not isinstance(stream, bool):
        raise errors.BadRequest("stream must be true or false", field="stream")
    pulls = _services().pulls
    try:
        job, created = pulls.submit(model)
    except InsufficientDiskSpace as exc:
        raise errors.InsufficientStorage(str(exc), **exc.figures()) from None
    except PullQueueFull as exc:
        raise errors.ConcurrencyLimit(
            str(exc),
            type="pull_queue_full",
            headers={"Retry-After": PULL_QUEUE_RETRY_AFTER_SECONDS},
            running=exc.running,
            queued=exc.queued,
        ) from None
    except PullManagerClosed:
        raise errors.ServiceUnavailable(
            "the service is stopping",
            type="shutting_down",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    headers = {"Location": _job_location(job), "X-Pull-Job-Id": job.id}
    if not stream:
        return jsonify({**job.snapshot(), "joined": not created}), 202, headers
    watch = ClientWatch.from_environ(request.environ)
    # Whoever started the job sees it from its first line; a joiner from where it is now.
    lines = job.follow(replay=created, client_gone=watch.gone)
    return Response(_ndjson(lines), mimetype="application/x-ndjson", headers=headers)


@bp.get("/api/models/pulls")
def list_pulls() -> ResponseReturnValue:
    pulls = _services().pulls
    jobs = [job.snapshot() for job in pulls.jobs()]
    return jsonify(
        pulls=jobs,
        count=len(jobs),
        **pulls.counts(),
        max_running=pulls.max_running,
        max_queued=pulls.max_queued,
    )


def _job_or_404(job_id: str) -> PullJob:
    job = _services().pulls.get(job_id)
    if job is None:
        raise errors.NotFound(
            f"no pull job '{job_id[:ECHO_LIMIT]}'", type="pull_not_found", job_id=job_id[:64]
        )
    return job


@bp.get("/api/models/pulls/<job_id>")
def get_pull(job_id: str) -> ResponseReturnValue:
    return jsonify(_job_or_404(job_id).snapshot())


@bp.delete("/api/models/pulls/<job_id>")
def cancel_pull(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    if job.done and job.state != "cancelled":
        raise errors.Conflict(
            f"pull job '{job.id}' has already finished ({job.state})",
            type="pull_finished",
            job_id=job.id,
            state=job.state,
        )
    _services().pulls.cancel(job.id)
    return jsonify(job.snapshot())


# --- delete


@bp.delete("/api/models/delete")
def delete_model() -> ResponseReturnValue:
    model = _model_name(_json_object(), from_query=True)
    services = _services()
    job = services.pulls.active_for(model)
    if job is not None:
        raise errors.Conflict(
            f"model '{model}' is being pulled; cancel the pull or wait for it to finish",
            type="pull_in_progress",
            model=model,
            job_id=job.id,
        )
    if services.gateway.is_pulling(names.normalize(model)):
        raise errors.Conflict(
            f"model '{model}' is being pulled through /api/pull; wait for it to finish",
            type="pull_in_progress",
            model=model,
            job_id=None,  # a pull sent to the proxy is not a job
        )
    try:
        result = services.catalog.delete(model)
    except ModelNotFound:
        raise errors.NotFound(
            f"model '{model}' not found", type="model_not_found", model=model
        ) from None
    except OllamaError as exc:
        raise _unavailable(exc) from None
    body: dict[str, Any] = {
        "status": "success",
        "message": f"Model {model} deleted successfully",
        "model": model,
        "deleted": result.deleted_name,
        "freed_bytes": result.freed_bytes,
        "was_loaded": result.was_loaded,
        "unloaded": result.unloaded,
    }
    if result.unload_error:
        body["warning"] = result.unload_error
    return jsonify(body)
