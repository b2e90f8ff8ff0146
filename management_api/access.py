"""Request plumbing shared by every route: request ids, API keys, CORS and the access log.

Order per request: assign the request id → answer a CORS preflight → check the API key (401 /
403) → take the key's concurrency place for inference routes (429 ``key_limit``) → the route.
After it: CORS headers, ``X-Request-ID``, and one JSON access-log line when the response is
closed (proxied requests are logged by the gateway, which knows queue wait and first byte).
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone

from flask import Flask, Response, g, request

from management_api import errors
from management_api.auth import KeyRing, presented_key
from management_api.cors import CorsPolicy
from management_api.inference import INFERENCE_ROUTES

REQUEST_ID_HEADER = "X-Request-ID"
# Accept a caller's id only when it is harmless to log and echo back.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
access_log = logging.getLogger("llm_service.access")


def _is_inference(path: str) -> bool:
    return path in INFERENCE_ROUTES or path.startswith("/v1/llm/")


def _bound_chunked_body(app: Flask) -> None:
    """Enforce the body cap on chunked uploads too.

    With no Content-Length, Werkzeug only truncates a streamed body at MAX_CONTENT_LENGTH, so the
    route would see a cut-off body and answer 400. Read at most cap + 1 bytes here instead: over
    the cap is a 413; otherwise the body is handed on with its real length. Blob uploads stream
    to Ollama and are exempt.
    """
    environ = request.environ
    if environ.get("CONTENT_LENGTH") or "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", ""):
        return
    if request.path.startswith("/api/blobs/"):
        return
    cap = app.config["MAX_CONTENT_LENGTH"]
    data = environ["wsgi.input"].read(cap + 1)
    if len(data) > cap:
        raise errors.PayloadTooLarge(f"request body larger than {cap // (1024 * 1024)} MB")
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))


def init_app(app: Flask, keyring: KeyRing, cors: CorsPolicy) -> None:
    @app.before_request
    def prepare() -> Response | None:
        g.started = time.monotonic()
        supplied = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = supplied if _REQUEST_ID_PATTERN.match(supplied) else uuid.uuid4().hex
        g.key = None
        _bound_chunked_body(app)
        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and origin
            and request.headers.get("Access-Control-Request-Method")
        ):
            if not cors.allows(origin):
                raise errors.Forbidden("this origin is not allowed (LLM_CORS_ORIGINS)",
                                       type="cors_forbidden")  # fmt: skip
            headers = cors.preflight_headers(
                origin, request.headers.get("Access-Control-Request-Headers")
            )
            return Response(b"", status=204, headers=headers)

        decision = keyring.authorize(
            request.method,
            request.path,
            presented_key(request.headers.get("Authorization"), request.headers.get("X-API-Key")),
        )
        if not decision.allowed:
            if decision.status == 401:
                raise errors.Unauthorized(
                    decision.message,
                    headers={"WWW-Authenticate": 'Bearer realm="llm-service"'},
                )
            raise errors.Forbidden(decision.message)
        g.key = decision.key
        if decision.key is not None and _is_inference(request.path):
            if not keyring.try_acquire(decision.key):
                limit = decision.key.max_concurrency
                raise errors.ConcurrencyLimit(
                    f"the API key '{decision.key.name}' has {limit} requests running "
                    "(its limit); retry shortly",
                    headers={"Retry-After": "1"},
                    key=decision.key.name,
                    limit=limit,
                    in_flight=keyring.in_flight(decision.key.name),
                    reason="key_limit",
                )
            g.key_slot = decision.key
        return None

    @app.after_request
    def finish(response: Response) -> Response:
        request_id = getattr(g, "request_id", None)
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        origin = request.headers.get("Origin")
        if origin and cors.allows(origin):
            for name, value in cors.response_headers(origin).items():
                response.headers[name] = value
        key_slot = g.pop("key_slot", None)
        started = getattr(g, "started", time.monotonic())
        key = getattr(g, "key", None)
        proxied = getattr(g, "proxied", False)
        remote = request.remote_addr
        method, path = request.method, request.path

        def on_close() -> None:
            if key_slot is not None:
                keyring.release(key_slot)
            if not proxied and access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "request_id": request_id,
                    "remote_addr": remote,
                    "method": method,
                    "path": path,
                    "key": key.name if key else None,
                    "status": response.status_code,
                    "duration_ms": round((time.monotonic() - started) * 1000, 2),
                }, separators=(",", ":")))  # fmt: skip

        response.call_on_close(on_close)
        return response

    @app.teardown_request
    def release_on_failure(_exc: BaseException | None) -> None:
        # after_request did not run (an error escaped every handler): free the key's place.
        key_slot = g.pop("key_slot", None)
        if key_slot is not None:
            keyring.release(key_slot)
