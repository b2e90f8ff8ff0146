"""Early headers for long non-stream waits (``early_headers_after_seconds``, 0 = off).

n8n's HTTP Request node gives up when no response headers arrive within 300 s, and a non-stream
request to Ollama answers nothing until its whole body is ready: queue wait, model load and the
generation together can pass that on a Jetson. When a model's limit is set and a non-stream
inference request has waited that long, this wrapper answers ``200`` with the final content type
at once, then one space every ``KEEPALIVE_SECONDS`` until the JSON body, which follows as Ollama
sent it (JSON allows leading whitespace).

Streaming requests never get early headers. n8n's Ollama and LangChain nodes (2.41) always
stream and wait up to an hour for the first byte (``N8N_AI_TIMEOUT_MAX``), and a stream already
sends headers with its first chunk; an early 200 would only take away the status (429, 503) that
the Ollama JS client checks before it reads a stream.

An error after the headers can no longer change the status. The body is then
``{"error": "<message>", "details": {"type": ..., "status": <the status it would have had>, ...}}``
and nothing else at the top level: n8n sends an item to a node's error output only when all its
keys are among ``error``, ``message`` and ``details``. The real cause also goes to the log.

The gateway itself is untouched: the request runs through ``Gateway.forward`` on a helper thread
while the request thread waits; its slot still goes with the body it returns, and a client that
leaves is noticed by the gateway's own watch (and by our writes), so nothing is held after.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from management_api import errors
from management_api.proxy.gateway import ClientRequest, ForwardedResponse, Gateway
from management_api.proxy.inference import INFERENCE_ROUTES, classify
from management_api.proxy.transport import ClientGone

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
CONTENT_TYPE = "application/json; charset=utf-8"  # what Ollama's c.JSON sends, /v1 too
EARLY_HEADER = "X-Early-Headers"
QUEUE_POSITION_HEADER = "X-Queue-Position"
MAX_ERROR_BODY_BYTES = 64 * 1024


def early_after_seconds(gateway: Gateway, request: ClientRequest) -> float:
    """The configured delay for this request, or 0 when early headers do not apply to it."""
    if request.method != "POST" or request.path not in INFERENCE_ROUTES:
        return 0.0
    gateway.read(request)  # the one reading of the body; the gateway reuses it
    intent = classify(request.path, request.payload)
    if intent is None or intent.stream or not intent.needs_admission:
        return 0.0
    assert intent.model_key is not None
    return gateway.limiter.limits_for(intent.model_key).early_headers_after_seconds


def forward(
    gateway: Gateway, request: ClientRequest, *, keepalive_seconds: float = KEEPALIVE_SECONDS
) -> ForwardedResponse:
    """``gateway.forward(request)``, with early headers when the request's limits ask for them."""
    after = early_after_seconds(gateway, request)
    if after <= 0:
        return gateway.forward(request)
    started = time.monotonic()
    future: Future[ForwardedResponse] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(gateway.forward(request))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="early-headers", daemon=True).start()
    try:
        return future.result(timeout=max(0.0, after - (time.monotonic() - started)))
    except FutureTimeout:
        pass
    log.info("request %s: no answer after %.1f s, sending headers early", request.request_id, after)
    headers = [("Content-Type", CONTENT_TYPE), (EARLY_HEADER, f"{after:g}")]
    ticket = request.ticket
    position = ticket.position() if ticket is not None else None
    if position is not None:
        # Still queued: how many of its model's waiters go before it (0 = next).
        headers.append((QUEUE_POSITION_HEADER, str(position)))
    return ForwardedResponse(
        status=200,
        headers=headers,
        body=EarlyBody(future, request.request_id, keepalive_seconds),
    )


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


def _error_line(message: str, error_type: str, status: int, **extra: Any) -> bytes:
    """The late error: ``error`` and ``details`` only, so n8n routes it to an error output."""
    details = {**extra, "type": error_type, "status": status}  # the HTTP status wins
    return (json.dumps({"error": message, "details": details}) + "\n").encode()


class EarlyBody:
    """Spaces until the real answer is there, then the answer (or its error as a JSON object)."""

    def __init__(self, future: Future[ForwardedResponse], request_id: str, keepalive: float):
        self._future = future
        self._request_id = request_id
        self._keepalive = keepalive
        self._inner: Iterable[bytes] | None = None
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        yield b" "  # the WSGI server sends the headers with the first byte
        while True:
            try:
                forwarded = self._future.result(timeout=self._keepalive)
                break
            except FutureTimeout:
                yield b" "
            except ClientGone:
                return  # nobody is left to read anything
            except errors.ApiError as err:
                log.warning(
                    "request %s failed after early headers: %s %s (%s)",
                    self._request_id, err.status, err.type, err.message,
                )  # fmt: skip
                extra = _plain(err.extra)
                retry = errors.retry_after_seconds(err)
                if retry is not None:
                    extra["retry_after_seconds"] = retry
                yield _error_line(err.message, err.type, err.status, **extra)
                return
            except Exception:
                log.exception("request %s failed after early headers", self._request_id)
                err = errors.InternalError(request_id=self._request_id)
                yield _error_line(err.message, err.type, err.status, request_id=self._request_id)
                return
        with self._lock:
            if self._closed:
                _close(forwarded.body)
                return
            self._inner = forwarded.body
        if forwarded.status == 200:
            yield from forwarded.body
            return
        yield self._upstream_error(forwarded)

    def _upstream_error(self, forwarded: ForwardedResponse) -> bytes:
        """Ollama answered with an error status: its message, typed, after our 200."""
        raw = b""
        for chunk in forwarded.body:
            raw += chunk
            if len(raw) > MAX_ERROR_BODY_BYTES:
                break
        message = f"Ollama answered {forwarded.status}"
        error_type = "upstream_error"
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            inner = payload.get("error")
            if isinstance(inner, dict):  # the OpenAI envelope
                inner = inner.get("message")
            if isinstance(inner, str) and inner:
                message = inner
            if isinstance(payload.get("type"), str):
                error_type = payload["type"]
        log.warning(
            "request %s failed after early headers: Ollama answered %s (%s)",
            self._request_id, forwarded.status, message,
        )  # fmt: skip
        return _error_line(message, error_type, forwarded.status)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            inner = self._inner
        if inner is not None:
            _close(inner)
            return
        # Still waiting: whatever the gateway returns later must give its slot back.
        self._future.add_done_callback(_close_result)


def _close_result(future: Future[ForwardedResponse]) -> None:
    if future.exception() is None:
        _close(future.result().body)


def _plain(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if isinstance(v, str | int | float | bool | type(None))}
