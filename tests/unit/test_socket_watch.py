"""The socket watcher over real socket pairs: queued clients and upstreams being let go of."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from management_api.proxy.socket_watch import SocketWatcher


@pytest.fixture
def watcher():
    w = SocketWatcher()
    yield w
    w.close()


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_a_client_that_closes_is_reported_at_once(watcher):
    ours, theirs = _pair()
    gone = threading.Event()
    watcher.watch_client(ours, gone.set)
    time.sleep(0.05)
    assert not gone.is_set()
    closed = time.monotonic()
    theirs.close()
    assert gone.wait(2)
    assert time.monotonic() - closed < 0.5
    ours.close()


def test_a_cancelled_client_watch_never_fires(watcher):
    ours, theirs = _pair()
    fired = []
    handle = watcher.watch_client(ours, lambda: fired.append(1))
    handle.cancel()
    handle.cancel()  # idempotent
    theirs.close()
    time.sleep(0.2)
    assert fired == []
    ours.close()


def test_a_pipelined_request_is_not_a_disconnect(watcher):
    ours, theirs = _pair()
    fired = []
    watcher.watch_client(ours, lambda: fired.append(1))
    theirs.sendall(b"GET / HTTP/1.1\r\n\r\n")
    time.sleep(0.2)
    assert fired == []
    assert ours.recv(100).startswith(b"GET")  # the bytes are still there for their reader
    ours.close()
    theirs.close()


def test_linger_half_closes_and_reports_when_the_peer_lets_go(watcher):
    ours, theirs = _pair()
    done = []
    released = threading.Event()

    def on_done(seconds: float, timed_out: bool) -> None:
        done.append((seconds, timed_out))
        released.set()

    watcher.linger(ours, timeout=5, done=on_done)
    assert theirs.recv(10) == b""  # the peer saw our half-close (EOF)
    theirs.sendall(b"late tokens")  # what Ollama still sends is read and dropped
    time.sleep(0.3)
    assert not released.is_set()
    theirs.close()
    assert released.wait(2)
    seconds, timed_out = done[0]
    assert not timed_out and 0.25 < seconds < 2
    assert ours.fileno() == -1  # closed by the watcher


def test_linger_gives_up_at_its_deadline(watcher):
    ours, theirs = _pair()
    done = []
    released = threading.Event()
    watcher.linger(ours, timeout=0.2, done=lambda s, t: (done.append((s, t)), released.set()))
    assert released.wait(2)
    seconds, timed_out = done[0]
    assert timed_out and 0.15 < seconds < 1.5
    assert watcher.lingering == 0
    theirs.close()


def test_close_ends_every_wait(watcher):
    pairs = [_pair() for _ in range(3)]
    done = []
    for ours, _ in pairs:
        watcher.linger(ours, timeout=60, done=lambda s, t: done.append(t))
    assert watcher.lingering == 3
    watcher.close()
    assert done == [True, True, True]
    for _, theirs in pairs:
        theirs.close()


def test_a_failing_callback_does_not_stop_the_watcher(watcher):
    first, first_peer = _pair()
    second, second_peer = _pair()
    ok = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    watcher.watch_client(first, boom)
    watcher.watch_client(second, ok.set)
    first_peer.close()
    time.sleep(0.1)
    second_peer.close()
    assert ok.wait(2)
    first.close()
    second.close()


def test_a_client_socket_closed_by_the_server_reads_as_client_gone():
    """gunicorn closes the client's socket when a write on another thread failed; a wait that
    had it in its select must say the client is gone, not go reading upstream."""
    from management_api.proxy.transport import ClientWatch, wait_readable

    upstream, upstream_peer = _pair()
    client, client_peer = _pair()
    watch = ClientWatch(client)
    client.close()
    assert wait_readable(upstream, watch, None, 1.0) == "client_gone"
    assert watch.gone()
    for sock in (upstream, upstream_peer, client_peer):
        sock.close()
