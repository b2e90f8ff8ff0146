"""API keys, CORS and body limits over real sockets (issue: security and API contract)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.integration.test_proxy import MODEL, slow
from tests.service_harness import ServiceProcess

ADMIN_KEY = "adm-0123456789abcdef"
USER_KEY = "usr-0123456789abcdef"
CAPPED_KEY = "cap-0123456789abcdef"
KEYS = f"ops:{ADMIN_KEY}:admin,n8n:{USER_KEY}:user,batch:{CAPPED_KEY}:user:1"


@pytest.fixture(scope="module", params=["off", "management", "all"])
def secured(request, emulator):
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_AUTH_MODE": request.param,
        "LLM_API_KEYS": KEYS,
        "LLM_CORS_ORIGINS": "http://dashboard.local:3001",
        "LLM_MAX_BODY_MB": "1",
    }
    with ServiceProcess(env=env) as service:
        yield request.param, service


ROUTES = {
    "health": ("GET", "/health/live", None),
    "read": ("GET", "/api/limits", None),
    "inference": ("POST", "/api/generate", {"model": MODEL, "prompt": "x", "stream": False}),
    "mutation": ("POST", "/api/cache/clear", None),
}
CREDENTIALS = {
    "none": {},
    "wrong": {"Authorization": "Bearer not-a-real-key-000000"},
    "user": {"Authorization": f"Bearer {USER_KEY}"},
    "admin": {"X-API-Key": ADMIN_KEY},
}
EXPECTED = {
    "off": {route: dict.fromkeys(CREDENTIALS, 200) for route in ROUTES},
    "management": {
        "health": dict.fromkeys(CREDENTIALS, 200),
        "read": dict.fromkeys(CREDENTIALS, 200),
        "inference": dict.fromkeys(CREDENTIALS, 200),
        "mutation": {"none": 401, "wrong": 401, "user": 403, "admin": 200},
    },
    "all": {
        "health": dict.fromkeys(CREDENTIALS, 200),
        "read": {"none": 401, "wrong": 401, "user": 200, "admin": 200},
        "inference": {"none": 401, "wrong": 401, "user": 200, "admin": 200},
        "mutation": {"none": 401, "wrong": 401, "user": 403, "admin": 200},
    },
}


def test_auth_matrix(secured):
    mode, service = secured
    for route, (method, path, body) in ROUTES.items():
        for credential, headers in CREDENTIALS.items():
            response = requests.request(
                method, service.management_url + path, json=body, headers=headers, timeout=10
            )
            expected = EXPECTED[mode][route][credential]
            assert response.status_code == expected, (mode, route, credential, response.text)
            if expected == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert response.json()["type"] == "unauthorized"
            if expected == 403:
                assert response.json()["type"] == "forbidden"


def test_openai_route_gets_openai_shaped_401(secured):
    mode, service = secured
    if mode != "all":
        pytest.skip("only 'all' guards inference")
    response = requests.post(
        service.proxy_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_keys_never_reach_ollama_or_the_log(secured, emulator):
    mode, service = secured
    response = requests.post(
        service.proxy_url + "/api/generate",
        json={"model": MODEL, "prompt": "x", "stream": False},
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-ID": f"key-{mode}"},
        timeout=10,
    )
    assert response.status_code == 200
    seen = emulator.connections(request_id=f"key-{mode}")[0]["headers"]
    assert seen.get("authorization") is None
    output = service.output()
    assert ADMIN_KEY not in output and USER_KEY not in output
    if mode != "off":
        line = next(line for line in output.splitlines() if f"key-{mode}" in line)
        assert '"key":"ops"' in line


def test_per_key_concurrency_cap(secured, emulator):
    mode, service = secured
    if mode == "off":
        pytest.skip("keys are not read when auth is off")
    emulator.reset()
    slow(emulator, "qwen3:14b-q8", seconds=2)
    url = service.proxy_url + "/api/generate"
    headers = {"Authorization": f"Bearer {CAPPED_KEY}"}
    body = {"model": "qwen3:14b-q8", "prompt": "x", "stream": False}
    first = {}

    def hold() -> None:
        first["r"] = requests.post(url, json=body, headers=headers, timeout=20)

    thread = threading.Thread(target=hold)
    thread.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        snapshot = requests.get(
            service.management_url + "/api/limits", headers=headers, timeout=5
        ).json()
        if snapshot["totals"]["in_flight"] >= 1:
            break
        time.sleep(0.05)
    second = requests.post(url, json=body, headers=headers, timeout=20)
    assert second.status_code == 429
    assert second.json()["reason"] == "key_limit"
    assert second.headers["Retry-After"] == "1"
    assert second.json()["retry_after_seconds"] == 1
    thread.join(20)
    assert first["r"].status_code == 200


def test_cors_preflight_and_headers(secured):
    _mode, service = secured
    url = service.management_url + "/api/models"
    allowed = requests.options(
        url,
        headers={
            "Origin": "http://dashboard.local:3001",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=5,
    )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://dashboard.local:3001"
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    denied = requests.options(
        url,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        timeout=5,
    )
    assert denied.status_code == 403
    assert "Access-Control-Allow-Origin" not in denied.headers
    simple = requests.get(
        service.management_url + "/health/live",
        headers={"Origin": "http://dashboard.local:3001"},
        timeout=5,
    )
    assert simple.headers["Access-Control-Allow-Origin"] == "http://dashboard.local:3001"
    other = requests.get(
        service.management_url + "/health/live", headers={"Origin": "https://x.example"}, timeout=5
    )
    assert "Access-Control-Allow-Origin" not in other.headers


def _raw_post(port: int, head: bytes, body_chunks, read_timeout: float = 10) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(read_timeout)
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
        return data
    finally:
        sock.close()


def test_oversized_bodies_get_413_without_being_read(secured):
    mode, service = secured
    if mode != "off":
        pytest.skip("once is enough")
    head = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    started = time.monotonic()
    reply = _raw_post(service.proxy_port, head, [b"{" + b" " * 1000])
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 5  # answered without waiting for 100 MB

    chunked_head = (
        b"POST /api/models/pull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(40)] + [b"0\r\n\r\n"]
    reply = _raw_post(service.management_port, chunked_head, chunks)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    body = reply.split(b"\r\n\r\n", 1)[1]
    if body:
        assert json.loads(body.split(b"\n")[0])["type"] == "payload_too_large"


def test_deeply_nested_json_is_400_not_500(secured):
    mode, service = secured
    if mode != "off":
        pytest.skip("once is enough")
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/session/reset", "/v1/llm/" + MODEL):
        response = requests.post(
            service.management_url + path,
            data=deep,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, (path, response.text[:200])
    proxied = requests.post(service.proxy_url + "/api/generate", data=deep, timeout=10)
    assert proxied.status_code < 500  # Ollama's own 400, passed through
