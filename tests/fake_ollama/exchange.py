"""One request/response exchange: rendering, streaming, faults and its record.

Streams follow Ollama's ``streamResponse``: status and headers leave together with the
first line (nothing is sent while the request queues, loads or evaluates the prompt),
each line is written and flushed on its own, an error before the first line becomes a
status + JSON body, an error after it becomes a last ``{"error": …}`` line.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .control import ConnectionRecord, Fault
from .errors import ApiError, StreamInterrupted

JSON_UTF8 = "application/json; charset=utf-8"
JSON_PLAIN = "application/json"
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"

_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_HTML_UNSAFE = re.compile("[<>&\u2028\u2029]")
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _go_escape(text: str) -> str:
    if _HTML_UNSAFE.search(text) is None:
        return text
    return _HTML_UNSAFE.sub(lambda m: _HTML_ESCAPES[m.group()], text)


def go_json(obj: Any) -> bytes:
    """Marshal like Go's ``encoding/json``: compact, UTF-8, HTML characters escaped."""
    return _go_escape(json.dumps(obj, ensure_ascii=False, separators=(",", ":"))).encode()


def go_str(text: str) -> bytes:
    """One JSON string exactly as ``go_json`` would write it (the per-token fast path)."""
    return _go_escape(_quote(text)).encode()


class _LineStream(web.StreamResponse):
    # Buffer the headers so they leave in the same write as the first line.
    _send_headers_immediately = False


def native_error_line(message: str) -> bytes:
    return go_json({"error": message}) + b"\n"


class Exchange:
    """Response helper for one request; applies the faults it was handed."""

    def __init__(
        self,
        request: web.Request,
        record: ConnectionRecord,
        faults: dict[str, Fault],
        started: float,
    ) -> None:
        self.request = request
        self.record = record
        self.faults = faults
        self.started = started
        self.response: web.StreamResponse | None = None
        self.stream_mode = False
        self.stream_type = NDJSON
        self.error_line: Callable[[str], bytes] = native_error_line
        # Set by the OpenAI layer: renders (status, message) as its error envelope.
        self.envelope: Callable[[int, str], bytes] | None = None
        if faults:
            record.fault = ",".join(sorted(faults))

    # -- plain responses ---------------------------------------------------------------

    async def reply(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        error_fault = self.faults.get("error_line")
        if error_fault is not None and status < 400:
            # A non-streamed request whose generation fails answers 500 + the error.
            return await self.error(ApiError(500, error_fault.params["message"]))
        if "drop_mid_stream" in self.faults:
            self.abort()
        await self._before_first_byte()
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        self.record.status = status
        self.record.close("completed" if status < 400 else self._error_outcome())
        return web.Response(status=status, body=body, headers=all_headers)

    async def json(
        self, obj: Any, status: int = 200, content_type: str = JSON_UTF8
    ) -> web.StreamResponse:
        return await self.reply(status, go_json(obj), content_type)

    async def error(self, exc: ApiError) -> web.StreamResponse:
        """Render an error: JSON before the stream started, an error line after."""
        if self.response is not None:
            await self._write(self.error_line(exc.message))
            self.record.close(self._error_outcome())
            return self.response
        if self.envelope is not None:
            return await self._plain_error(
                exc.status, self.envelope(exc.status, exc.message), JSON_PLAIN
            )
        content_type = JSON_PLAIN if self.stream_mode else JSON_UTF8
        return await self._plain_error(exc.status, go_json({"error": exc.message}), content_type)

    async def _plain_error(self, status: int, body: bytes, content_type: str) -> web.StreamResponse:
        if "drop_mid_stream" in self.faults:
            self.abort()
        await self._before_first_byte()
        self.record.status = status
        self.record.close(self._error_outcome())
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    def _error_outcome(self) -> str:
        return "fault" if {"status", "error_line"} & self.faults.keys() else "error"

    # -- streams -----------------------------------------------------------------------

    def begin_stream(self, content_type: str = NDJSON) -> None:
        """From here on errors before the first line are ``application/json`` (no charset)."""
        self.stream_mode = True
        self.stream_type = content_type

    async def line(self, data: bytes) -> None:
        """Send one stream line (or SSE frame), applying mid-stream faults."""
        self._check_faults()
        await self._write(data)
        self.record.lines += 1

    async def finish(self) -> web.StreamResponse:
        """End a stream normally; faults that did not fire yet fire now."""
        self._check_faults(at_end=True)
        assert self.response is not None
        await self.response.write_eof()
        self.record.close("completed")
        return self.response

    def _check_faults(self, at_end: bool = False) -> None:
        drop = self.faults.get("drop_mid_stream")
        if drop is not None and (at_end or self.record.lines >= drop.params["after_chunks"]):
            self.abort()
        failing = self.faults.get("error_line")
        if failing is not None and (at_end or self.record.lines >= failing.params["after_chunks"]):
            del self.faults["error_line"]
            raise PendingErrorLine(failing.params["message"])

    async def _write(self, data: bytes) -> None:
        if self.response is None:
            await self._before_first_byte()
            response = _LineStream(status=200, headers={"Content-Type": self.stream_type})
            self.record.status = 200
            await response.prepare(self.request)
            self.response = response
        await self.response.write(data)

    async def send_error_line(self, message: str) -> web.StreamResponse:
        await self._write(self.error_line(message))
        self.record.close(self._error_outcome())
        assert self.response is not None
        return self.response

    # -- faults ------------------------------------------------------------------------

    async def _before_first_byte(self) -> None:
        stall = self.faults.get("stall_first_byte")
        if stall is not None:
            delay = self.started + stall.params["seconds"] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if self.record.first_byte_at is None:
            self.record.first_byte_at = time.monotonic()

    def abort(self) -> None:
        """Cut the TCP connection without a terminating chunk."""
        self.record.close("fault")
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        raise StreamInterrupted

    async def hang(self) -> None:
        await asyncio.get_running_loop().create_future()


class PendingErrorLine(Exception):
    """Raised inside ``Exchange.line``; the dispatcher turns it into the error line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def socket_nodelay(request: web.Request) -> bool | None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except OSError:
        return None


def peer_port(request: web.Request) -> int | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[1] if isinstance(peer, tuple) and len(peer) >= 2 else None
