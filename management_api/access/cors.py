"""Which browser origins may call the service, judged the way Ollama judges them (no Flask).

Ollama (v0.20.5, gin-contrib/cors behind ``envconfig.AllowedOrigins``) refuses with 403 any
request whose ``Origin`` is neither the request's own origin (``http://`` or ``https://`` plus
its ``Host``) nor in its allowed set: ``OLLAMA_ORIGINS``, then ``http(s)://localhost``,
``127.0.0.1`` and ``0.0.0.0`` with or without any port, and ``app://``, ``file://``,
``tauri://``, ``vscode-webview://``, ``vscode-file://`` origins. The transport drops ``Origin``
before Ollama sees it, so this service applies the same rule itself (access/guard.py), with
``LLM_CORS_ORIGINS`` added to the set.

Entries are exact origins, ``*`` (any origin), or patterns with one ``*`` that matches any run
of characters (``https://*.example.com``, ``chrome-extension://*``). Credentials are never
allowed: this service never sends ``Access-Control-Allow-Credentials``.
"""

from __future__ import annotations

from collections.abc import Iterable

from management_api.settings import SettingsError

ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-ID"
EXPOSED_HEADERS = "X-Request-ID, X-Queue-Wait-Ms, Retry-After"
MAX_AGE_SECONDS = "600"


def ollama_default_origins() -> tuple[str, ...]:
    """The origins Ollama allows without configuration (envconfig.AllowedOrigins)."""
    origins: list[str] = []
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return tuple(origins)


def _normal(origin: str) -> str:
    """Lowercased, without a trailing ``/`` (``http://dash:3001/``) — but ``file://`` stays."""
    origin = origin.strip().lower()
    return origin[:-1] if origin.endswith("/") and not origin.endswith("://") else origin


def is_same_origin(origin: str, host: str | None) -> bool:
    """A page's own origin is no cross-site request (a browser adds Origin to same-origin
    POSTs too); compared as Ollama's CORS layer does, plus case-insensitively."""
    if not host:
        return False
    origin, host = origin.lower(), host.lower()
    return origin in (f"http://{host}", f"https://{host}")


class CorsPolicy:
    """The allowed origins: ``configured`` (LLM_CORS_ORIGINS), then ``ollama_origins``
    (OLLAMA_ORIGINS) and, unless ``ollama_defaults`` is false, Ollama's built-in ones."""

    def __init__(
        self,
        configured: Iterable[str],
        ollama_origins: Iterable[str] = (),
        *,
        ollama_defaults: bool = True,
    ) -> None:
        entries = [*configured, *ollama_origins]
        if ollama_defaults:
            entries += ollama_default_origins()
        cleaned = {_normal(e) for e in entries if e.strip()}
        self.any_origin = "*" in cleaned
        exact: set[str] = set()
        patterns: set[tuple[str, str]] = set()
        for entry in cleaned - {"*"}:
            stars = entry.count("*")
            if stars == 0:
                exact.add(entry)
            elif stars == 1:
                prefix, _, suffix = entry.partition("*")
                patterns.add((prefix, suffix))
            else:
                raise SettingsError(
                    f"the allowed origin {entry!r} is invalid: expected at most one '*' "
                    "(LLM_CORS_ORIGINS, OLLAMA_ORIGINS)"
                )
        self.origins = frozenset(exact)
        self._patterns = tuple(sorted(patterns))

    def allows(self, origin: str | None) -> bool:
        if not origin:
            return False
        if self.any_origin:
            return True
        origin = _normal(origin)
        if origin in self.origins:
            return True
        return any(
            len(origin) >= len(prefix) + len(suffix)
            and origin.startswith(prefix)
            and origin.endswith(suffix)
            for prefix, suffix in self._patterns
        )

    def response_headers(self, origin: str) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": "*" if self.any_origin else origin,
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Vary": "Origin",
        }

    def preflight_headers(self, origin: str, requested_headers: str | None) -> dict[str, str]:
        headers = self.response_headers(origin)
        headers.update(
            {
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": requested_headers or DEFAULT_ALLOWED_HEADERS,
                "Access-Control-Max-Age": MAX_AGE_SECONDS,
            }
        )
        return headers
