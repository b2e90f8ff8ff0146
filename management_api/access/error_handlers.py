"""The Flask app's error handlers: every error leaves as our JSON envelope, never as HTML.

Renders `errors.ApiError` (errors.py, which knows no Flask) in the protocol of the failing route,
maps werkzeug's HTTP exceptions onto it, and turns anything unexpected into a 500 that carries
the request id while the traceback goes to the log.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from management_api import errors

log = logging.getLogger(__name__)


def error_response(err: errors.ApiError, flavor: str | None = None) -> Response:
    if flavor is None:
        flavor = errors.flavor_for_path(request.path)
    status, headers, payload = errors.render_error(err, flavor)
    return Response(payload, status=status, headers=headers)


_HTTP_MESSAGES = {
    400: "malformed request",
    404: "no such route",
    405: "method not allowed for this route",
    413: "request body too large",
    415: "unsupported media type",
}


def _from_http_exception(exc: HTTPException) -> errors.ApiError:
    code = exc.code or 500
    if code == 404:
        return errors.NotFound(f"no route for {request.method} {request.path}")
    if code == 405:
        allowed = (
            ", ".join(sorted(exc.valid_methods or [])) if hasattr(exc, "valid_methods") else ""
        )
        headers = {"Allow": allowed} if allowed else None
        return errors.MethodNotAllowed(
            f"method {request.method} not allowed for {request.path}", headers=headers
        )
    if code == 413:
        return errors.PayloadTooLarge()
    if code == 400:
        return errors.BadRequest("malformed request")
    message = _HTTP_MESSAGES.get(code, "request failed")
    err = errors.ApiError(message, http_status=code, type="http_error")
    return err if code < 500 else errors.InternalError()


def init_app(app: Flask) -> None:
    """Register handlers so no error is ever rendered as HTML or leaks exception text."""

    @app.errorhandler(errors.ApiError)
    def handle_api_error(err: errors.ApiError) -> Response:
        return error_response(err)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Response:
        return error_response(_from_http_exception(exc))

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        request_id = getattr(g, "request_id", None)
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                      request_id)  # fmt: skip
        return error_response(errors.InternalError(request_id=request_id))
