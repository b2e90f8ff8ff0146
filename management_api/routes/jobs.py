"""Job routes: ``POST /api/jobs``, ``GET /api/jobs``, ``GET|DELETE /api/jobs/<id>``.

A job is an inference request (``route`` + ``body``) that answers 202 at once and runs later
(jobs/manager.py). Each attempt runs in-process through the route's own view, exactly as a
request on the wire would (admission, queueing, the key's concurrency place, the cache, the
gateway's drop handling); only the client socket is the manager's socket pair.

Both ports serve these routes, like ``/v1/infer`` and the pull jobs (``/api/models/pull``): the
port split keeps only the status page (``/ui/``, ``/api/status``) off the proxy port, and jobs
are inference, which n8n's credentials already point at the proxy port. With
``LLM_PROXY_ENABLED=false`` (Ollama itself on the proxy port) they are on the management port.

Who sees what: a caller with a ``user`` key sees and cancels its own jobs only; an ``admin`` key,
or no key when keys are off, sees every job.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response as WerkzeugResponse

from management_api import errors
from management_api.access.auth import ADMIN, OFF, ApiKey, KeyRing
from management_api.access.hooks import ANONYMOUS_CALLER, take_key_place
from management_api.bodies import json_object
from management_api.jobs import callbacks
from management_api.jobs import store as st
from management_api.jobs.manager import (
    ANONYMOUS,
    MAX_PRIORITY,
    MIN_PRIORITY,
    ROUTES,
    JobManager,
    JobRun,
    JobsFull,
    JobsNotRunning,
    Outcome,
)
from management_api.proxy.priority import HEADER as PRIORITY_HEADER
from management_api.proxy.wait_queue import BATCH

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

# Routes that can stream; a job sets stream false (generate and chat stream when it is absent).
STREAMABLE = frozenset({"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/infer"})
JOBS_FULL_RETRY_AFTER_SECONDS = "30"
LIST_LIMIT_MAX = 1000


def _manager() -> JobManager:
    return current_app.extensions["llm_service"].jobs


def _bad(message: str, field: str) -> errors.ApiError:
    return errors.BadRequest(message, field=field)


def _caller() -> str:
    """The job's owner: the key's name, an X-LLM-Caller name with keys off, else anonymous."""
    key = getattr(g, "key", None)
    if key is not None:
        return key.name
    named = getattr(g, "caller", ANONYMOUS_CALLER)
    return ANONYMOUS if named == ANONYMOUS_CALLER else named


def _sees_everything() -> bool:
    key = getattr(g, "key", None)
    return key is None or key.role == ADMIN


def _base_url() -> str:
    return request.host_url.rstrip("/")


def _not_running(exc: JobsNotRunning) -> errors.ApiError:
    return errors.ServiceUnavailable(
        str(exc), type="jobs_unavailable", headers={"Retry-After": "5"}
    )


def _validated(payload: dict[str, Any]) -> tuple[str, dict[str, Any], int, str | None]:
    route = payload.get("route")
    if route not in ROUTES:
        raise _bad("route must be one of " + ", ".join(ROUTES), "route")
    body = payload.get("body")
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object: the request the route would get", "body")
    if body.get("stream") is True:
        raise _bad("a job stores one JSON answer: leave stream out or set it to false", "body")
    body = dict(body)
    if route in STREAMABLE:
        body["stream"] = False  # Ollama's generate and chat stream unless told not to
    priority = payload.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise _bad("priority must be a whole number", "priority")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise _bad(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}", "priority")
    callback_url = payload.get("callback_url")
    if callback_url is not None:
        try:
            callbacks.check_url(callback_url, _manager().limits.callback_hosts)
        except callbacks.CallbackRefused as exc:
            raise _bad(str(exc), "callback_url") from None
    return route, body, priority, callback_url


@bp.post("/api/jobs")
def submit() -> ResponseReturnValue:
    route, body, priority, callback_url = _validated(json_object(request.get_data(cache=False)))
    try:
        job = _manager().submit(
            route=route,
            body=body,
            caller=_caller(),
            priority=priority,
            callback_url=callback_url,
            base_url=_base_url(),
        )
    except JobsFull as exc:
        raise errors.ConcurrencyLimit(
            str(exc), type="jobs_full", reason="jobs_full", limit=exc.limit,
            headers={"Retry-After": JOBS_FULL_RETRY_AFTER_SECONDS},
        ) from None  # fmt: skip
    except JobsNotRunning as exc:
        raise _not_running(exc) from None
    status_url = f"{_base_url()}/api/jobs/{job.id}"
    return (
        jsonify(id=job.id, status=job.status, status_url=status_url),
        202,
        {"Location": status_url},
    )


def _visible(job_id: str) -> st.Job:
    try:
        job = _manager().get(job_id)
    except JobsNotRunning as exc:
        raise _not_running(exc) from None
    if job is None or (not _sees_everything() and job.caller != _caller()):
        raise errors.NotFound(f"no job '{job_id[:64]}' (unknown, or expired)", type="job_not_found")
    return job


@bp.get("/api/jobs/<job_id>")
def get_job(job_id: str) -> ResponseReturnValue:
    return jsonify(_manager().view(_visible(job_id), _base_url()))


@bp.delete("/api/jobs/<job_id>")
def cancel_job(job_id: str) -> ResponseReturnValue:
    job = _visible(job_id)
    if job.status in st.FINAL:
        raise errors.Conflict(
            f"job '{job.id}' has already ended ({job.status})", type="job_finished",
            job=_manager().view(job, _base_url()),
        )  # fmt: skip
    manager = _manager()
    manager.cancel(job.id)
    settled = manager.wait_settled(job.id, timeout=5.0) or job
    return jsonify(manager.view(settled, _base_url()))


@bp.get("/api/jobs")
def list_jobs() -> ResponseReturnValue:
    status = request.args.get("status")
    if status is not None and status not in st.STATUSES:
        raise _bad("status must be one of " + ", ".join(st.STATUSES), "status")
    caller = request.args.get("caller")
    if not _sees_everything():
        if caller is not None and caller != _caller():
            raise errors.Forbidden("a user key lists its own jobs only", type="forbidden")
        caller = _caller()
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise _bad("limit must be a whole number", "limit") from None
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise _bad(f"limit must be between 1 and {LIST_LIMIT_MAX}", "limit")
    manager = _manager()
    try:
        jobs = manager.list(status=status, caller=caller, limit=limit)
        counts = manager.counts()
    except JobsNotRunning as exc:
        raise _not_running(exc) from None
    return jsonify(
        object="list", data=[manager.view(job, _base_url()) for job in jobs], counts=counts
    )


# --- running one attempt through the app's own request path


class RequestPathExecutor:
    """Runs a job attempt as the request it describes, through the route's own view."""

    def __init__(self, app: Flask, keyring: KeyRing, max_result_bytes: int) -> None:
        self.app = app
        self.keyring = keyring
        self.max_result_bytes = max_result_bytes

    def _key(self, caller: str) -> ApiKey | None:
        if caller == ANONYMOUS:
            return None
        return next((key for key in self.keyring.keys if key.name == caller), None)

    def __call__(self, run: JobRun) -> Outcome:
        job = run.job
        key = self._key(job.caller)
        # With keys off a job's owner may be an X-LLM-Caller name rather than a key.
        if key is None and job.caller != ANONYMOUS and self.keyring.mode != OFF:
            message = f"the API key '{job.caller}' is no longer configured"
            return Outcome(401, {"error": message, "type": "unauthorized"}, reason=message)
        environ = {"gunicorn.socket": run.client_sock, "REMOTE_ADDR": "127.0.0.1"}
        payload = json.dumps(job.body, separators=(",", ":")).encode()
        with self.app.test_request_context(
            job.route,
            method="POST",
            data=payload,
            content_type="application/json",
            # A job's caller is not waiting on the line: its request waits in the batch class,
            # or in its key's default class when the keys file names one.
            headers={
                "X-Request-ID": run.request_id,
                **({} if key is not None and key.policy.priority else {PRIORITY_HEADER: BATCH}),
            },
            environ_base=environ,
        ):
            g.started = time.monotonic()
            g.request_id = run.request_id
            g.key = key
            g.caller = key.name if key is not None else (job.caller or ANONYMOUS_CALLER)
            held: ApiKey | None = None
            try:
                held = take_key_place(self.keyring, key, job.route)
                rule = request.url_rule
                assert rule is not None and rule.endpoint is not None
                answer = self.app.view_functions[rule.endpoint](**(request.view_args or {}))
                response = self.app.make_response(answer)
                return self._read(response, run)
            except errors.ApiError as err:
                return _from_error(err, job.route)
            finally:
                if held is not None:
                    self.keyring.release(held)

    def _read(self, response: WerkzeugResponse, run: JobRun) -> Outcome:
        raw = bytearray()
        try:
            for chunk in response.iter_encoded():
                raw += chunk
                if len(raw) > self.max_result_bytes:
                    limit_mb = self.max_result_bytes / (1024 * 1024)
                    message = f"the answer is larger than {limit_mb:g} MB (LLM_JOBS_MAX_RESULT_MB)"
                    return Outcome(
                        413, {"error": message, "type": "result_too_large"}, reason=message
                    )
        except Exception:
            if run.cancelled is not None:
                return Outcome(499, None, reason="cancelled")
            raise
        finally:
            response.close()  # the slot goes with the body
        return _outcome(response.status_code, bytes(raw), response.headers.get("Retry-After"))


def _outcome(status: int, raw: bytes, retry_after: str | None) -> Outcome:
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
        if 200 <= status < 300:
            return Outcome(502, None, reason="the answer was not JSON")
    if (
        status == 200
        and isinstance(body, dict)
        and set(body) <= {"error", "details"}
        and ("error" in body)
    ):
        # An error that came after early headers: the status it would have had is in details.
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
        late = details.get("status")
        status = late if isinstance(late, int) else 502
        retry = details.get("retry_after_seconds")
        retry_after = str(retry) if retry is not None else retry_after
    return Outcome(status, body, retry_after=_seconds(retry_after))


def _from_error(err: errors.ApiError, route: str) -> Outcome:
    status, headers, payload = errors.render_error(err, errors.flavor_for_path(route))
    return Outcome(
        status, json.loads(payload), retry_after=_seconds(dict(headers).get("Retry-After"))
    )


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def init_app(app: Flask, keyring: KeyRing) -> None:
    """Register the routes and hand the manager its executor."""
    services = app.extensions["llm_service"]
    services.jobs.bind(RequestPathExecutor(app, keyring, services.jobs.limits.max_result_bytes))
    app.register_blueprint(bp)
