"""The proxy's HTTP/1.1 response reader, fed over a real socket pair."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from management_api.proxy.upstream_response import ProtocolError, UpstreamResponse


def feed(*pieces: bytes, close: bool = True, pause: float = 0.0) -> UpstreamResponse:
    """A response reading from a socket whose peer writes `pieces` (each its own send)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)

    def write() -> None:
        try:
            for piece in pieces:
                theirs.sendall(piece)
                if pause:
                    time.sleep(pause)
        except OSError:
            return  # the reader gave up early (an oversized head, say) and closed its end
        if close:
            theirs.close()

    threading.Thread(target=write, daemon=True).start()
    return UpstreamResponse(ours, method="POST")


def read_all(response: UpstreamResponse) -> list[bytes]:
    out = []
    while piece := response.read1():
        out.append(piece)
    return out


def test_sized_body_and_headers_in_order():
    response = feed(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 10\r\n\r\n",
        b'{"x":', b'"yz"}',
    )  # fmt: skip
    response.read_head()
    assert (response.status, response.reason, response.chunked) == (200, "OK", False)
    assert response.headers[1:3] == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert response.header("content-type") == "application/json; charset=utf-8"
    assert b"".join(read_all(response)) == b'{"x":"yz"}'
    assert response.complete and not response.will_close and not response.leftover


def test_sized_body_split_byte_by_byte():
    head = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello"
    response = feed(*[head[i : i + 1] for i in range(len(head))])
    response.read_head()
    assert response.status == 201
    assert b"".join(read_all(response)) == b"hello"
    assert response.complete


def test_chunked_gathers_what_is_buffered_and_decodes_across_splits():
    body = b'7\r\n{"a":1}\r\n7\r\n{"b":2}\r\n0\r\n\r\n'
    response = feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    response.read_head()
    assert response.chunked
    assert read_all(response) == [b'{"a":1}{"b":2}']  # one write upstream, one piece here
    assert response.complete and not response.leftover

    split = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    response = feed(*[split[i : i + 3] for i in range(0, len(split), 3)])
    response.read_head()
    assert b"".join(read_all(response)) == b'{"a":1}{"b":2}'
    assert response.complete


def test_chunked_returns_each_write_as_it_arrives():
    response = feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        b"6\r\nsecond\r\n",
        b"0\r\n\r\n",
        pause=0.05,
    )
    response.read_head()
    assert response.read1() == b"first"  # without waiting for the rest of the stream
    assert response.read1() == b"second"
    assert response.read1() == b""
    assert response.complete


def test_chunk_extensions_and_trailers_are_skipped():
    response = feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;name=value\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    response.read_head()
    assert b"".join(read_all(response)) == b"abc"
    assert response.complete


def test_interim_responses_are_skipped():
    response = feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response.read_head()
    assert response.status == 200
    assert read_all(response) == [b"ok"]


@pytest.mark.parametrize(
    ("head", "method"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", "POST"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD"),
    ],
)
def test_responses_without_a_body(head, method):
    ours, theirs = socket.socketpair()
    theirs.sendall(head)
    response = UpstreamResponse(ours, method=method)
    response.read_head()
    assert response.complete and response.read1() == b""


def test_body_until_close():
    response = feed(b"HTTP/1.0 200 OK\r\n\r\n", b"all ", b"of it")
    response.read_head()
    assert response.will_close
    assert b"".join(read_all(response)) == b"all of it"
    assert response.complete


def test_connection_close_is_noticed():
    response = feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    response.read_head()
    assert response.will_close and response.complete


def test_bytes_beyond_the_response_mark_it_unreusable():
    response = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE", close=False)
    response.read_head()
    assert read_all(response) == [b"ok"]
    assert response.leftover


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 12",  # closed inside the head
    ],
)
def test_malformed_heads_are_protocol_errors(raw):
    response = feed(raw)
    with pytest.raises(ProtocolError):
        response.read_head()


def test_oversized_head_is_refused():
    response = feed(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    with pytest.raises(ProtocolError, match="too long"):
        response.read_head()


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"3\r\nabcXY0\r\n\r\n",  # chunk data not followed by CRLF
        b"10\r\nshort",  # closed inside a chunk
    ],
)
def test_malformed_chunked_bodies_are_protocol_errors(body):
    response = feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    response.read_head()
    with pytest.raises(ProtocolError):
        read_all(response)


def test_sized_body_cut_short_is_a_protocol_error():
    response = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    response.read_head()
    assert response.read1() == b"abc"
    with pytest.raises(ProtocolError):
        response.read1()
    assert not response.complete


def test_a_silent_upstream_times_out():
    ours, _theirs = socket.socketpair()
    ours.settimeout(0.1)
    response = UpstreamResponse(ours)
    with pytest.raises(TimeoutError):
        response.read_head()
