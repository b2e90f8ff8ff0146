"""Task routes: ``POST /v1/infer``, ``GET /v1/tasks``, ``POST /api/tasks/reload``.

Validation and the request-level 429 happen before any byte is sent; the orchestration itself
(tasks/orchestrator.py) knows no Flask. A streamed answer (fallback and fastest only) is SSE
like ``/v1/llm/<model>/stream``: ``data: {"chunk"}`` events with the winner's text, then one
``data: {"done": true, …}`` event with the whole result, or one ``data: {"error", "type"}``.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from management_api import errors, names
from management_api.bodies import loads_releasing, read_buffer
from management_api.cache.service import HEADER as CACHE_HEADER
from management_api.cache.service import ResultPlan
from management_api.proxy.priority import DEFAULT_POLICY, header_class
from management_api.proxy.priority import HEADER as PRIORITY_HEADER
from management_api.proxy.transport import CLIENT_CLOSED_STATUS, ClientGone, ClientWatch
from management_api.tasks.config import MAX_MODELS_PER_TASK, STRATEGIES, STREAMABLE
from management_api.tasks.orchestrator import InferCall, settled

bp = Blueprint("tasks", __name__)

HEARTBEAT_SECONDS = 5.0


def _bad(message: str, field: str) -> errors.ApiError:
    return errors.BadRequest(message, type="invalid_input", field=field)


def _too_large(cap: int) -> errors.ApiError:
    return errors.PayloadTooLarge(
        f"a /v1/infer body may be at most {cap} bytes (LLM_INFER_MAX_INPUT_MB)"
    )


def _services() -> Any:
    return current_app.extensions["llm_service"]


def _call(payload: Any) -> InferCall:
    services = _services()
    config = services.tasks.current
    if not isinstance(payload, dict):
        raise _bad("the body must be a JSON object", "body")
    name = payload.get("task")
    if not isinstance(name, str) or not name:
        raise _bad("task is required and must be a task name (see GET /v1/tasks)", "task")
    task = config.tasks.get(name)
    if task is None:
        raise errors.NotFound(
            f"no task named '{name[:100]}'", type="task_not_found",
            available_tasks=sorted(config.tasks),
        )  # fmt: skip
    value = payload.get("input")
    if not isinstance(value, str | dict):
        raise _bad("input is required: a string or an object of template fields", "input")
    deadline_ms = payload.get("deadline_ms", config.defaults.deadline_ms)
    limit = config.defaults.max_deadline_ms
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int):
        raise _bad("deadline_ms must be a whole number of milliseconds", "deadline_ms")
    if not 1 <= deadline_ms <= limit:
        raise _bad(f"deadline_ms must be between 1 and {limit}", "deadline_ms")
    strategy = payload.get("strategy", task.strategy)
    if strategy not in STRATEGIES:
        raise _bad("strategy must be one of " + ", ".join(STRATEGIES), "strategy")
    if strategy == "judge" and task.judge is None:
        raise _bad(f"task '{name}' has no judge configured", "strategy")
    models = payload.get("models", list(task.models))
    if (
        not isinstance(models, list)
        or not 1 <= len(models) <= MAX_MODELS_PER_TASK
        or not all(isinstance(m, str) and names.is_valid(m) for m in models)
    ):
        raise _bad(f"models must be a list of 1 to {MAX_MODELS_PER_TASK} model names", "models")
    if len({names.normalize(m) for m in models}) != len(models):
        raise _bad("models must name each model once", "models")
    if "models" in payload:
        for model in models:
            if services.catalog.is_installed(names.normalize(model)) is False:
                raise errors.NotFound(
                    f"model '{model}' is not installed", type="model_not_found", model=model
                )
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    if stream and strategy not in STREAMABLE:
        raise _bad("stream is available for the fallback and fastest strategies", "stream")
    key = getattr(g, "key", None)
    asked = header_class(request.headers.get(PRIORITY_HEADER))
    return InferCall(
        config=config,
        task=task,
        input=value,
        deadline_ms=deadline_ms,
        strategy=strategy,
        models=tuple(m.strip() for m in models),
        request_id=g.request_id,
        stream=stream,
        watch=ClientWatch.from_environ(request.environ),
        remote_addr=request.remote_addr,
        key_name=key.name if key else None,
        caller=g.caller,
        policy=key.policy if key else DEFAULT_POLICY,
        # The request's own class wins over the task's (the key's ceiling still caps it).
        priority=asked,
    )


def _cache_plan(call: InferCall) -> ResultPlan | None:
    """What the response cache does with this request; None when the cache is off."""
    cache = _services().cache
    if cache is None:
        return None
    task = call.task
    models = list(call.models)
    if call.strategy == "judge" and task.judge is not None:
        models.append(task.judge.model)  # the judge's answer decides: its digest counts
    return cache.plan_result(
        task=task.name,
        identity=task.identity,
        ttl_seconds=task.cache_ttl_seconds,
        cacheable=task.cacheable and not call.stream,
        models=models,
        fields={"input": call.input, "strategy": call.strategy, "models": models},
        headers=request.headers.items(),
        key_name=call.key_name,
    )


@bp.post("/v1/infer")
def infer() -> ResponseReturnValue:
    # Its own cap, below the general body cap: every model of the task is sent the input.
    cap = round(_services().settings.infer_max_input_mb * 1024 * 1024)
    length = request.content_length
    if length is not None and length > cap:
        raise _too_large(cap)
    # Read into one buffer and emptied once decoded: a large input is held about once, not as
    # raw bytes, their text and the parsed value all at the same time.
    buffer = read_buffer(request.stream, length, cap)
    if len(buffer) > cap:
        raise _too_large(cap)
    try:
        payload = loads_releasing(buffer)
    except (ValueError, UnicodeDecodeError):
        raise _bad("the body must be a JSON object", "body") from None
    call = _call(payload)
    services = _services()
    plan = _cache_plan(call)
    orchestrator = services.orchestrator

    def run() -> dict[str, Any]:
        orchestrator.enter(call.config)
        try:
            return orchestrator.run(call)
        finally:
            orchestrator.leave()

    outcome = plan.result if plan is not None else None
    g.cache = outcome
    if plan is not None and plan.key is None:
        services.cache.count_result(plan, plan.result)  # BYPASS
    try:
        if call.stream:
            orchestrator.enter(call.config)  # left by the stream's worker thread
            return _cache_header(_stream(call), outcome)
        if plan is None or plan.key is None:
            result = run()
        else:
            # A hit or a shared result takes no max_concurrent place and no slot.
            watch = call.watch
            result, outcome = services.cache.answer_result(
                plan,
                call.request_id,
                run,
                keep_if=settled,
                gone=watch.gone if watch is not None else (lambda: False),
                max_wait=call.deadline_ms / 1000,
            )
            g.cache = outcome
    except ClientGone:
        return Response(b"", status=CLIENT_CLOSED_STATUS)
    except errors.ApiError as exc:
        if outcome is not None:
            exc.headers[CACHE_HEADER] = outcome
        raise
    return _cache_header(jsonify(result), outcome)


def _cache_header(response: Response, outcome: str | None) -> Response:
    if outcome is not None:
        response.headers[CACHE_HEADER] = outcome
    return response


class _StreamWatch(ClientWatch):
    """The client's socket, or the SSE body closed by the server (the client left)."""

    def __init__(self, inner: ClientWatch | None) -> None:
        super().__init__(None)
        self.inner = inner
        self.closed = False

    def gone(self) -> bool:
        return self.closed or (self.inner is not None and self.inner.gone())


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _stream(call: InferCall) -> Response:
    orchestrator = _services().orchestrator
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    watch = _StreamWatch(call.watch)
    call.watch = watch
    call.on_token = lambda text: events.put(("chunk", text))

    def work() -> None:
        try:
            events.put(("done", orchestrator.run(call)))
        except errors.ApiError as err:
            events.put(("error", errors.error_body(err, errors.OLLAMA)))
        except ClientGone:
            events.put(("gone", None))
        except Exception:
            current_app.logger.exception("task stream failed (request %s)", call.request_id)
            events.put(("error", {"error": "internal error", "type": "internal_error"}))
        finally:
            orchestrator.leave()

    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run_in_app() -> None:
        with app.app_context():
            work()

    # One thread per running stream, bounded by max_concurrent (entered above).
    threading.Thread(target=run_in_app, name="infer-stream", daemon=True).start()
    return Response(
        _Events(events, watch),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _Events:
    def __init__(self, events: queue.Queue[tuple[str, Any]], watch: _StreamWatch) -> None:
        self._events = events
        self._watch = watch

    def __iter__(self) -> Iterator[bytes]:
        yield b": started\n\n"
        while True:
            try:
                kind, value = self._events.get(timeout=HEARTBEAT_SECONDS)
            except queue.Empty:
                yield b": waiting\n\n"  # a write, so a gone client shows up
                continue
            if kind == "chunk":
                yield _event({"chunk": value})
            elif kind == "done":
                yield _event({"done": True, **value})
                return
            elif kind == "error":
                yield _event(value)
                return
            else:
                return

    def close(self) -> None:
        self._watch.closed = True  # the orchestrator cancels every branch at its next poll


@bp.get("/v1/tasks")
def list_tasks() -> ResponseReturnValue:
    services = _services()
    config = services.tasks.current
    breakers = services.orchestrator.breakers
    tasks = []
    for task in config.tasks.values():
        entry = task.to_dict()
        entry["models"] = [
            {"model": m, "breaker": breakers.state(names.normalize(m))} for m in task.models
        ]
        tasks.append(entry)
    loaded = services.orchestrator.loaded_models(fresh=True)
    return jsonify(
        file=str(services.tasks.path),
        loaded_models=sorted(loaded) if loaded is not None else None,
        strategies=list(STRATEGIES),
        defaults=vars(config.defaults).copy(),
        breaker=vars(config.breaker).copy(),
        running=services.orchestrator.running,
        tasks=tasks,
        breakers=breakers.snapshot(),
    )


@bp.post("/api/tasks/reload")
def reload_tasks() -> ResponseReturnValue:
    reloader = _services().tasks
    if reloader.reload_now():
        return jsonify(status="reloaded", tasks=sorted(reloader.current.tasks))
    raise errors.ApiError(
        reloader.last_error or "the tasks file could not be used",
        http_status=422, type="invalid_tasks_file", status="kept",
        tasks=sorted(reloader.current.tasks),
    )  # fmt: skip
