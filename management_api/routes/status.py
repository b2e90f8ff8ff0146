"""The status page: ``GET /api/status`` (the one snapshot, with ETag) and ``GET /ui/`` (files).

Both are served on the management port only. On the proxy port the page answers 404, so the
port that existing Ollama clients use shows nothing new, and ``GET /api/status`` is Ollama's own
route (its cloud status), passed through like every other Ollama route. The page's files carry
no data and need no key (a browser cannot send one for a page load); the snapshot needs whatever
the API's access rules say for a read, and the page's actions go to the existing routes with the
caller's key.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, request
from flask.typing import ResponseReturnValue

from management_api import errors
from management_api.access.auth import ADMIN, OFF
from management_api.routes.forwarding import forward_current_request
from management_api.status import asset, render

bp = Blueprint("status", __name__)

# Everything the page loads comes from this service: the header proves it to the browser.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _services() -> Any:
    return current_app.extensions["llm_service"]


def _on_proxy_port() -> bool:
    settings = _services().settings
    # SERVER_PORT is the port of the socket the request arrived on (gunicorn sets it from the
    # listener, not from the Host header), so a client cannot talk its way past this.
    return settings.proxy_enabled and request.environ.get("SERVER_PORT") == str(settings.proxy_port)


def _management_port_only() -> None:
    if _on_proxy_port():
        settings = _services().settings
        raise errors.NotFound(
            f"the status page is served on the management port ({settings.management_port})"
        )


def _matches(etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


def _conditional(body: bytes, etag: str, content_type: str, extra: dict[str, str]) -> Response:
    headers = {"ETag": etag, **extra}
    if _matches(etag):
        return Response(status=304, headers=headers)
    return Response(body, status=200, content_type=content_type, headers=headers)


@bp.get("/api/status")
def status() -> ResponseReturnValue:
    if _on_proxy_port():
        return forward_current_request(errors.OLLAMA)
    services = _services()
    keyring = current_app.extensions["llm_service_keys"]
    key = getattr(g, "key", None)
    access = {
        "mode": keyring.mode,
        "key": key.name if key is not None else None,
        "role": key.role if key is not None else None,
        # What the API will decide for the page's actions (all of them need the admin role).
        "can_act": keyring.mode == OFF or (key is not None and key.role == ADMIN),
    }
    shared = services.status.snapshot()
    if not access["can_act"]:  # who uses the service is for admins, as on /api/usage
        shared = {**shared, "callers": None}
    body, etag = render(shared, access)
    return _conditional(body, etag, "application/json", {"Cache-Control": "no-cache"})


@bp.get("/ui")
def page_without_slash() -> ResponseReturnValue:
    _management_port_only()
    return redirect("/ui/", code=308)


@bp.get("/ui/")
def page() -> ResponseReturnValue:
    return page_file("index.html")


@bp.get("/ui/<name>")
def page_file(name: str) -> ResponseReturnValue:
    _management_port_only()
    found = asset(name)
    if found is None:
        raise errors.NotFound("no such file of the status page")
    return _conditional(found.body, f'"{found.etag}"', found.content_type, PAGE_HEADERS)
