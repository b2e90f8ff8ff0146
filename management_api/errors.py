"""One error family, three renderings.

Every error the service itself produces is an `ApiError` subclass carrying its HTTP status and
machine `type`. `error_body` builds the JSON for the protocol of the route that failed:

* Ollama-native routes and the management API: ``{"error": "<message>", "type": "<type>", …}``
  (Ollama clients read ``error``; our callers also read ``type``);
* OpenAI-compatible routes (``/v1/…``): the OpenAI envelope
  ``{"error": {"message", "type", "param", "code"}}``, so the OpenAI SDKs classify and retry it;
* Hermes-style routes (``/v1/llm/…``, ``/v1/status``): Hermes' taxonomy
  (``validation_error``, ``model_not_found``, ``timeout``, ``concurrency_limit``, …).

Every 429 body also carries ``retry_after_seconds`` (an integer, top level, in every flavor): the
``Retry-After`` header's value, which n8n and other tools that keep only the body would lose.

Responses we generate carry ``X-Error-Source: llm-service`` so they can be told apart from
errors Ollama sent that the proxy passed through unchanged. No exception text ever reaches a
client: unexpected failures become a 500 with the request id, and the traceback goes to the log.
No Flask here: access/error_handlers.py renders these errors for the Flask app.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)

ERROR_SOURCE_HEADER = "X-Error-Source"


class ApiError(Exception):
    """An error we answer ourselves. Keyword arguments beyond the named ones become body fields
    (``status`` among them: the self-healing routes' callers read a ``status`` field)."""

    status: int = 500
    type: str = "internal_error"
    default_message: str = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        type: str | None = None,
        http_status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.message = message or self.default_message
        if type is not None:
            self.type = type
        if http_status is not None:
            self.status = http_status
        self.headers = dict(headers or {})
        self.extra = extra
        super().__init__(self.message)


class BadRequest(ApiError):
    status, type, default_message = 400, "invalid_request", "invalid request"


class Unauthorized(ApiError):
    status, type, default_message = 401, "unauthorized", "an API key is required"


class Forbidden(ApiError):
    status, type, default_message = 403, "forbidden", "this API key may not use this route"


class NotFound(ApiError):
    status, type, default_message = 404, "not_found", "not found"


class MethodNotAllowed(ApiError):
    status, type, default_message = 405, "method_not_allowed", "method not allowed"


class Conflict(ApiError):
    status, type, default_message = 409, "conflict", "conflict"


class PayloadTooLarge(ApiError):
    status, type, default_message = 413, "payload_too_large", "request body too large"


class UnsupportedMediaType(ApiError):
    status, type, default_message = 415, "unsupported_media_type", "unsupported media type"


class ConcurrencyLimit(ApiError):
    status, type, default_message = 429, "concurrency_limit", "model is at its concurrency limit"


class InternalError(ApiError):
    status, type, default_message = 500, "internal_error", "internal error"


class UpstreamError(ApiError):
    status, type, default_message = 502, "ollama_error", "Ollama returned an error"


class ServiceUnavailable(ApiError):
    status, type, default_message = 503, "ollama_unavailable", "Ollama is not reachable"


class UpstreamTimeout(ApiError):
    status, type, default_message = 504, "timeout", "Ollama did not answer in time"


class InsufficientStorage(ApiError):
    status, type, default_message = 507, "insufficient_storage", "not enough free disk space"


# --- renderings

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

_HERMES_TYPES = {
    400: "validation_error",
    # Hermes has no types for these; ours say what happened rather than "internal_error".
    401: "unauthorized",
    403: "forbidden",
    413: "validation_error",
    404: "model_not_found",
    408: "timeout",
    429: "concurrency_limit",
    500: "internal_error",
    502: "ollama_error",
    503: "connection_error",
    504: "timeout",
}

OLLAMA, OPENAI, HERMES = "ollama", "openai", "hermes"
TASK_PATHS = frozenset({"/v1/infer", "/v1/tasks"})


def flavor_for_path(path: str) -> str:
    """Which protocol's error shape a route speaks."""
    if path.startswith("/v1/llm/") or path == "/v1/llm" or path == "/v1/status":
        return HERMES
    if path in TASK_PATHS:
        return OLLAMA  # our own routes: the plain envelope, like the management API
    if path.startswith("/v1/"):
        return OPENAI
    return OLLAMA


def openai_type_for_status(status: int) -> str:
    return _OPENAI_TYPES.get(status, "api_error")


RETRY_AFTER_DEFAULT_SECONDS = 1


def retry_after_seconds(err: ApiError) -> int | None:
    """The seconds a 429 asks the client to wait (its ``Retry-After``), None for other statuses."""
    if err.status != 429:
        return None
    try:
        return max(0, int(err.headers.get("Retry-After", RETRY_AFTER_DEFAULT_SECONDS)))
    except ValueError:
        return RETRY_AFTER_DEFAULT_SECONDS


def error_body(err: ApiError, flavor: str = OLLAMA) -> dict[str, Any]:
    retry = retry_after_seconds(err)
    if flavor == OPENAI:
        envelope: dict[str, Any] = {
            "error": {
                "message": err.message,
                "type": openai_type_for_status(err.status),
                "param": err.extra.get("param"),
                "code": err.type,
            }
        }
        if retry is not None:
            envelope["retry_after_seconds"] = retry
        return envelope
    body: dict[str, Any] = {"error": err.message}
    if flavor == HERMES:
        body["type"] = (
            err.type
            if err.type in _HERMES_TYPES.values()
            else _HERMES_TYPES.get(err.status, "internal_error")
        )
    else:
        body["type"] = err.type
    body.update(err.extra)
    if retry is not None:
        body["retry_after_seconds"] = retry
    return body


def render_error(err: ApiError, flavor: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of an error response, without Flask (the fast path uses it)."""
    payload = (json.dumps(error_body(err, flavor), separators=(",", ":")) + "\n").encode()
    if err.status == 429 and "Retry-After" not in err.headers:
        err.headers["Retry-After"] = str(RETRY_AFTER_DEFAULT_SECONDS)  # the body says it too
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(payload))),
        (ERROR_SOURCE_HEADER, "llm-service"),
        *err.headers.items(),
    ]
    return err.status, headers, payload
