"""Hermes-style API: ``POST /v1/llm/<model>``, ``POST /v1/llm/<model>/stream``, ``GET /v1/status``.

Unlike Hermes itself, validation and admission happen before the 200, so a request over the
limit or for an unknown model gets a real status code; the stream sends SSE comment heartbeats
while the model loads, and a client that leaves releases its slot and stops the generation.
Errors use Hermes' taxonomy (see errors.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from management_api import __version__, errors, names
from management_api.bodies import loads_bounded
from management_api.ollama import OllamaError
from management_api.proxy.answer_lines import LineReader, without_context
from management_api.proxy.gateway import ClientRequest, ForwardedResponse
from management_api.proxy.priority import DEFAULT_POLICY
from management_api.proxy.transport import CLIENT_CLOSED_STATUS, ClientGone, ClientWatch

bp = Blueprint("hermes_api", __name__)

STREAM_SUFFIX = "/stream"
HEARTBEAT_SECONDS = 5.0
MAX_TIMEOUT_MS = 3_600_000
STATUS_RETRY_AFTER_SECONDS = "5"


def _validation_error(message: str, field: str) -> errors.ApiError:
    return errors.BadRequest(message, type="validation_error", field=field)


def _parse(model: str) -> tuple[str, dict[str, Any], float | None]:
    try:
        payload = loads_bounded(request.get_data(cache=True))
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise _validation_error("the body must be a JSON object", "body")
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _validation_error("prompt is required and must be a non-empty string", "prompt")
    if not names.is_valid(model):
        raise _validation_error(f"'{model[:200]}' is not a valid model name", "model")
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    system = payload.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _validation_error("system must be a string", "system")
        body["system"] = system
    options = payload.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise _validation_error("options must be an object", "options")
        body["options"] = options
    timeout_ms = payload.get("timeout_ms")
    timeout = None
    if timeout_ms is not None:
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
            raise _validation_error("timeout_ms must be a whole number", "timeout_ms")
        if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise _validation_error(f"timeout_ms must be between 1 and {MAX_TIMEOUT_MS}",
                                    "timeout_ms")  # fmt: skip
        timeout = timeout_ms / 1000
    return prompt, body, timeout


def _require_installed(model: str) -> None:
    catalog = current_app.extensions["llm_service"].catalog
    if catalog.is_installed(names.normalize(model)) is False:
        available = sorted(
            m.get("name") for m in catalog.view().models if isinstance(m.get("name"), str)
        )
        raise errors.NotFound(
            f"model '{model}' is not installed", type="model_not_found", model=model,
            available_models=available,
        )  # fmt: skip


def _client_request(body: dict[str, Any]) -> ClientRequest:
    raw = json.dumps(body).encode()
    g.proxied = True  # the gateway writes this request's access-log line
    key = getattr(g, "key", None)
    return ClientRequest(
        method="POST",
        path="/api/generate",
        query="",
        headers=[("Content-Type", "application/json")],
        body=raw,
        payload=body,
        watch=ClientWatch.from_environ(request.environ),
        request_id=g.request_id,
        flavor=errors.HERMES,
        remote_addr=request.remote_addr,
        key_name=key.name if key else None,
        policy=key.policy if key else DEFAULT_POLICY,
        caller=g.caller,
    )


def _upstream_error(status: int, raw: bytes, model: str) -> errors.ApiError:
    try:
        message = json.loads(raw).get("error") or f"Ollama answered {status}"
    except (ValueError, AttributeError):
        message = f"Ollama answered {status}"
    if status == 404:
        return errors.NotFound(str(message), type="model_not_found", model=model)
    if status == 400:
        # Ollama refused the request itself (a model that cannot generate, bad options): the
        # caller's mistake, not a failure of the gateway.
        return errors.BadRequest(str(message), type="validation_error", upstream_status=status)
    return errors.UpstreamError(str(message), upstream_status=status)


def _open(admission: Any, timeout: float | None) -> ForwardedResponse:
    gateway = current_app.extensions["llm_service"].gateway
    try:
        return gateway.open(admission, first_byte_timeout=timeout)
    except errors.UpstreamTimeout:
        if timeout is None:
            raise
        raise errors.ApiError(
            f"Request timed out after {round(timeout * 1000)}ms", http_status=408,
            type="timeout", timeout_ms=round(timeout * 1000),
        ) from None  # fmt: skip


@bp.post("/v1/llm/<path:target>")
def llm(target: str) -> ResponseReturnValue:
    streaming = target.endswith(STREAM_SUFFIX)
    model = target[: -len(STREAM_SUFFIX)] if streaming else target
    _prompt, body, timeout = _parse(model)
    _require_installed(model)
    body["stream"] = streaming
    gateway = current_app.extensions["llm_service"].gateway
    started = time.monotonic()
    try:
        admission = gateway.admit(_client_request(body))
    except ClientGone:
        return Response(b"", status=CLIENT_CLOSED_STATUS)
    if streaming:
        return _stream(admission, model, timeout, started)

    try:
        forwarded = _open(admission, timeout)
    except ClientGone:
        return Response(b"", status=CLIENT_CLOSED_STATUS)
    try:
        raw = b"".join(forwarded.body)
    finally:
        forwarded.body.close()  # type: ignore[attr-defined]
    if forwarded.status >= 400:
        raise _upstream_error(forwarded.status, raw, model)
    try:
        result = json.loads(without_context(raw))  # not a Python int per prompt token
    except ValueError:
        raise errors.UpstreamError("Ollama sent a response that is not JSON") from None
    if "error" in result:
        raise errors.UpstreamError(str(result["error"]), upstream_status=200)
    return jsonify(
        result=result.get("response", ""),
        model=model,
        done_reason=result.get("done_reason"),
        eval_count=result.get("eval_count"),
        prompt_eval_count=result.get("prompt_eval_count"),
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        queue_wait_ms=round(admission.queue_wait * 1000, 1),
    )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _stream(admission: Any, model: str, timeout: float | None, started: float) -> Response:
    gateway = current_app.extensions["llm_service"].gateway
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def open_upstream() -> ForwardedResponse:
        with app.app_context():
            return _open(admission, timeout)

    future = gateway.submit(open_upstream)
    return Response(
        _HermesEvents(future, model, started, admission.queue_wait),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                 "X-Queue-Wait-Ms": f"{admission.queue_wait * 1000:.1f}"},
    )  # fmt: skip


class _HermesEvents:
    """The SSE body. ``close()`` always gives the upstream exchange (and with it the slot) back,
    also when the client left before the body was ever iterated."""

    def __init__(self, future: Any, model: str, started: float, queue_wait: float) -> None:
        self._future = future
        self._model = model
        self._started = started
        self._queue_wait = queue_wait
        self._forwarded: ForwardedResponse | None = None

    def __iter__(self) -> Iterator[bytes]:
        # Admitted: send the headers now, so the client knows it is not queued any more.
        yield b": admitted\n\n"
        try:
            while True:
                try:
                    self._forwarded = self._future.result(timeout=HEARTBEAT_SECONDS)
                    break
                except FutureTimeout:
                    yield b": waiting for the model\n\n"  # a write, so a gone client shows up
            forwarded = self._forwarded
            if forwarded.status >= 400:
                raw = b"".join(forwarded.body)
                err = _upstream_error(forwarded.status, raw, self._model)
                yield _event(errors.error_body(err, errors.HERMES))
                return
            yield from _translate(forwarded, self._model, self._started, self._queue_wait)
        except ClientGone:
            return
        except errors.ApiError as err:
            yield _event(errors.error_body(err, errors.HERMES))

    def close(self) -> None:
        if self._forwarded is not None:
            self._forwarded.body.close()  # type: ignore[attr-defined]
        else:
            # Upstream may still be loading: whatever open() returns later is closed then
            # (a done future runs the callback at once).
            self._future.add_done_callback(_close_when_done)


def _close_when_done(future: Any) -> None:
    try:
        forwarded = future.result()
    except BaseException:
        return
    forwarded.body.close()


def _translate(
    forwarded: ForwardedResponse, model: str, started: float, queue_wait: float
) -> Iterator[bytes]:
    """Ollama NDJSON → Hermes SSE: chunk events, then one done event with the stats."""
    reader = LineReader()  # the last line's `context` (a number per prompt token) is dropped
    finished = False
    for piece in forwarded.body:  # read to the end, so the exchange counts as completed
        if finished:
            continue
        for line in reader.feed(piece):
            event, terminal = _event_for_line(line, model, started, queue_wait)
            if event is not None:
                yield event
            if terminal:
                finished = True  # done or error: nothing after it counts
                break
    if not finished:
        # The body ended without a done line: say so rather than end silently.
        yield _event({"error": "the stream from Ollama ended early", "type": "ollama_error"})


def _event_for_line(
    line: bytes | bytearray, model: str, started: float, queue_wait: float
) -> tuple[bytes | None, bool]:
    """The SSE event for one NDJSON line, and whether it ends the stream."""
    if not line.strip():
        return None, False
    try:
        item = json.loads(line)
    except ValueError:
        return None, False
    if not isinstance(item, dict):
        return None, False
    if "error" in item:
        return _event({"error": str(item["error"]), "type": "ollama_error"}), True
    if item.get("done"):
        return _event(
            {
                "done": True,
                "model": model,
                "done_reason": item.get("done_reason"),
                "eval_count": item.get("eval_count"),
                "prompt_eval_count": item.get("prompt_eval_count"),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "queue_wait_ms": round(queue_wait * 1000, 1),
            }
        ), True
    if item.get("response"):
        return _event({"chunk": item["response"]}), False
    return None, False


@bp.get("/v1/status")
def status() -> ResponseReturnValue:
    services = current_app.extensions["llm_service"]
    checks: dict[str, str] = {}
    healthy = True
    models: list[str] = []
    try:
        view = services.catalog.view()
        models = [m["name"] for m in view.models if isinstance(m.get("name"), str)]
        checks["ollama"] = "ok" if not view.stale else "error: Ollama is not reachable"
        healthy = not view.stale
    except OllamaError:
        checks["ollama"] = "error: Ollama is not reachable"
        healthy = False
    limiter = services.limiter.snapshot()
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "checks": checks,
        "version": __version__,
        "uptime_seconds": round(services.uptime_seconds(), 1),
        "models": models,
        "concurrency": limiter.get("models", []),
    }
    if healthy:
        return jsonify(body)
    return jsonify(body), 503, {"Retry-After": STATUS_RETRY_AFTER_SECONDS}
