"""Waiting on sockets numbered from 1024 up, as a worker holding a thousand connections has.

select() refuses such descriptors (ValueError); read as "the client is gone", that answered 499
to 23 of 1,000 queued requests whose clients were still there (seen in make bench).
"""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest

from management_api.proxy.transport import (
    ClientWatch,
    ConnectionPool,
    UpstreamConnection,
    ready_to_read,
    wait_readable,
)

HIGH_FD = 1500


@pytest.fixture
def high_pair():
    """A connected pair whose first socket has a descriptor above select()'s FD_SETSIZE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH_FD + 2:
        if hard != resource.RLIM_INFINITY and hard <= HIGH_FD + 2:
            pytest.skip(f"the descriptor limit ({hard}) is below {HIGH_FD}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 64, hard))
    a, b = socket.socketpair()
    fd = os.dup2(a.fileno(), HIGH_FD)
    a.close()
    high = socket.socket(fileno=fd)
    yield high, b
    high.close()
    b.close()


def test_a_client_still_there_is_not_gone(high_pair):
    ours, theirs = high_pair
    watch = ClientWatch(ours)
    assert not watch.gone()
    theirs.close()
    assert watch.gone()


def test_ready_to_read_takes_high_descriptors(high_pair):
    ours, theirs = high_pair
    assert ready_to_read([ours], 0) == []
    theirs.sendall(b"x")
    assert ready_to_read([ours], 1) == [ours]


def test_wait_readable_tells_upstream_from_client_with_high_descriptors(high_pair):
    client, client_peer = high_pair
    upstream, ollama = socket.socketpair()
    try:
        watch = ClientWatch(client)
        started = time.monotonic()
        assert wait_readable(upstream, watch, None, 0.05) == "timeout"
        assert time.monotonic() - started >= 0.04
        ollama.sendall(b"HTTP/1.1 200 OK\r\n")
        assert wait_readable(upstream, watch, None, 1) == "upstream"
        upstream.recv(100)
        client_peer.close()
        assert wait_readable(upstream, watch, None, 1) == "client_gone"
    finally:
        upstream.close()
        ollama.close()


def test_an_idle_pooled_connection_with_a_high_descriptor_is_usable(high_pair):
    ours, theirs = high_pair
    conn = UpstreamConnection(ConnectionPool("http://127.0.0.1:9", maxsize=1, connect_timeout=1))
    conn.sock = ours
    assert conn.usable
    theirs.close()
    assert not conn.usable


def test_a_closed_socket_is_an_error_as_with_select():
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(ValueError):
        ready_to_read([a], 0)
    b.close()
