"""One thread that watches sockets nobody is reading: queued clients and upstreams let go of.

Two jobs share one selector, so neither costs a thread (or a poll loop) per request:

* **A queued client** (`watch_client`): while a request waits for its slot, nothing reads its
  socket. The client is gone when it sent FIN, whatever unread bytes came before it (a stray
  ``\r\n`` after the body is common): on Linux the watch waits for ``EPOLLRDHUP``, which says
  exactly that, so pending bytes neither hide the FIN nor wake the thread. The callback (which
  cancels the queue ticket) runs at once instead of at the next poll.
* **An upstream being let go** (`linger`): after an early exit the proxy half-closes the
  connection to Ollama (``shutdown(SHUT_WR)``: Go's HTTP server reads EOF and cancels the
  request's context) and must keep the request's slot until Ollama has really stopped, which it
  shows by closing its side. Ollama keeps evaluating a prompt it was told to abandon until the
  first token (ollama/ollama#11889), so this can take seconds. Whatever Ollama still sends is
  read and dropped; EOF, an error, or the deadline ends the wait, and ``done`` gets the seconds
  it took and whether the deadline cut it short.

Callbacks run on the watcher thread and must be quick. `close()` ends every wait at once
(lingering upstreams are closed and reported as cut short) and stops the thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_DRAIN_BYTES = 65536
_RDHUP = getattr(select, "POLLRDHUP", 0)  # Linux; elsewhere a peek tells FIN from bytes
_POLL_GONE = _RDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL

GONE = "gone"
PENDING = "pending"  # bytes are waiting and no FIN has come: the client is there
QUIET = "quiet"


def peer_state(sock: socket.socket) -> str:
    """Whether the peer of ``sock`` closed its side (FIN, even behind unread bytes), sent bytes,
    or neither; without waiting."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return GONE
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI | _RDHUP)
        events = poller.poll(0)
    except (OSError, ValueError):
        return GONE
    flags = events[0][1] if events else 0
    if flags & _POLL_GONE:
        return GONE
    if not flags & (select.POLLIN | select.POLLPRI):
        return QUIET
    if _RDHUP:
        return PENDING
    try:
        return GONE if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"" else PENDING
    except BlockingIOError:
        return QUIET
    except OSError:
        return GONE


class _Poller:
    """epoll where there is one (clients wait for EPOLLRDHUP only), else a plain selector."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") and _RDHUP else None
        self._selector = None if self._epoll is not None else selectors.DefaultSelector()

    def register(self, fd: int, kind: str) -> None:
        if self._epoll is not None:
            mask = select.EPOLLRDHUP if kind == "client" else select.EPOLLIN
            try:
                self._epoll.register(fd, mask)
            except FileExistsError:
                raise KeyError(fd) from None
        else:
            self._selector.register(fd, selectors.EVENT_READ)

    def unregister(self, fd: int) -> None:
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            self._selector.unregister(fd)

    def select(self, timeout: float | None) -> list[int]:
        if self._epoll is not None:
            return [fd for fd, _ in self._epoll.poll(-1 if timeout is None else timeout)]
        return [key.fd for key, _ in self._selector.select(timeout)]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        else:
            self._selector.close()


@dataclass(eq=False)
class _Entry:
    sock: socket.socket
    kind: str  # "client" | "upstream"
    callback: Callable[..., None]
    started: float
    deadline: float = float("inf")
    fd: int = -1
    active: bool = field(default=True)


class ClientWatchHandle:
    """Returned by `watch_client`; `cancel()` stops the watch (idempotent)."""

    def __init__(self, watcher: SocketWatcher, entry: _Entry) -> None:
        self._watcher = watcher
        self._entry = entry

    def cancel(self) -> None:
        self._watcher._remove(self._entry)


class SocketWatcher:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._selector = _Poller()
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, "wake")
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- the two jobs

    def watch_client(self, sock: socket.socket, on_gone: Callable[[], None]) -> ClientWatchHandle:
        """Call ``on_gone`` (once) as soon as the peer of ``sock`` closes its side."""
        entry = _Entry(sock, "client", on_gone, self._clock())
        self._add(entry)
        return ClientWatchHandle(self, entry)

    def linger(
        self,
        sock: socket.socket,
        timeout: float,
        done: Callable[[float, bool], None],
    ) -> None:
        """Half-close ``sock`` and call ``done(seconds, timed_out)`` once the peer let go."""
        started = self._clock()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        entry = _Entry(sock, "upstream", done, started, deadline=started + timeout)
        if not self._add(entry):
            self._finish_upstream(entry, timed_out=True)

    @property
    def lingering(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.kind == "upstream")

    # --- life cycle

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="socket-watch", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            left = list(self._entries.values())
            self._entries.clear()
        for entry in left:
            entry.active = False
            if entry.kind == "upstream":
                self._finish_upstream(entry, timed_out=True)
        with contextlib.suppress(OSError):
            self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- internals

    def _add(self, entry: _Entry) -> bool:
        with self._lock:
            if self._closed:
                return False
            try:
                entry.fd = entry.sock.fileno()
                self._selector.register(entry.fd, entry.kind)
                self._entries[entry.fd] = entry
            except (OSError, ValueError, KeyError):
                entry.fd = -1  # closed already, or watched twice: treat it as readable now
        if entry.fd < 0:
            self._fire(entry)
            return True
        if self._thread is None:
            self.start()
        self._wake()  # a new deadline may be nearer than the current wait
        return True

    def _remove(self, entry: _Entry) -> bool:
        """Take the entry out; False when the watcher already took it (it fired)."""
        with self._lock:
            if not entry.active:
                return False
            entry.active = False
            if self._entries.get(entry.fd) is entry:
                del self._entries[entry.fd]
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(entry.fd)
        return True

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                nearest = min((e.deadline for e in self._entries.values()), default=math.inf)
            timeout = None if math.isinf(nearest) else max(0.0, nearest - self._clock())
            try:
                events = self._selector.select(timeout)
            except Exception:  # the thread must outlive any one bad wait
                if self._closed:
                    return
                log.exception("socket watcher: select failed")
                time.sleep(0.05)
                continue
            try:
                for fd in events:
                    if fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError, OSError):
                            os.read(self._wake_r, 4096)
                        continue
                    with self._lock:
                        entry = self._entries.get(fd)
                    if entry is not None:
                        self._on_readable(entry)
                self._expire(self._clock())
            except Exception:
                log.exception("socket watcher: handling a ready socket failed")

    def _on_readable(self, entry: _Entry) -> None:
        if not entry.active:
            return
        if entry.kind == "client":
            state = peer_state(entry.sock)
            if state == QUIET:
                return
            # Without EPOLLRDHUP, bytes pending wake the selector again and again: stop watching
            # (the request thread's own checks take over) rather than spin on them.
            if self._remove(entry) and state == GONE:
                self._call(entry.callback)
            return
        try:
            data = entry.sock.recv(_DRAIN_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data == b"" and self._remove(entry):
            self._finish_upstream(entry, timed_out=False)

    def _expire(self, now: float) -> None:
        with self._lock:
            due = [e for e in self._entries.values() if e.deadline <= now]
        for entry in due:
            if self._remove(entry):
                self._finish_upstream(entry, timed_out=True)

    def _fire(self, entry: _Entry) -> None:
        if not self._remove(entry):
            return
        if entry.kind == "client":
            self._call(entry.callback)
        else:
            self._finish_upstream(entry, timed_out=False)

    def _finish_upstream(self, entry: _Entry, *, timed_out: bool) -> None:
        entry.active = False
        with contextlib.suppress(OSError):
            entry.sock.close()
        self._call(entry.callback, self._clock() - entry.started, timed_out)

    @staticmethod
    def _call(callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("socket watcher: callback failed")
