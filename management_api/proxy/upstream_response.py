"""Reading one HTTP/1.1 response from Ollama off a plain socket.

`http.client.HTTPResponse` parses headers with the ``email`` package and reads through a
buffered file object; on the proxy's hot path that cost about a quarter of a millisecond per
request. This reader does only what a pass-through needs: the status line, the header list,
the body framing (Content-Length, chunked, or until close) and ``read1``, which returns body
bytes as soon as any have arrived, so streamed chunks are forwarded with their own cadence.

Timeouts come from the socket (``settimeout``); a timeout surfaces as ``TimeoutError``.
"""

from __future__ import annotations

import socket

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE_BYTES = 4096
RECV_BYTES = 65536
_NO_BODY_STATUSES = frozenset({204, 304})


class ProtocolError(Exception):
    """Ollama sent something that is not a well-formed HTTP/1.1 response, or stopped early."""


class UpstreamResponse:
    """The response on `sock`; call `read_head` once, then `read1` until it returns b""."""

    def __init__(self, sock: socket.socket, *, method: str = "GET") -> None:
        self._sock = sock
        self._method = method
        self._buffer = bytearray()
        self.status = 0
        self.reason = ""
        self.version = ""
        self.headers: list[tuple[str, str]] = []
        self._lookup: dict[str, str] = {}
        self.chunked = False
        self.length: int | None = None  # remaining body bytes when framed by Content-Length
        self.will_close = False
        self.complete = False  # the whole body has been read
        self._chunk_left = 0  # data bytes left in the current chunk
        self._chunk_crlf = False  # the current chunk's data is read; its CRLF is not

    # --- head

    def header(self, name: str) -> str | None:
        """The value of a header (the last one, if repeated); `name` in lower case."""
        return self._lookup.get(name)

    def read_head(self) -> None:
        while True:
            end = self._fill_until(b"\r\n\r\n", MAX_HEAD_BYTES, "response head")
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._parse_head(head.decode("latin-1"))
            # 1xx interim responses (100 Continue, 103 Early Hints) precede the real one.
            if not 100 <= self.status < 200 or self.status == 101:
                break
        self._set_framing()

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3:
            raise ProtocolError("malformed status line")
        try:
            status = int(parts[1])
        except ValueError:
            raise ProtocolError("malformed status line") from None
        if not 100 <= status <= 999:
            raise ProtocolError("malformed status line")
        if len(lines) - 1 > MAX_HEADERS:
            raise ProtocolError("too many headers")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError("malformed header line")
            headers.append((name, value.strip()))
        self.version, self.status = parts[0], status
        self.reason = parts[2] if len(parts) > 2 else ""
        self.headers = headers
        self._lookup = {name.lower(): value for name, value in headers}

    def _set_framing(self) -> None:
        connection = {t.strip() for t in (self.header("connection") or "").lower().split(",")}
        self.will_close = "close" in connection or (
            self.version == "HTTP/1.0" and "keep-alive" not in connection
        )
        if self._method == "HEAD" or self.status in _NO_BODY_STATUSES or self.status < 200:
            self.length = 0
        elif "chunked" in (self.header("transfer-encoding") or "").lower():
            self.chunked = True
        elif (declared := self.header("content-length")) is not None:
            if not declared.isdigit():
                raise ProtocolError("malformed Content-Length")
            self.length = int(declared)
        else:
            self.will_close = True  # the body ends when Ollama closes the connection
        if self.length == 0:
            self.complete = True

    # --- body

    def read1(self, limit: int = RECV_BYTES) -> bytes:
        """Up to `limit` body bytes: what is buffered, else one receive. b"" at the end."""
        if self.complete:
            return b""
        if self.chunked:
            return self._read_chunked(limit)
        if self.length is None:  # until close
            data = self._take(limit) or self._sock.recv(limit)
            if not data:
                self.complete = True
            return data
        data = self._take(min(limit, self.length)) or self._sock.recv(min(limit, self.length))
        if not data:
            raise ProtocolError("connection closed before the end of the body")
        self.length -= len(data)
        if self.length == 0:
            self.complete = True
        return data

    def _read_chunked(self, limit: int) -> bytes:
        # Gather every chunk already buffered (an upstream write often carries several), and
        # block for more only while nothing has been gathered.
        out = bytearray()
        while len(out) < limit and not self.complete:
            if self._chunk_left == 0:
                if not self._buffer and out:
                    break
                if not self._next_chunk(blocking=not out):
                    break
                continue
            if not self._buffer:
                if out:
                    break
                self._recv_more("chunk")
            data = self._take(min(self._chunk_left, limit - len(out)))
            out += data
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                self._chunk_crlf = True
        return bytes(out)

    def _next_chunk(self, *, blocking: bool) -> bool:
        """Consume the previous chunk's CRLF and the next size line; False if that would block."""
        if self._chunk_crlf:
            if not blocking and len(self._buffer) < 2:
                return False
            self._fill_to(2, "chunk end")
            if self._buffer[:2] != b"\r\n":
                raise ProtocolError("malformed chunk end")
            del self._buffer[:2]
            self._chunk_crlf = False
        if not blocking and b"\r\n" not in self._buffer:
            return False
        end = self._fill_until(b"\r\n", MAX_CHUNK_LINE_BYTES, "chunk size")
        size_text = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
        del self._buffer[: end + 2]
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError("malformed chunk size") from None
        if size < 0:
            raise ProtocolError("malformed chunk size")
        if size == 0:
            self._read_trailers()
            self.complete = True
        self._chunk_left = size
        return True

    def _read_trailers(self) -> None:
        while True:
            end = self._fill_until(b"\r\n", MAX_HEAD_BYTES, "trailer")
            del self._buffer[: end + 2]
            if end == 0:
                return

    # --- buffer

    def _take(self, limit: int) -> bytes:
        if not self._buffer:
            return b""
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return data

    def _recv_more(self, what: str) -> None:
        data = self._sock.recv(RECV_BYTES)
        if not data:
            raise ProtocolError(f"connection closed while reading the {what}")
        self._buffer += data

    def _fill_until(self, marker: bytes, max_bytes: int, what: str) -> int:
        """Index of `marker` in the buffer, receiving until it is there."""
        start = 0
        while True:
            index = self._buffer.find(marker, start)
            if index > max_bytes or (index == -1 and len(self._buffer) > max_bytes):
                raise ProtocolError(f"{what} too long")
            if index != -1:
                return index
            start = max(0, len(self._buffer) - len(marker) + 1)
            self._recv_more(what)

    def _fill_to(self, size: int, what: str) -> None:
        while len(self._buffer) < size:
            self._recv_more(what)

    @property
    def buffered(self) -> bool:
        """Bytes have been received that `read1` has not returned yet (select won't see them)."""
        return bool(self._buffer)

    @property
    def leftover(self) -> bool:
        """Bytes beyond this response were received (the connection cannot be reused)."""
        return bool(self._buffer)
