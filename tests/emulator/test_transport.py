"""Transport rules: routing, gin's 404/405, content types, Host/Origin checks, TCP_NODELAY."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama


def test_root_and_version(fake: FakeOllama) -> None:
    root = requests.get(fake.url + "/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["Content-Type"] == "text/plain; charset=utf-8"
    head = requests.head(fake.url + "/")
    assert head.status_code == 200 and head.content == b""
    version = requests.get(fake.url + "/api/version")
    assert version.headers["Content-Type"] == "application/json; charset=utf-8"
    assert version.json() == {"version": "0.32.15"}
    assert requests.head(fake.url + "/api/version").status_code == 200
    assert requests.head(fake.url + "/api/tags").status_code == 200
    assert requests.get(fake.url + "/api/status").json() == {
        "cloud": {"disabled": False, "source": "none"}
    }


@pytest.mark.parametrize("path", ["/api/nothing", "/v2/models", "//api/tags", "/api/blobs/"])
def test_unknown_path_is_gin_404(fake: FakeOllama, path: str) -> None:
    response = requests.get(fake.url + path, allow_redirects=False)
    assert response.status_code == 404
    assert response.text == "404 page not found"
    assert response.headers["Content-Type"] == "text/plain"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/generate"),
        ("GET", "/api/show"),
        ("POST", "/api/delete"),
        ("POST", "/api/tags"),
        ("HEAD", "/api/ps"),
        ("GET", "/api/blobs/sha256:00"),
        ("PUT", "/v1/chat/completions"),
    ],
)
def test_wrong_method_is_gin_405(fake: FakeOllama, method: str, path: str) -> None:
    response = requests.request(method, fake.url + path)
    assert response.status_code == 405
    if method != "HEAD":
        assert response.text == "405 method not allowed"
    assert response.headers["Content-Type"] == "text/plain"


def test_trailing_slash_redirects_like_gin(fake: FakeOllama) -> None:
    get = requests.get(fake.url + "/api/tags/", allow_redirects=False)
    assert (get.status_code, get.headers["Location"]) == (301, "/api/tags")
    post = requests.post(fake.url + "/api/chat/", allow_redirects=False)
    assert (post.status_code, post.headers["Location"]) == (307, "/api/chat")


def test_no_server_header_and_nodelay_recorded(fake: FakeOllama) -> None:
    response = requests.get(fake.url + "/api/tags", headers={"X-Request-ID": "req-7"})
    assert "Server" not in response.headers
    (record,) = fake.connections(request_id="req-7")
    assert record["nodelay"] is True
    assert record["headers"]["x-request-id"] == "req-7"
    assert record["outcome"] == "completed" and record["status"] == 200
    assert record["opened_at"] <= record["first_byte_at"] <= record["closed_at"] <= time.monotonic()


def test_control_routes_are_not_counted(fake: FakeOllama) -> None:
    requests.get(fake.url + "/api/tags")
    fake.configure(num_parallel=1)
    observations = fake.observations()
    assert observations["requests"] == {"GET /api/tags": 1}
    assert [c["path"] for c in observations["connections"]] == ["/api/tags"]


def test_loopback_checks_reject_foreign_host_and_origin(fake: FakeOllama) -> None:
    fake.configure(loopback_checks=True)
    url = fake.url + "/api/tags"
    assert requests.get(url).status_code == 200
    for host in ("localhost:11434", "box.local", "10.1.2.3:11434", "[::1]:11434", "my.internal"):
        assert requests.get(url, headers={"Host": host}).status_code == 200, host
    foreign = requests.get(url, headers={"Host": "example.com"})
    assert (foreign.status_code, foreign.content) == (403, b"")
    bad_origin = requests.get(url, headers={"Origin": "https://evil.example"})
    assert (bad_origin.status_code, bad_origin.content) == (403, b"")
    good_origin = requests.get(url, headers={"Origin": "http://localhost:3000"})
    assert good_origin.status_code == 200
    assert good_origin.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    same_host = requests.get(url, headers={"Origin": f"http://127.0.0.1:{fake.port}"})
    assert same_host.status_code == 200
    assert requests.options(url).status_code == 204
    preflight = requests.options(url, headers={"Origin": "app://desktop"})
    assert preflight.status_code == 204
    # Unknown paths are checked too: the middlewares run before routing.
    assert requests.get(fake.url + "/nope", headers={"Host": "example.com"}).status_code == 403


def test_without_loopback_checks_any_host_passes(fake: FakeOllama) -> None:
    response = requests.get(
        fake.url + "/api/tags", headers={"Host": "example.com", "Origin": "https://x"}
    )
    assert response.status_code == 200


def _raw_request(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_headers_leave_with_the_first_line(fake: FakeOllama) -> None:
    fake.fault("stall_first_byte", route="/api/generate", seconds=0.6)
    sock = _raw_request(fake.port, b'{"model":"llama3.2:1b","prompt":"hi"}')
    try:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing at all (no status line) while the stall lasts
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Content-Type: application/x-ndjson" in head
        assert b"Transfer-Encoding: chunked" in head
        while b"\n" not in rest.partition(b"\r\n")[2]:
            rest += sock.recv(65536)
        assert b'"done":false' in rest  # the first line came with the headers
    finally:
        sock.close()
    (record,) = fake.connections(path="/api/generate")
    assert record["first_byte_at"] - record["opened_at"] >= 0.55
