"""The outermost WSGI layer: refuse cross-site and rebound requests before anything else runs.

Ollama protects itself from web pages with two checks on every request (server/routes.go):
an ``Origin`` outside its allowed set gets 403, preflight or not, and so does a ``Host`` that
names a public site (DNS rebinding). The transport drops both headers when forwarding, so
Ollama's checks see nothing; this layer applies them instead, in front of the inference fast
path and Flask alike, on both ports, before the API key is even looked at: a forged request
must not pull a model with auth off, nor make a keyed request on a browser's behalf.

Callers without a browser send no ``Origin`` (curl, the SDKs, n8n, the self-healing engine)
and pass; so do same-origin requests of the status page, whatever Host the operator uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from management_api import errors
from management_api.access import hooks
from management_api.access.cors import CorsPolicy, is_same_origin
from management_api.access.hosts import HostPolicy

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def refusal(cors: CorsPolicy, hosts: HostPolicy, origin: str | None, host: str | None) -> str:
    """Why a request must be refused ('' when it may go on). Origin first, like Ollama."""
    if origin and not is_same_origin(origin, host) and not cors.allows(origin):
        return "origin"
    if not hosts.allows(host):
        return "host"
    return ""


class BrowserGuard:
    """WSGI middleware: 403 for a disallowed Origin or Host, everything else to `app`."""

    def __init__(self, app: WSGIApp, *, cors: CorsPolicy, hosts: HostPolicy) -> None:
        self.app = app
        self._cors = cors
        self._hosts = hosts

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        why = refusal(self._cors, self._hosts, environ.get("HTTP_ORIGIN"),
                      environ.get("HTTP_HOST"))  # fmt: skip
        if not why:
            return self.app(environ, start_response)
        return self._refuse(environ, start_response, why)

    def _refuse(
        self, environ: dict[str, Any], start_response: Callable[..., Any], why: str
    ) -> Iterable[bytes]:
        started = time.monotonic()
        path = environ.get("PATH_INFO", "")
        request_id = hooks.request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        if why == "origin":
            err = errors.Forbidden(
                "this origin is not allowed (LLM_CORS_ORIGINS, OLLAMA_ORIGINS)",
                type="cors_forbidden",
            )
        else:
            err = errors.Forbidden(
                "this Host is not allowed: a public name needs LLM_ALLOWED_HOSTS",
                type="host_forbidden",
            )
        status, headers, body = errors.render_error(err, errors.flavor_for_path(path))
        headers = [*headers, (hooks.REQUEST_ID_HEADER, request_id)]
        start_response(f"{status} FORBIDDEN", headers)
        hooks.log_request(request_id=request_id, remote_addr=environ.get("REMOTE_ADDR"),
                          method=environ.get("REQUEST_METHOD", ""), path=path, key=None,
                          status=status, started=started)  # fmt: skip
        return [body]
