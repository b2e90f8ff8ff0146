"""The HTTP server: gin-like routing, Host/Origin checks, dispatch to the handlers.

One catch-all aiohttp route hands every request to ``Emulator.handle``, which does
what gin does in front of Ollama's handlers: 404 ``404 page not found`` and 405
``405 method not allowed`` as ``text/plain``, trailing-slash redirects, and (with
``loopback_checks``) the CORS and allowed-hosts middlewares.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from . import control_routes, embedding, inference, management, openai_layer
from .bodies import BodyError, load_json
from .config import Settings
from .control import GENERIC_FAULTS, PULL_FAULTS, RECORDED_HEADERS, ConnectionRecord
from .errors import ApiError, StreamInterrupted
from .exchange import Exchange, PendingErrorLine, peer_port, socket_nodelay
from .names import parse_name
from .state import EmulatorState

Handler = Callable[..., Awaitable[web.StreamResponse]]
_EMPTY_BODY = object()
# Loop turns a FIN waits for the handler of an already read request to start (it takes one).
_HANDLER_START_TURNS = 20


@dataclass(frozen=True)
class Route:
    handler: Handler
    body: bool = True  # the handler takes the decoded JSON body
    openai: bool = False
    pulls: bool = False  # pull faults apply
    raw_body: bool = False  # the handler reads the body itself


_R = Route
ROUTES: dict[str, dict[str, Route]] = {
    "/": {"GET": _R(management.root, body=False), "HEAD": _R(management.root, body=False)},
    "/api/version": {
        "GET": _R(management.version, body=False),
        "HEAD": _R(management.version, body=False),
    },
    "/api/status": {"GET": _R(management.status, body=False)},
    "/api/pull": {"POST": _R(management.pull, pulls=True)},
    "/api/push": {"POST": _R(management.push)},
    "/api/tags": {"GET": _R(management.tags, body=False), "HEAD": _R(management.tags, body=False)},
    "/api/show": {"POST": _R(management.show)},
    "/api/delete": {"DELETE": _R(management.delete)},
    "/api/me": {"POST": _R(management.whoami)},
    "/api/signout": {"POST": _R(management.signout)},
    "/api/create": {"POST": _R(management.create, pulls=True)},
    "/api/copy": {"POST": _R(management.copy)},
    "/api/experimental/web_search": {"POST": _R(management.not_emulated)},
    "/api/experimental/web_fetch": {"POST": _R(management.not_emulated)},
    "/api/ps": {"GET": _R(management.ps, body=False)},
    "/api/generate": {"POST": _R(inference.generate)},
    "/api/chat": {"POST": _R(inference.chat)},
    "/api/embed": {"POST": _R(embedding.embed)},
    "/api/embeddings": {"POST": _R(embedding.embeddings)},
    "/v1/chat/completions": {"POST": _R(openai_layer.chat_completions, openai=True)},
    "/v1/completions": {"POST": _R(openai_layer.completions, openai=True)},
    "/v1/embeddings": {"POST": _R(openai_layer.embeddings, openai=True)},
    "/v1/models": {"GET": _R(openai_layer.list_models, body=False, openai=True)},
    "/v1/responses": {"POST": _R(management.not_emulated, openai=True)},
    "/v1/images/generations": {"POST": _R(management.not_emulated, openai=True)},
    "/v1/images/edits": {"POST": _R(management.not_emulated, openai=True)},
    "/v1/audio/transcriptions": {"POST": _R(management.not_emulated, openai=True)},
    "/v1/messages": {"POST": _R(management.not_emulated)},
}
# Routes with one ":param" segment at the end: prefix -> methods.
PARAM_ROUTES: dict[str, tuple[str, dict[str, Route]]] = {
    "/api/blobs/": (
        "/api/blobs/:digest",
        {
            "POST": _R(management.create_blob, body=False, raw_body=True),
            "HEAD": _R(management.head_blob, body=False),
        },
    ),
    "/v1/models/": (
        "/v1/models/:model",
        {"GET": _R(openai_layer.retrieve_model, body=False, openai=True)},
    ),
    "/api/user/keys/": ("/api/user/keys/:encodedKey", {"DELETE": _R(management.signout)}),
}


def _methods_for(path: str) -> tuple[str, dict[str, Route], str | None] | None:
    """(label, methods, param) for a path, or None when no route has this path."""
    methods = ROUTES.get(path)
    if methods is not None:
        return path, methods, None
    for prefix, (label, param_methods) in PARAM_ROUTES.items():
        if path.startswith(prefix):
            param = path[len(prefix) :]
            if param and "/" not in param:
                return label, param_methods, param
    return None


# --- Host and Origin checks (allowedHostsMiddleware, gin-contrib/cors) -----------------------

_CORS_HEADERS = "Authorization,Content-Type,User-Agent,Accept,X-Requested-With"
_PRIVATE_NETS = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]
_EXTENSION_SCHEMES = (
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


def _local_addresses() -> set[str]:
    addresses = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addresses.add(str(info[4][0]))
    except OSError:
        pass
    return addresses


_LOCAL_ADDRESSES = _local_addresses()


def _split_host(host: str) -> str:
    """``net.SplitHostPort``, falling back to the whole header when it fails."""
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        return inside if rest.startswith(":") else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def host_allowed(host_header: str) -> bool:
    host = _split_host(host_header)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and (
        ip.is_loopback
        or ip.is_unspecified
        or any(ip in net for net in _PRIVATE_NETS if net.version == ip.version)
        or str(ip) in _LOCAL_ADDRESSES
    ):
        return True
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return any(host.endswith(suffix) for suffix in (".localhost", ".local", ".internal"))


def allowed_origins(extra: tuple[str, ...]) -> list[str]:
    origins = list(extra)
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return origins


def origin_allowed(origin: str, patterns: list[str]) -> bool:
    if origin.startswith(_EXTENSION_SCHEMES):
        return True
    for pattern in patterns:
        if pattern == "*" or pattern == origin:
            return True
        if "*" in pattern:
            prefix, _, suffix = pattern.partition("*")
            if (
                len(origin) >= len(prefix) + len(suffix)
                and origin.startswith(prefix)
                and origin.endswith(suffix)
            ):
                return True
    return False


# --- the emulator ------------------------------------------------------------------------------


class Emulator:
    def __init__(self, settings: Settings) -> None:
        self.base_settings = settings
        self.state = EmulatorState(settings.copy())

    def reset(self) -> None:
        self.state.close()
        self.state = EmulatorState(self.base_settings.copy())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            return await control_routes.handle(self, request)
        state = self.state
        method, path = request.method, request.path
        found = _methods_for(path)
        label = found[0] if found else path
        headers = {
            name: request.headers[name] for name in RECORDED_HEADERS if name in request.headers
        }
        record = state.obs.open(method, path, label, headers)
        record.peer = peer_port(request)
        record.nodelay = socket_nodelay(request)
        try:
            if state.settings.loopback_checks:
                refused = self._check_origin_and_host(request, state)
                if refused is not None:
                    record.status = refused.status
                    record.close("error" if refused.status >= 400 else "completed")
                    return refused
            route = found[1].get(method) if found else None
            if route is None:
                return self._gin_miss(request, record, found is not None)
            return await self._serve(state, request, record, route, found[2], label)
        except asyncio.CancelledError:
            record.close("client_closed")
            raise
        except ConnectionError:
            # A write hit a closed socket; aiohttp drops the placeholder quietly.
            record.close("client_closed")
            return web.Response()

    async def _serve(
        self,
        state: EmulatorState,
        request: web.Request,
        record: ConnectionRecord,
        route: Route,
        param: str | None,
        label: str,
    ) -> web.StreamResponse:
        started = record.opened_at
        value: Any = None
        body_error: BodyError | None = None
        model_text: str | None = param if route.openai and param else None
        if route.body:
            raw = await request.read()
            try:
                value = load_json(raw)
            except BodyError as exc:
                body_error = exc
                if not raw.strip():
                    # gin sees io.EOF; the OpenAI middleware reports it as "EOF".
                    body_error = BodyError("EOF") if route.openai else exc
            if isinstance(value, dict):
                candidate = value.get("model") or value.get("name") or value.get("source")
                model_text = candidate if isinstance(candidate, str) else None
        model_key = None
        if model_text:
            name = parse_name(model_text.strip())
            model_key = name.key
            record.model = name.display
        kinds = GENERIC_FAULTS + (PULL_FAULTS if route.pulls else ())
        faults = state.faults.take((record.path, label), model_key, kinds)
        ex = Exchange(request, record, faults, started)
        if route.openai:
            ex.envelope = openai_layer.envelope
            ex.error_line = openai_layer.sse_error_line
        try:
            try:
                if "hang" in faults:
                    await ex.hang()
                status_fault = faults.get("status")
                if status_fault is not None:
                    raise ApiError(status_fault.params["status"], status_fault.params["message"])
                if body_error is not None:
                    raise body_error
                if route.body:
                    return await route.handler(state, ex, value)
                if param is not None:
                    return await route.handler(state, ex, param)
                return await route.handler(state, ex)
            except ApiError as exc:
                return await ex.error(exc)
            except PendingErrorLine as pending:
                return await ex.send_error_line(pending.message)
        except StreamInterrupted:
            return ex.response if ex.response is not None else web.Response()
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            if ex.response is not None:
                return ex.response
            return await ex.error(ApiError(500, f"emulator error: {exc}"))

    def _gin_miss(
        self, request: web.Request, record: ConnectionRecord, path_known: bool
    ) -> web.StreamResponse:
        path = request.path
        if not path_known and path != "/" and request.method != "CONNECT":
            other = path[:-1] if path.endswith("/") else path + "/"
            if other in ROUTES and request.method in ROUTES[other]:
                return self._redirect(request, record, other)
        if path_known:
            record.status = 405
            record.close("error")
            return web.Response(
                status=405, body=b"405 method not allowed", headers={"Content-Type": "text/plain"}
            )
        record.status = 404
        record.close("error")
        return web.Response(
            status=404, body=b"404 page not found", headers={"Content-Type": "text/plain"}
        )

    def _redirect(
        self, request: web.Request, record: ConnectionRecord, target: str
    ) -> web.StreamResponse:
        status = 301 if request.method == "GET" else 307
        record.status = status
        record.close("completed")
        headers = {"Location": target}
        body = b""
        if request.method in ("GET", "HEAD"):
            headers["Content-Type"] = "text/html; charset=utf-8"
            body = f'<a href="{target}">Moved Permanently</a>.\n\n'.encode()
        return web.Response(status=status, body=body, headers=headers)

    def _check_origin_and_host(
        self, request: web.Request, state: EmulatorState
    ) -> web.Response | None:
        host = request.headers.get("Host", "")
        origin = request.headers.get("Origin")
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not origin_allowed(origin, allowed_origins(state.settings.extra_origins)):
                return web.Response(status=403)
            request["cors_origin"] = origin
            if request.method == "OPTIONS":
                return web.Response(
                    status=204,
                    headers={
                        "Access-Control-Allow-Origin": origin,
                        "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
                        "Access-Control-Allow-Headers": _CORS_HEADERS,
                        "Access-Control-Max-Age": "43200",
                        "Vary": "Origin",
                    },
                )
        if not host_allowed(host):
            return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response(status=204)
        return None


async def _finalize_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Go's net/http sends no Server header; aiohttp adds one by default.
    response.headers.popall("Server", None)
    origin = request.get("cors_origin")
    if origin and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


class _GoConnection(RequestHandler):
    """A connection that closes the way Go's net/http server does.

    When the client half-closes (``shutdown(SHUT_WR)``) during a request, Go's background read
    sees EOF and cancels the request's context; the handler keeps running until it notices, and
    the connection is closed only after it returned. asyncio would instead close the socket at
    once and cancel the handler afterwards, so a proxy waiting for the close would hear it
    before the emulator had stopped working on the request.
    """

    def eof_received(self) -> bool | None:
        task = self._task_handler
        if task is not None and not task.done() and not self._idle():
            # A request was read and is being (or about to be) handled: the FIN can arrive
            # before its handler task has even started, and must not close the socket then.
            self._cancel_once_handling(task, turns_left=_HANDLER_START_TURNS)
            return True  # keep the half-open connection until the handler ended
        return None  # idle keep-alive connection: close now

    def _idle(self) -> bool:
        waiting = self._waiter  # set while the connection waits for its next request
        return waiting is not None and not waiting.done() and not self._messages

    def _cancel_once_handling(self, task: asyncio.Task, turns_left: int) -> None:
        # Go calls the handler of every request it has read, FIN or not; the handler then
        # finds its context cancelled. Before Python 3.12 aiohttp starts the handler as a task
        # of its own one loop turn later, and a cancel in that turn would drop the request
        # unseen. So wait (a few turns at most) until the handler runs, then cancel it.
        if task.done():
            return
        if self._request_in_progress or self._idle() or turns_left <= 0:
            task.cancel()  # aiohttp's force_close() closes the transport once the handler ended
            return
        self._loop.call_soon(self._cancel_once_handling, task, turns_left - 1)


class _GoServer(Server):
    def __call__(self) -> RequestHandler:
        return _GoConnection(self, loop=self._loop, **self._kwargs)


class _GoRunner(web.AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _GoServer  # same state, one method replaced
        return server


def build_app(emulator: Emulator) -> web.Application:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", emulator.handle)
    app.on_response_prepare.append(_finalize_headers)
    return app


async def start(settings: Settings) -> tuple[web.AppRunner, Emulator, int]:
    """Start listening; returns the runner (for cleanup), the emulator and the real port."""
    emulator = Emulator(settings)
    runner = _GoRunner(
        build_app(emulator),
        handler_cancellation=True,  # a client disconnect cancels its handler at once
        access_log=None,
        keepalive_timeout=3600.0,  # Go servers keep idle connections open
        shutdown_timeout=0.5,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]
    return runner, emulator, port
