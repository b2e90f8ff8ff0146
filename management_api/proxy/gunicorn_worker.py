"""The gunicorn worker class: gthread, with request heads read off the pool and probes on a lane.

gunicorn's gthread worker hands every accepted connection to its thread pool, and a pool thread
then blocks until the whole request head has arrived. Three things go wrong with that here:

* **slowloris**: a client trickling one header line a second holds a pool thread for as long as
  it likes, before any of our code (auth included) runs; a few hundred of them take every thread;
* **liveness**: ``/health/live`` waits in the pool's queue behind every queued and streaming
  request, so a busy node fails its probe and Kubernetes restarts it (and Ollama with it);
* **a client that stops reading**: the write of its answer blocks forever, and with it the slot.

So this worker reads request heads itself, non-blocking, on the main loop thread (the one that
already accepts and polls kept-alive connections), and closes a connection whose head is not
complete after ``LLM_HEADER_TIMEOUT_SECONDS``. A complete head goes to a pool thread with the
bytes already read handed to gunicorn's parser; the probe routes go to small pools of their own
(``/health/live`` alone on one, the other probes on another), so they never queue behind work.
They still run through the whole application: the answer means this process accepts, parses and
serves requests, not merely that some thread is alive. Every write to a client is bounded by
``LLM_SEND_TIMEOUT_SECONDS`` of no progress (as nginx's ``send_timeout``): then the request ends
as if the client had gone (its slot is released once Ollama lets go) and ``client_stalled`` is
logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.workers import gthread

from management_api.settings import Settings

log = logging.getLogger(__name__)

LIVE_PATHS = frozenset({"/health/live"})
PROBE_PATHS = frozenset({"/health", "/health/ready"})
PROBE_METHODS = frozenset({b"GET", b"HEAD"})
LIVE_THREADS = 2
PROBE_THREADS = 4
# Graceful closes (FIN, then up to 2 s for the client to close) run here, not on the main loop.
CLOSER_THREADS = 4
_READ_BYTES = 65536
_HEAD_END = b"\r\n\r\n"


class SendTimeoutSocket(socket.socket):
    """A client socket whose ``sendall`` fails after a bound without progress, not in total.

    ``socket.sendall`` with a timeout bounds the whole call, which would cut off a big answer
    to a slow but reading client; one ``send`` at a time bounds each wait for buffer room.
    """

    def sendall(self, data: Any, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        while view:
            sent = self.send(view, flags)
            view = view[sent:]


def request_target(head: bytes | bytearray) -> tuple[bytes, str]:
    """The method and path (no query) of a request head; empty when it is not one."""
    line = bytes(head).lstrip(b"\r\n").split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        return b"", ""
    path = parts[1].split(b"?", 1)[0]
    return parts[0], path.decode("latin-1")


class _HeadWait:
    __slots__ = ("buf", "deadline")

    def __init__(self, buf: bytes, deadline: float) -> None:
        self.buf = bytearray(buf)
        self.deadline = deadline


class BoundedThreadWorker(gthread.ThreadWorker):
    """gthread with request heads read on the main loop, probe lanes and a send timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = Settings.load()
        self.header_timeout = settings.header_timeout_seconds
        self.send_timeout = settings.send_timeout_seconds
        cfg = self.cfg
        # Past this many bytes without the blank line, gunicorn's parser gets the head and
        # answers its own "too large" error (the limits are its settings).
        self.head_cap = (
            cfg.limit_request_line
            + cfg.limit_request_fields * (cfg.limit_request_field_size + 2)
            + 4
        )
        self.head_waits: dict[gthread.TConn, _HeadWait] = {}
        self.live_pool: futures.ThreadPoolExecutor | None = None
        self.probe_pool: futures.ThreadPoolExecutor | None = None
        self.closer_pool: futures.ThreadPoolExecutor | None = None

    def init_process(self) -> None:
        self.live_pool = futures.ThreadPoolExecutor(LIVE_THREADS, thread_name_prefix="live")
        self.probe_pool = futures.ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="probe")
        self.closer_pool = futures.ThreadPoolExecutor(CLOSER_THREADS, thread_name_prefix="close")
        super().init_process()

    def _plain_http(self, conn: gthread.TConn) -> bool:
        """TLS and HTTP/2 prior knowledge keep gunicorn's own path (neither is configured here)."""
        return not self.cfg.is_ssl and not gthread.negotiation.prior_knowledge_allowed(
            self.cfg, conn.client
        )

    # --- accepting: the socket class that bounds writes

    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        sock = SendTimeoutSocket(client.family, client.type, client.proto, fileno=client.detach())
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, sock, addr, listener.getsockname())
        self.enqueue_req(conn)

    # --- reading the head on the main loop

    def enqueue_req(self, conn: gthread.TConn) -> None:
        """Every road into the pool comes here (accept, keep-alive, read-ahead after a request)."""
        if not self._plain_http(conn):
            super().enqueue_req(conn)
            return
        pending = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        wait = _HeadWait(pending, time.monotonic() + self.header_timeout)
        if self._head_complete(wait.buf):
            self._dispatch(conn, wait.buf)
            return
        conn.sock.setblocking(False)
        self.head_waits[conn] = wait
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))

    def _head_complete(self, buf: bytearray) -> bool:
        return _HEAD_END in buf or len(buf) > self.head_cap

    def _on_head_readable(self, conn: gthread.TConn, _sock: Any) -> None:
        wait = self.head_waits.get(conn)
        if wait is None:
            return
        try:
            data = conn.sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_head_wait(conn)
            return
        scan_from = max(0, len(wait.buf) - 3)
        wait.buf += data
        if _HEAD_END in wait.buf[scan_from:] or len(wait.buf) > self.head_cap:
            self._forget_head_wait(conn)
            self._dispatch(conn, wait.buf)

    def _forget_head_wait(self, conn: gthread.TConn) -> None:
        self.head_waits.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _drop_head_wait(self, conn: gthread.TConn) -> None:
        self._forget_head_wait(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Runs every turn of the main loop: also closes connections whose head is late."""
        super().murder_pending()
        now = time.monotonic()
        late = [conn for conn, wait in self.head_waits.items() if wait.deadline <= now]
        for conn in late:
            log.info(
                "header_timeout: closed %s, no complete request head within %g s",
                _peer(conn),
                self.header_timeout,
            )
            self._drop_head_wait(conn)

    def _dispatch(self, conn: gthread.TConn, head: bytearray) -> None:
        conn.init()  # the parser (plain HTTP: nothing is read here)
        conn.parser.unreader.unread(bytes(head))
        conn.data_ready = True
        method, path = request_target(head)
        pool = self.tpool
        if method in PROBE_METHODS:
            if path in LIVE_PATHS:
                pool = self.live_pool
            elif path in PROBE_PATHS:
                pool = self.probe_pool
        fs = pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    # --- serving: the send timeout

    def handle_request(self, req: Any, conn: gthread.TConn) -> bool:
        conn.sock.settimeout(self.send_timeout)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            log.warning(
                "client_stalled: dropped %s %s %s, no progress on its socket for %g s",
                _peer(conn),
                req.method,
                req.path,
                self.send_timeout,
            )
            _abort(conn.sock)
            return False

    def finish_request(self, conn: gthread.TConn, fs: futures.Future) -> None:
        # gunicorn closes a finished connection gracefully on this (the main) thread, which
        # waits up to 2 s for the client to close its side: off to the closer pool instead.
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:
            result = None
        if result is False and self.closer_pool is not None:
            self.nr_conns -= 1
            self.closer_pool.submit(conn.close, graceful=True)
            return
        super().finish_request(conn, fs)

    def run(self) -> None:
        try:
            super().run()
        finally:
            for pool in (self.live_pool, self.probe_pool, self.closer_pool):
                if pool is not None:
                    pool.shutdown(wait=False)


def _peer(conn: gthread.TConn) -> str:
    client = conn.client
    if isinstance(client, tuple) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return str(client)


def _abort(sock: socket.socket) -> None:
    """Close with a reset: unsent bytes for a client that reads nothing are thrown away."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
