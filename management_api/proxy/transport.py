"""Streaming pass-through to Ollama: header hygiene, disconnect watch, bounded waits.

One `UpstreamExchange` is one request to Ollama. Its life:

1. ``send``: take a pooled connection (or open one, retrying connection-refused during the
   restart grace window while the client is still there) and send the request.
2. ``wait_for_headers``: Ollama sends nothing during queueing, model load and prompt evaluation,
   so a blocking read would leave us blind to a client that went away. One ``poll`` waits on
   the upstream socket, the client's socket and the exchange's wake-up fd together, so a client
   that leaves (or a cancel from another thread) is acted on at once, not at the next poll.
3. ``body``: a `ProxiedBody` iterable yields upstream bytes as they arrive (no re-encoding, one
   flush per upstream read), read on the request thread with the same three-way wait and an
   idle-read deadline; its ``close()`` closes the exchange exactly once, whether the stream
   ended, failed, or the client left (PEP 3333: the server calls ``close()`` in every case, even
   when iteration never started).
4. ``finish``: a response read to its end gives the connection back to the pool. Any early exit
   instead half-closes it (``shutdown(SHUT_WR)``: Go's HTTP server reads EOF and cancels the
   request) and hands it to the `SocketWatcher`, which reports when Ollama has closed its side —
   only then has Ollama stopped working on the request, so only then is its slot given back
   (bounded by ``release_timeout_seconds``).

Mid-stream failures end the stream with one terminal error in the protocol's own form: an
NDJSON ``{"error": …}`` line, or an SSE ``data: {"error": …}`` event. Nothing is retried once
the request body has been sent.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from management_api.proxy.socket_watch import GONE, PENDING, SocketWatcher, peer_state
from management_api.proxy.upstream_response import ProtocolError, UpstreamResponse

TAIL_BYTES = 65536  # how much of an answer's end is kept for its token counts

log = logging.getLogger(__name__)

# How often a client is looked at when its socket cannot be waited on (no socket, or a
# pipelined request already waiting in it).
WATCH_INTERVAL_SECONDS = 0.25
GRACE_RETRY_INTERVAL_SECONDS = 0.25
DEFAULT_RELEASE_TIMEOUT_SECONDS = 30.0
# Released is what the caller's callback is told: (seconds Ollama took to let go, timed out).
Released = Callable[[float, bool], None]

_POLL_READ = select.POLLIN | select.POLLPRI


def ready_to_read(waitables: Iterable[Any], timeout: float) -> list[Any]:
    """Those of ``waitables`` (sockets or file descriptors) that are readable, closed by the peer
    or in error, waiting at most ``timeout`` seconds.

    ``poll``, not ``select``: select() refuses descriptors from 1024 up, and a worker holding a
    thousand connections has them, which read as a client gone. A descriptor closed under us
    raises OSError, as with select().
    """
    poller = select.poll()
    by_fd: dict[int, Any] = {}
    for waitable in waitables:
        fd = waitable if isinstance(waitable, int) else waitable.fileno()
        if fd < 0:
            raise ValueError("a closed socket cannot be waited on")
        poller.register(fd, _POLL_READ)
        by_fd[fd] = waitable
    events = poller.poll(math.ceil(max(0.0, timeout) * 1000))
    if any(event & select.POLLNVAL for _, event in events):
        raise OSError("a descriptor was closed while waited on")
    return [by_fd[fd] for fd, _ in events]


# RFC 9110 §7.6.1 hop-by-hop headers, plus what a proxy must set itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: Ollama answers 403 to a foreign Host/Origin, our own credentials
# stay with us, and the body length is ours to set.
_DROP_REQUEST_HEADERS = HOP_BY_HOP | {
    "host",
    "origin",
    "referer",
    "authorization",
    "x-api-key",
    "cookie",
    "content-length",
    "expect",
}
_DROP_RESPONSE_HEADERS = HOP_BY_HOP | {"content-length", "date", "server"}


class ProxyError(Exception):
    """Base for failures of an upstream exchange."""


class ClientGone(ProxyError):
    """The client closed its connection; the upstream call was aborted."""


# nginx's code for "client closed request": nobody receives it, the access log records it.
CLIENT_CLOSED_STATUS = 499


class UpstreamUnreachable(ProxyError):
    """Ollama refused connections for the whole grace window."""


class UpstreamTimeout(ProxyError):
    """No response headers within the first-byte timeout, or a gap longer than the idle timeout."""


class UpstreamBroken(ProxyError):
    """The connection failed after the request was sent (reset, malformed response)."""


def forwardable_request_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The client's end-to-end headers, minus what must not reach Ollama."""
    out: dict[str, str] = {}
    connection_tokens: set[str] = set()
    items = list(headers)
    for name, value in items:
        if name.lower() == "connection":
            connection_tokens |= {t.strip().lower() for t in value.split(",")}
    for name, value in items:
        lowered = name.lower()
        if lowered in _DROP_REQUEST_HEADERS or lowered in connection_tokens:
            continue
        out[name] = value
    return out


def forwardable_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, v) for n, v in headers if n.lower() not in _DROP_RESPONSE_HEADERS]


# --- the client side


class ClientWatch:
    """Tells whether the client at the other end of a WSGI request has closed its connection.

    WSGI gives no disconnect signal until a write fails, so we look at the socket: the peer's FIN
    (POLLRDHUP on Linux) means gone even behind unread bytes; bytes without FIN are a pipelined
    request, so the client is still there.
    """

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock
        self._gone = False
        self.pipelined = False  # bytes of a next request are waiting: readability says nothing

    def mark_gone(self) -> None:
        self._gone = True

    @property
    def sock(self) -> socket.socket | None:
        """The socket to wait on together with upstream, while that tells anything."""
        return None if self._gone or self.pipelined else self._sock

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> ClientWatch:
        return cls(environ.get("gunicorn.socket"))

    def gone(self) -> bool:
        if self._gone or self._sock is None:
            return self._gone
        state = peer_state(self._sock)
        self._gone = state == GONE
        # Bytes of a next request make the socket readable for good; FIN is still seen here.
        self.pipelined = self.pipelined or state == PENDING
        return self._gone


# --- the upstream side


class UpstreamConnection:
    """One keep-alive socket to Ollama.

    The proxy speaks HTTP/1.1 over this socket itself (request head and body in one write) and
    reads the answer with `UpstreamResponse`: the fewest layers between the client's bytes and
    Ollama's, and direct access to the socket for the disconnect watch.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        sock = socket.create_connection((self.pool.host, self.pool.port), self.pool.connect_timeout)
        # Ollama (Go) sets TCP_NODELAY; without it every small write pays Nagle's 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.pool.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.pool.host)
        self.sock = sock

    @property
    def usable(self) -> bool:
        """An idle keep-alive socket that is readable has been closed (or sent garbage)."""
        if self.sock is None:
            return False
        try:
            return not ready_to_read([self.sock], 0)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


class ConnectionPool:
    """A small LIFO pool of keep-alive connections to one Ollama."""

    def __init__(self, base_url: str, *, maxsize: int, connect_timeout: float) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc
        self.connect_timeout = connect_timeout
        self._idle: queue.LifoQueue[UpstreamConnection] = queue.LifoQueue(maxsize)

    def new_connection(self) -> UpstreamConnection:
        return UpstreamConnection(self)

    def get(self) -> tuple[UpstreamConnection, bool]:
        """A connection and whether it was reused (a reused one may have gone stale)."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return self.new_connection(), False
            if conn.usable:
                return conn, True
            conn.close()

    def put(self, conn: UpstreamConnection) -> None:
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class BodyParts(tuple):
    """A request body held as pieces, sent one after the other; re-sendable like bytes (a retry
    while Ollama restarts sends it again). Lets requests share a large piece, not copy it."""

    @property
    def length(self) -> int:
        return sum(map(len, self))


def request_head(
    method: str, target: str, host: str, headers: dict[str, str], content_length: int | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _close_now(conn: UpstreamConnection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def wait_readable(
    upstream: socket.socket, watch: ClientWatch, wake_fd: int | None, timeout: float
) -> str:
    """Wait until upstream has bytes, the client left, or a cancel came; say which.

    Returns ``"upstream"``, ``"client_gone"``, ``"cancelled"`` or ``"timeout"``. The client's
    socket is part of the one ``poll`` while it can tell anything; otherwise (no socket, or a
    pipelined request waiting in it) it is looked at every WATCH_INTERVAL_SECONDS.
    """
    client = getattr(watch, "sock", None)
    fds: list[Any] = [upstream]
    if wake_fd is not None:
        fds.append(wake_fd)
    if client is not None:
        fds.append(client)
    else:
        timeout = min(timeout, WATCH_INTERVAL_SECONDS)
    try:
        readable = ready_to_read(fds, timeout)
    except (OSError, ValueError):
        if client is not None and client.fileno() < 0:
            # The server closed the client's socket (a failed write on another thread).
            if isinstance(watch, ClientWatch):
                watch.mark_gone()
            return "client_gone"
        return "upstream"  # the upstream socket was closed under us: the read says how
    if wake_fd is not None and wake_fd in readable:
        return "cancelled"
    if upstream in readable:
        return "upstream"
    if (client is None or client in readable) and watch.gone():
        return "client_gone"
    return "timeout" if not readable else "again"


@dataclass
class UpstreamExchange:
    pool: ConnectionPool
    watch: ClientWatch
    grace_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    watcher: SocketWatcher | None = None
    release_timeout: float = DEFAULT_RELEASE_TIMEOUT_SECONDS
    conn: UpstreamConnection | None = None
    response: UpstreamResponse | None = None
    method: str = "GET"
    cancelled: bool = False
    _wake_fd: int | None = None
    _closed: bool = field(default=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None,
    ) -> None:
        """Send the request; retry only failures that prove Ollama never received it.

        A streamed body (an iterable, e.g. a blob upload) can be sent once only, so it always
        gets a fresh connection and is never re-sent.
        """
        deadline = self.clock() + self.grace_seconds
        replayable = body is None or isinstance(body, bytes | BodyParts)
        # The fd another thread writes to wake the request thread (a cancel); set before the
        # first wait, read by abort() after it set `cancelled` (one of them sees the other).
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.method = method
        if isinstance(body, BodyParts):
            headers.pop("Content-Length", None)
            length = body.length
        elif isinstance(body, bytes) or body is None:
            length = len(body) if body is not None else None
            if length is None and method in ("POST", "PUT", "PATCH"):
                length = 0
        else:
            length = int(headers.pop("Content-Length", 0))
        head = request_head(method, path, self.pool.host_header, headers, length)
        while True:
            if replayable:
                conn, reused = self.pool.get()
            else:
                conn, reused = self.pool.new_connection(), False
            try:
                if not reused:
                    conn.connect()
                assert conn.sock is not None
                if isinstance(body, bytes) and len(body) <= 65536:
                    conn.sock.sendall(head + body)  # one write: no Nagle/delayed-ACK stall
                else:
                    conn.sock.sendall(head)
                    for chunk in [body] if isinstance(body, bytes) else body or ():
                        conn.sock.sendall(chunk)
                self.conn = conn
                return
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:
                    continue  # a keep-alive connection Ollama had closed: try a fresh one
                refused = isinstance(exc, ConnectionRefusedError)
                if refused and replayable and self.clock() < deadline:
                    if self.watch.gone():
                        raise ClientGone() from exc
                    time.sleep(GRACE_RETRY_INTERVAL_SECONDS)
                    continue
                raise UpstreamUnreachable() from exc
            except OSError as exc:
                conn.close()
                if reused:
                    continue
                raise UpstreamUnreachable() from exc

    def wait_for_headers(self, first_byte_timeout: float) -> UpstreamResponse:
        """Wait for Ollama's status line while watching the client; return the response.

        A failure leaves the connection as it is: the caller's ``finish(complete=False)`` lets
        go of it (and learns when Ollama has).
        """
        assert self.conn is not None and self.conn.sock is not None
        sock = self.conn.sock
        deadline = self.clock() + first_byte_timeout
        while True:
            if self.cancelled:
                raise UpstreamBroken("cancelled")
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise UpstreamTimeout("no response from Ollama within the first-byte timeout")
            what = wait_readable(sock, self.watch, self._wake_fd, remaining)
            if what == "upstream":
                break
            if what == "client_gone":
                raise ClientGone()
            if what == "cancelled":
                raise UpstreamBroken("cancelled")
        try:
            # The status line has started to arrive; the rest follows promptly.
            sock.settimeout(max(1.0, min(30.0, deadline - self.clock())))
            response = UpstreamResponse(sock, method=self.method)
            response.read_head()
            self.response = response
        except (OSError, ProtocolError) as exc:
            if isinstance(exc, TimeoutError | socket.timeout):
                raise UpstreamTimeout("Ollama sent an incomplete response head") from exc
            raise UpstreamBroken() from exc
        return self.response

    @property
    def wake_fd(self) -> int | None:
        return self._wake_fd

    def abort(self) -> None:
        """End this exchange from another thread (a cache clear): the request thread wakes up,
        gives up, and lets go of the connection as after any early exit."""
        self.cancelled = True
        fd = self._wake_fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    def finish(self, *, complete: bool, released: Released | None = None) -> None:
        """Done with the connection (once). Read to its end: back to the pool (or closed), and
        ``released(0, False)`` at once. Otherwise half-close it and call ``released`` when
        Ollama has closed its side, or after ``release_timeout`` with ``timed_out`` True."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            wake_fd, self._wake_fd = self._wake_fd, None
        if wake_fd is not None:
            with contextlib.suppress(OSError):
                os.close(wake_fd)
        conn, response = self.conn, self.response
        sock = conn.sock if conn is not None else None
        if conn is None or sock is None:
            if released is not None:
                released(0.0, False)
            return
        if complete:
            reusable = response is not None and not response.will_close and not response.leftover
            if reusable:
                with contextlib.suppress(OSError):
                    sock.settimeout(self.pool.connect_timeout)
                self.pool.put(conn)
            else:
                _close_now(conn)
            if released is not None:
                released(0.0, False)
            return
        conn.sock = None  # the watcher owns it now, and closes it
        if self.watcher is None:
            with contextlib.suppress(OSError):
                sock.close()
            if released is not None:
                released(0.0, False)
            return
        self.watcher.linger(sock, self.release_timeout, released or (lambda _s, _t: None))


# --- the response body


IDLE_TIMEOUT_MESSAGE = "Ollama sent nothing within the idle timeout"


def ndjson_error_line(message: str) -> bytes:
    return (json.dumps({"error": message}) + "\n").encode()


def sse_error_event(message: str, error_type: str = "api_error") -> bytes:
    payload = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def terminal_error_for(content_type: str) -> Callable[[str], bytes] | None:
    """How to tell a client that a stream of this content type failed part-way."""
    content_type = content_type.lower()
    if content_type.startswith("application/x-ndjson"):
        return ndjson_error_line
    if content_type.startswith("text/event-stream"):
        return sse_error_event
    return None


class ProxiedBody:
    """The WSGI body of a proxied response; ``close()`` does the bookkeeping exactly once."""

    def __init__(
        self,
        exchange: UpstreamExchange,
        *,
        idle_timeout: float,
        on_close: Callable[[ProxiedBody], None],
        cancel_reason: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.exchange = exchange
        self.idle_timeout = idle_timeout
        self._on_close = on_close
        self._cancel_reason = cancel_reason
        self._closed = False
        self._lock = threading.Lock()
        response = exchange.response
        assert response is not None
        self.content_type = response.header("content-type") or ""
        self.terminal_error = terminal_error_for(self.content_type)
        self.complete = False
        self.outcome = "incomplete"  # completed | client_gone | idle_timeout | upstream_error
        self.first_chunk_at: float | None = None
        self.bytes_sent = 0
        # The answer's last bytes (its final line carries the token counts, for the access
        # log, usage and fair share): the chunks since the last line ended, at most TAIL_BYTES.
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_bytes = 0
        self._line_open = False
        self.closed_at: float | None = None
        self.released_after = 0.0  # seconds from close() until Ollama had let go
        self.release_timed_out = False

    def __iter__(self) -> Iterator[bytes]:
        """Relay the body on the request thread, whatever its framing.

        Waits for upstream bytes in WATCH_INTERVAL steps and looks at the client and the idle
        deadline between steps. Nothing is read ahead of the client, so a slow client slows
        Ollama down through TCP flow control instead of filling memory here.
        """
        exchange = self.exchange
        response = exchange.response
        assert response is not None
        sock = exchange.conn.sock if exchange.conn else None
        if sock is not None:
            sock.settimeout(self.idle_timeout)  # bounds a read that finds half a chunk
        idle_deadline = time.monotonic() + self.idle_timeout
        while True:
            if exchange.cancelled:
                yield from self._give_up("upstream_error", self._cancelled_message())
                return
            if sock is not None and not response.buffered and not response.complete:
                what = wait_readable(
                    sock, exchange.watch, exchange.wake_fd, idle_deadline - time.monotonic()
                )
                if what == "client_gone":
                    yield from self._give_up("client_gone")
                    return
                if what == "cancelled":
                    yield from self._give_up("upstream_error", self._cancelled_message())
                    return
                if what != "upstream":
                    if time.monotonic() >= idle_deadline:
                        yield from self._give_up("idle_timeout", IDLE_TIMEOUT_MESSAGE)
                        return
                    continue
            try:
                chunk = response.read1(65536)
            except TimeoutError:
                yield from self._give_up("idle_timeout", IDLE_TIMEOUT_MESSAGE)
                return
            except (OSError, ProtocolError, ValueError):
                reason = self._cancel_reason() or "the connection to Ollama failed mid-stream"
                yield from self._give_up("upstream_error", reason)
                return
            if not chunk:
                self.complete = True
                self.outcome = "completed"
                return
            idle_deadline = time.monotonic() + self.idle_timeout
            yield self._note(chunk)

    def _cancelled_message(self) -> str:
        return self._cancel_reason() or "the request was cancelled"

    def _note(self, chunk: bytes) -> bytes:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.monotonic()
        self.bytes_sent += len(chunk)
        if not self._line_open:  # a new line begins: what came before is not the final one
            self._tail.clear()
            self._tail_bytes = 0
        self._tail.append(chunk)
        self._tail_bytes += len(chunk)
        while self._tail_bytes - len(self._tail[0]) >= TAIL_BYTES:
            self._tail_bytes -= len(self._tail.popleft())
        self._line_open = not chunk.endswith(b"\n")
        return chunk

    @property
    def tail(self) -> bytes:
        """The answer's last bytes, at most TAIL_BYTES: its final line, or that line's end
        when it is longer (a split line is joined back; answer_usage reads either)."""
        return b"".join(self._tail)[-TAIL_BYTES:]

    def _give_up(self, outcome: str, message: str | None = None) -> Iterator[bytes]:
        """Stop relaying (``close()`` lets go of upstream) and, for a stream, send one
        terminal error."""
        self.outcome = outcome
        if message is not None and self.terminal_error is not None:
            yield self.terminal_error(message)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.outcome == "incomplete":
            self.outcome = "closed_early"  # the client went away, or the reader stopped early
        self.closed_at = time.monotonic()
        self.exchange.finish(complete=self.complete, released=self._released)

    def _released(self, seconds: float, timed_out: bool) -> None:
        """Ollama has let go of the request (or the release timeout passed): bookkeeping."""
        self.released_after = seconds
        self.release_timed_out = timed_out
        self._on_close(self)
