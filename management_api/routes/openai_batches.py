"""The OpenAI Batch API: ``/v1/files`` and ``/v1/batches`` (jobs/batches.py does the work).

So the ``openai`` SDK's batch flow runs unchanged against the service's ``/v1``: upload a JSONL
file (purpose ``batch``), create a batch, poll it, read the output and error files. These rules
are more specific than the ``/v1/<path>`` pass-through, so they win; errors come in the OpenAI
envelope like every ``/v1`` route. A ``user`` key sees its own files and batches only.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from management_api import errors
from management_api.access.auth import ADMIN
from management_api.bodies import json_object
from management_api.jobs.batches import BatchError, Batches, FileRecord
from management_api.jobs.manager import ANONYMOUS, JobsFull, JobsNotRunning

bp = Blueprint("openai_batches", __name__)

FILE_PURPOSES = ("batch",)
LIST_LIMIT_MAX = 100


def _batches() -> Batches:
    return current_app.extensions["llm_service"].batches


def _caller() -> str:
    key = getattr(g, "key", None)
    return key.name if key is not None else ANONYMOUS


def _mine(owner: str) -> bool:
    key = getattr(g, "key", None)
    return key is None or key.role == ADMIN or owner == key.name


def _unavailable(exc: JobsNotRunning) -> errors.ApiError:
    return errors.ServiceUnavailable(
        str(exc), type="jobs_unavailable", headers={"Retry-After": "5"}
    )


def _file(file_id: str) -> FileRecord:
    try:
        record = _batches().get_file(file_id)
    except JobsNotRunning as exc:
        raise _unavailable(exc) from None
    if record is None or not _mine(record.caller):
        raise errors.NotFound(f"no file '{file_id[:64]}'", param="file_id")
    return record


@bp.post("/v1/files")
def upload() -> ResponseReturnValue:
    purpose = request.form.get("purpose")
    if purpose not in FILE_PURPOSES:
        raise errors.BadRequest("purpose must be 'batch'", param="purpose")
    upload = request.files.get("file")
    if upload is None:
        raise errors.BadRequest("a file is required (multipart field 'file')", param="file")
    content = upload.read()
    try:
        record = _batches().create_file(
            content, filename=upload.filename or "upload.jsonl", purpose=purpose, caller=_caller()
        )
    except JobsNotRunning as exc:
        raise _unavailable(exc) from None
    return jsonify(record.view())


@bp.get("/v1/files/<file_id>")
def get_file(file_id: str) -> ResponseReturnValue:
    return jsonify(_file(file_id).view())


@bp.get("/v1/files/<file_id>/content")
def file_content(file_id: str) -> ResponseReturnValue:
    record = _file(file_id)
    return Response(_batches().file_content(record), mimetype="application/octet-stream")


def _batch_or_404(batch_id: str) -> None:
    owner = _batches().caller_of(batch_id)
    if owner is None or not _mine(owner):
        raise errors.NotFound(f"no batch '{batch_id[:64]}'", param="batch_id")


@bp.post("/v1/batches")
def create_batch() -> ResponseReturnValue:
    payload = json_object(request.get_data(cache=False))
    metadata = payload.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise errors.BadRequest("metadata must be an object of strings", param="metadata")
    input_file_id = payload.get("input_file_id")
    if not isinstance(input_file_id, str):
        raise errors.BadRequest("input_file_id is required", param="input_file_id")
    try:
        record = _batches().get_file(input_file_id)
        if record is not None and not _mine(record.caller):
            record = None
        batch = _batches().create(
            input_file_id=input_file_id if record is not None else "",
            endpoint=str(payload.get("endpoint")),
            completion_window=str(payload.get("completion_window")),
            metadata=metadata,
            caller=_caller(),
        )
    except BatchError as exc:
        raise errors.BadRequest(str(exc), param=exc.param) from None
    except JobsFull as exc:
        raise errors.ConcurrencyLimit(
            str(exc), type="jobs_full", reason="jobs_full", limit=exc.limit,
            headers={"Retry-After": "30"},
        ) from None  # fmt: skip
    except JobsNotRunning as exc:
        raise _unavailable(exc) from None
    return jsonify(batch)


@bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str) -> ResponseReturnValue:
    try:
        _batch_or_404(batch_id)
        return jsonify(_batches().get(batch_id))
    except JobsNotRunning as exc:
        raise _unavailable(exc) from None


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> ResponseReturnValue:
    try:
        _batch_or_404(batch_id)
        return jsonify(_batches().cancel(batch_id))
    except JobsNotRunning as exc:
        raise _unavailable(exc) from None


@bp.get("/v1/batches")
def list_batches() -> ResponseReturnValue:
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        raise errors.BadRequest("limit must be a whole number", param="limit") from None
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise errors.BadRequest(f"limit must be between 1 and {LIST_LIMIT_MAX}", param="limit")
    key = getattr(g, "key", None)
    caller: Any = None if key is None or key.role == ADMIN else key.name
    try:
        return jsonify(_batches().list(caller=caller, limit=limit, after=request.args.get("after")))
    except JobsNotRunning as exc:
        raise _unavailable(exc) from None
