"""Glue between Flask and the gateway: turn the current request into a forwarded response.

A target Ollama would read otherwise than we matched it (a decoded ``?``, ``#`` or control
character, a path Go cleans or redirects; proxy/target.py) is refused with 400 here, before
anything is sent: keys, limits and the cache were judged on the path as we read it.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, current_app, g, request

from management_api import errors
from management_api.proxy import early_headers, target
from management_api.proxy.gateway import ClientRequest
from management_api.proxy.priority import DEFAULT_POLICY
from management_api.proxy.transport import CLIENT_CLOSED_STATUS, ClientGone, ClientWatch

# Blob uploads carry whole GGUF files: streamed to Ollama, never held in memory, not capped.
BLOB_PREFIX = "/api/blobs/"
UPLOAD_CHUNK_BYTES = 1024 * 1024


def _stream_upload() -> Iterator[bytes]:
    stream = request.stream
    while True:
        chunk = stream.read(UPLOAD_CHUNK_BYTES)
        if not chunk:
            return
        yield chunk


def forward_current_request(flavor: str) -> Response:
    refused = target.problem(request.environ.get("PATH_INFO", request.path))
    if refused is not None:
        raise errors.BadRequest(refused, type="invalid_path")
    services = current_app.extensions["llm_service"]
    headers = list(request.headers.items())
    streamed_body = None
    if request.path.startswith(BLOB_PREFIX) and request.method == "POST":
        request.max_content_length = None
        body = b""
        if request.content_length:
            streamed_body = _stream_upload()
    else:
        body = request.get_data(cache=False)  # MAX_CONTENT_LENGTH applies: 413 past the cap
    g.proxied = True  # the gateway writes this request's access-log line
    key = getattr(g, "key", None)
    client_request = ClientRequest(
        method=request.method,
        path=request.path,
        query=request.query_string.decode("latin-1"),
        headers=headers,
        body=body,
        streamed_body=streamed_body,
        content_length=request.content_length,
        watch=ClientWatch.from_environ(request.environ),
        request_id=g.request_id,
        flavor=flavor,
        remote_addr=request.remote_addr,
        key_name=key.name if key else None,
        policy=key.policy if key else DEFAULT_POLICY,
        caller=g.caller,
    )
    try:
        forwarded = early_headers.forward(services.gateway, client_request)
    except ClientGone:
        return Response(b"", status=CLIENT_CLOSED_STATUS)
    try:
        # Not direct_passthrough: Werkzeug then wraps the body so that closing it also runs
        # the response's close callbacks (access.py gives the API key's place back there).
        response = Response(forwarded.body, status=forwarded.status, headers=forwarded.headers)
    except BaseException:
        close = getattr(forwarded.body, "close", None)
        if close is not None:
            close()  # the slot goes with the body: never leave it held
        raise
    if not forwarded.has_content_type:
        response.headers.pop("Content-Type", None)
    return response
