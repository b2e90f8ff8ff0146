"""The page's static files: a fixed list, read once from the package, served with an ETag.

Only the names listed here are served (no path from the request ever reaches the file
system). Everything is loaded on first use and kept in memory: the whole page is < 150 KB.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    content_type: str
    etag: str


_cache: dict[str, Asset] = {}
_lock = threading.Lock()


def asset(name: str) -> Asset | None:
    """The named file of the page, or None when it is not one of them."""
    content_type = CONTENT_TYPES.get(name)
    if content_type is None:
        return None
    with _lock:
        found = _cache.get(name)
        if found is None:
            body = (STATIC_DIR / name).read_bytes()
            found = Asset(name, body, content_type, hashlib.sha256(body).hexdigest()[:32])
            _cache[name] = found
        return found


def page_weight() -> int:
    """Bytes of every file the page loads (what the 150 KB budget counts)."""
    return sum(len(a.body) for a in map(asset, CONTENT_TYPES) if a is not None)
