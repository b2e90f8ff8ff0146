"""Request plumbing shared by every route: request ids, API keys, CORS and the access log.

Order per request: assign the request id → answer a CORS preflight → check the API key (401 /
403) → take the key's concurrency place for inference routes (429 ``key_limit``) → the route.
After it: CORS headers, ``X-Request-ID``, and one JSON access-log line when the response is
closed (proxied requests are logged by the gateway, which knows queue wait and first byte).

The steps are plain functions of header values, so the Flask hooks below and the inference
fast path (fast_path.py) apply exactly the same rules.
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
from management_api.access.auth import OFF, ApiKey, KeyRing, presented_key
from management_api.access.cors import CorsPolicy
from management_api.proxy.inference import INFERENCE_ROUTES

REQUEST_ID_HEADER = "X-Request-ID"
CALLER_HEADER = "X-LLM-Caller"
ANONYMOUS_CALLER = "anonymous"
# A header-named caller becomes a label in logs, metrics and usage rows: short and plain.
_CALLER_PATTERN = re.compile(r"[a-z0-9._-]{1,32}\Z")
# Accept a caller's id only when it is harmless to log and echo back.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
access_log = logging.getLogger("llm_service.access")


# Our own routes that run models: each request holds one of the key's places while it runs.
_OWN_INFERENCE_ROUTES = frozenset({"/v1/infer"})


def _is_inference(path: str) -> bool:
    return path in INFERENCE_ROUTES or path in _OWN_INFERENCE_ROUTES or path.startswith("/v1/llm/")


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


def request_id_for(supplied: str | None) -> str:
    """The caller's X-Request-ID when it is safe to log and echo, else a fresh one."""
    return supplied if supplied and _REQUEST_ID_PATTERN.match(supplied) else uuid.uuid4().hex


def caller_name(keyring: KeyRing, key: ApiKey | None, header: str | None) -> str:
    """Who is calling: the key's name when keys are on; with keys off, the X-LLM-Caller header
    (400 ``invalid_caller`` when it is not 1 to 32 of a-z, 0-9, '.', '_', '-'); else anonymous.

    With keys on the header is not read: a keyless request must not take a key's name (its
    fair share, its usage rows)."""
    if key is not None:
        return key.name
    if keyring.mode != OFF or header is None:
        return ANONYMOUS_CALLER
    if not _CALLER_PATTERN.match(header):
        raise errors.BadRequest(
            f"{CALLER_HEADER} must be 1 to 32 characters of a-z, 0-9, '.', '_' and '-'",
            type="invalid_caller",
            field=CALLER_HEADER,
        )
    return header


def authorize_caller(
    keyring: KeyRing, method: str, path: str, authorization: str | None, x_api_key: str | None
) -> ApiKey | None:
    """The caller's key (None without one) when the route allows the caller; else 401/403."""
    decision = keyring.authorize(method, path, presented_key(authorization, x_api_key))
    if decision.allowed:
        return decision.key
    if decision.status == 401:
        raise errors.Unauthorized(
            decision.message, headers={"WWW-Authenticate": 'Bearer realm="llm-service"'}
        )
    raise errors.Forbidden(decision.message)


def take_key_place(keyring: KeyRing, key: ApiKey | None, path: str) -> ApiKey | None:
    """Take one of the key's concurrency places for an inference request (429 ``key_limit``
    when all are taken). Returns the key whose place is held — give it back with
    ``keyring.release`` exactly once — or None when nothing was taken."""
    if key is None or not _is_inference(path):
        return None
    if not keyring.try_acquire(key):
        limit = key.max_concurrency
        raise errors.ConcurrencyLimit(
            f"the API key '{key.name}' has {limit} requests running (its limit); retry shortly",
            headers={"Retry-After": "1"},
            key=key.name,
            limit=limit,
            in_flight=keyring.in_flight(key.name),
            reason="key_limit",
        )
    return key


def response_headers(
    cors: CorsPolicy, request_id: str | None, origin: str | None
) -> list[tuple[str, str]]:
    """Headers every response gets: its request id, and CORS headers for an allowed origin."""
    headers = [(REQUEST_ID_HEADER, request_id)] if request_id else []
    if origin and cors.allows(origin):
        headers.extend(cors.response_headers(origin).items())
    return headers


def log_request(
    *,
    request_id: str | None,
    remote_addr: str | None,
    method: str,
    path: str,
    key: ApiKey | None,
    status: int,
    started: float,
    cache: str | None = None,
    caller: str | None = None,
) -> None:
    """The access-log line of a request the gateway did not log itself (``cache``: what the
    response cache did with a ``/v1/infer`` request, when it is on)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "remote_addr": remote_addr,
        "method": method,
        "path": path,
        "key": key.name if key else None,
        "caller": caller,
        "status": status,
        "duration_ms": round((time.monotonic() - started) * 1000, 2),
    }
    if cache is not None:
        line["cache"] = cache
    access_log.info(json.dumps(line, separators=(",", ":")))


def init_app(app: Flask, keyring: KeyRing, cors: CorsPolicy) -> None:
    @app.before_request
    def prepare() -> Response | None:
        g.started = time.monotonic()
        g.request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        g.key = None
        g.caller = ANONYMOUS_CALLER
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

        g.key = authorize_caller(
            keyring,
            request.method,
            request.path,
            request.headers.get("Authorization"),
            request.headers.get("X-API-Key"),
        )
        g.caller = caller_name(keyring, g.key, request.headers.get(CALLER_HEADER))
        g.key_slot = take_key_place(keyring, g.key, request.path)
        return None

    @app.after_request
    def finish(response: Response) -> Response:
        request_id = getattr(g, "request_id", None)
        for name, value in response_headers(cors, request_id, request.headers.get("Origin")):
            response.headers[name] = value
        key_slot = g.pop("key_slot", None)
        started = getattr(g, "started", time.monotonic())
        key = getattr(g, "key", None)
        caller = getattr(g, "caller", None)
        proxied = getattr(g, "proxied", False)
        cache = getattr(g, "cache", None)
        remote = request.remote_addr
        method, path = request.method, request.path

        def on_close() -> None:
            if key_slot is not None:
                keyring.release(key_slot)
            if not proxied:
                log_request(request_id=request_id, remote_addr=remote, method=method, path=path,
                            key=key, status=response.status_code, started=started,
                            cache=cache, caller=caller)  # fmt: skip

        response.call_on_close(on_close)
        return response

    @app.teardown_request
    def release_on_failure(_exc: BaseException | None) -> None:
        # after_request did not run (an error escaped every handler): free the key's place.
        key_slot = g.pop("key_slot", None)
        if key_slot is not None:
            keyring.release(key_slot)
