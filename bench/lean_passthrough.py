"""The yardstick for `make bench`: the lean Flask pass-through of proxy-practice.md §8.

Flask + urllib3 (``PoolManager``, ``preload_content=False``) under gunicorn gthread with one
worker: no admission, no access rules, no logging. On the reference VM it added +0.89 ms p50 to
a small generate; the issue's "≤ 1 ms" target was set against it. Machines differ by a factor of
two or three in what any Python pass-through costs, so the bench runs this one beside ours, in
the same run, and reports both.

    gunicorn -k gthread --threads 64 -w 1 bench.lean_passthrough:app   (UPSTREAM_URL=...)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import urllib3
from flask import Flask, Response, request

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:11434")
_pool = urllib3.PoolManager(maxsize=64, timeout=urllib3.Timeout(connect=5, read=600))
app = Flask(__name__)


@app.route("/api/<path:rest>", methods=["GET", "POST"])
def forward(rest: str) -> Response:
    upstream = _pool.request(
        request.method,
        f"{UPSTREAM}/api/{rest}",
        body=request.get_data(),
        headers={"Content-Type": request.content_type or "application/json"},
        preload_content=False,
        retries=False,
    )

    def body() -> Iterator[bytes]:
        try:
            yield from upstream.stream(65536)
        finally:
            upstream.release_conn()

    return Response(body(), status=upstream.status,
                    content_type=upstream.headers.get("Content-Type"))  # fmt: skip
