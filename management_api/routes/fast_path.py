"""The inference routes' way around Flask: a WSGI layer in front of the Flask app.

Generate, chat, embed and their OpenAI-compatible twins are the hot path of the proxy, and for
them Flask only builds a request context, matches a catch-all route, runs the access hooks and
wraps the gateway's body in a Response object. On a small non-streamed generate that framework
work was about a third of the CPU the proxy adds. This layer answers a ``POST`` to one of those
exact paths itself, with the same access rules (access/hooks.py), the same gateway and the
same error renderings, so a caller cannot tell which path served it. Everything else goes to Flask,
including inference requests whose body has no Content-Length (chunked uploads: Flask's path
bounds them) — a test checks that Flask would route each fast path to the same forwarder.

Its paths are exact, so they are clean targets that Ollama reads alike (proxy/target.py); the
Flask path checks every other target it forwards (routes/forwarding.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.datastructures import EnvironHeaders
from werkzeug.http import HTTP_STATUS_CODES

from management_api import errors
from management_api.access import hooks
from management_api.access.auth import ApiKey, KeyRing
from management_api.access.cors import CorsPolicy
from management_api.proxy import early_headers
from management_api.proxy.gateway import ClientRequest, Gateway
from management_api.proxy.inference import INFERENCE_ROUTES
from management_api.proxy.priority import DEFAULT_POLICY
from management_api.proxy.transport import CLIENT_CLOSED_STATUS, ClientGone, ClientWatch

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_NO_BODY_STATUSES = frozenset({204, 304})


def status_line(status: int) -> str:
    """The status line Werkzeug would write, so both paths answer identically."""
    return f"{status} {HTTP_STATUS_CODES.get(status, 'unknown').upper()}"


class _Body:
    """The gateway's body, plus giving the key's concurrency place back when it closes."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


class InferenceFastPath:
    """WSGI middleware: serves ``POST`` to the inference routes, hands the rest to `app`."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        gateway: Gateway,
        keyring: KeyRing,
        cors: CorsPolicy,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self._gateway = gateway
        self._keyring = keyring
        self._cors = cors
        self._max_body = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        length = environ.get("CONTENT_LENGTH") or ""
        if (
            path not in INFERENCE_ROUTES
            or environ.get("REQUEST_METHOD") != "POST"
            or not length.isdigit()
        ):
            return self.app(environ, start_response)
        return self._serve(environ, start_response, path, int(length))

    def _serve(
        self, environ: dict[str, Any], start_response: Callable[..., Any], path: str, length: int
    ) -> Iterable[bytes]:
        started = time.monotonic()
        request_id = hooks.request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        flavor = errors.flavor_for_path(path)
        remote_addr = environ.get("REMOTE_ADDR")
        key: ApiKey | None = None
        caller: str | None = None
        place: ApiKey | None = None
        proxied = False  # once the gateway has the request, it writes the access-log line
        try:
            key = hooks.authorize_caller(
                self._keyring,
                "POST",
                path,
                environ.get("HTTP_AUTHORIZATION"),
                environ.get("HTTP_X_API_KEY"),
            )
            caller = hooks.caller_name(self._keyring, key, environ.get("HTTP_X_LLM_CALLER"))
            place = hooks.take_key_place(self._keyring, key, path)
            if length > self._max_body:
                raise errors.PayloadTooLarge()  # answered without reading the body
            body = environ["wsgi.input"].read(length) if length else b""
            if len(body) < length:
                raise errors.BadRequest("malformed request")  # the client stopped sending
            client_request = ClientRequest(
                method="POST",
                path=path,
                query=environ.get("QUERY_STRING", ""),
                headers=list(EnvironHeaders(environ)),  # as Flask's request.headers
                body=body,
                content_length=length,
                watch=ClientWatch.from_environ(environ),
                request_id=request_id,
                flavor=flavor,
                remote_addr=remote_addr,
                key_name=key.name if key else None,
                policy=key.policy if key else DEFAULT_POLICY,
                caller=caller,
            )
            proxied = True
            forwarded = early_headers.forward(self._gateway, client_request)
            status, headers, payload = forwarded.status, forwarded.headers, forwarded.body
        except ClientGone:
            status, headers, payload = CLIENT_CLOSED_STATUS, [("Content-Length", "0")], [b""]
        except errors.ApiError as err:
            status, headers, body_bytes = errors.render_error(err, flavor)
            payload = [body_bytes]
        except Exception:
            log.exception("unhandled error on POST %s (request %s)", path, request_id)
            status, headers, body_bytes = errors.render_error(
                errors.InternalError(request_id=request_id), flavor
            )
            payload = [body_bytes]
        except BaseException:
            if place is not None:
                self._keyring.release(place)
            raise

        def on_close() -> None:
            if place is not None:
                self._keyring.release(place)
            if not proxied:
                hooks.log_request(request_id=request_id, remote_addr=remote_addr, method="POST",
                                   path=path, key=key, status=status, started=started,
                                   caller=caller)  # fmt: skip

        body_out = _Body(payload, on_close)
        try:
            headers = [
                *headers,
                *hooks.response_headers(self._cors, request_id, environ.get("HTTP_ORIGIN")),
            ]
            start_response(status_line(status), headers)
        except BaseException:
            body_out.close()
            raise
        if status in _NO_BODY_STATUSES:
            body_out.close()
            return []
        return body_out
