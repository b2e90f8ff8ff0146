"""CORS for browser callers (the dashboard): an explicit origin allowlist, no credentials.

``LLM_CORS_ORIGINS`` lists allowed origins (``http://localhost:3001,…``); empty means no
browser origin is allowed (the default). ``*`` allows any origin — never together with
credentials: this service never sends ``Access-Control-Allow-Credentials``.
"""

from __future__ import annotations

from collections.abc import Iterable

ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-ID"
EXPOSED_HEADERS = "X-Request-ID, X-Queue-Wait-Ms, Retry-After"
MAX_AGE_SECONDS = "600"


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        cleaned = {o.strip().rstrip("/") for o in origins if o.strip()}
        self.any_origin = "*" in cleaned
        self.origins = frozenset(cleaned - {"*"})

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        if not origin:
            return False
        return self.any_origin or origin.rstrip("/") in self.origins

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
