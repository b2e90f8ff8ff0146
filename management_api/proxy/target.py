"""The request target: one reading of the path that routing, keys, admission and forwarding
share, and the targets refused because Ollama would read them otherwise (pure, no I/O).

gunicorn hands the app the percent-decoded path (``PATH_INFO``). Every decision is taken on
that decoded path, and the proxy forwards exactly it, re-encoded (`wire_path`), never the
decoded text itself: ``/api/pull%3F`` decodes to ``/api/pull?``, which Go would read as
``/api/pull`` with an empty query. A target the proxy would forward is refused with 400
(`problem`, checked in routes/forwarding.py; the fast path's exact paths pass it by
construction) when it has:

* a decoded path with ``?``, ``#``, a NUL or another control character: it cannot name a route
  and only serves to make two readers disagree;
* a path Go's ``http.ServeMux`` would clean (``//``, ``/./``, ``/../``, a trailing ``/.``): Ollama
  redirects it to another path than the one matched here;
* a trailing slash on one of Ollama's routes (``/api/generate/``): gin (RedirectTrailingSlash,
  its default) redirects it to the route without it.

Case is not folded: gin matches paths case-sensitively (RedirectFixedPath off), as Flask does, so
``/API/generate`` is a 404 on both sides. ``%2F`` decodes to ``/`` before either side matches
(gin's UseRawPath is off), so ``/api%2Fgenerate`` is ``/api/generate`` on both sides.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from management_api.proxy.inference import INFERENCE_ROUTES, OTHER_OLLAMA_ROUTES

# Characters Go's URL.EscapedPath leaves as they are (besides letters, digits and "-._~").
_PATH_SAFE = "/$&+,:;=@"
_CONTROL_OR_DELIMITER = re.compile(r"[\x00-\x1f\x7f?#]")
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9\-._~/$&+,:;=@]")
_OLLAMA_ROUTES = frozenset(INFERENCE_ROUTES) | OTHER_OLLAMA_ROUTES


def problem(path: str) -> str | None:
    """Why a decoded path is refused (400), or None when every reader agrees on it."""
    if _CONTROL_OR_DELIMITER.search(path):
        return "the request path contains '?', '#' or a control character once decoded"
    if not path.startswith("/") or path == "/":
        return None
    if "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
        return "the request path is not in its clean form (no '//', '/./' or '/../')"
    if path.endswith("/") and path.rstrip("/") in _OLLAMA_ROUTES:
        return f"the request path has a trailing slash; the route is {path.rstrip('/')}"
    return None


def wire_path(path: str) -> str:
    """The decoded path percent-encoded again, as sent upstream: Go decodes it to `path`."""
    if _NEEDS_QUOTING.search(path) is None:
        return path
    return quote(path, safe=_PATH_SAFE, encoding="utf-8", errors="surrogateescape")
