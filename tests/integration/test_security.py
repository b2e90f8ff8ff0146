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
    assert proxied.status_code == 400  # ours: never forwarded unadmitted (issue 28)


# --- issue 28: cross-site requests, roles, key caps on every model-running route

EVIL = "http://evil.example"


def _never_reached_ollama(emulator, request_id: str) -> None:
    assert emulator.connections(request_id=request_id) == [], request_id


def test_a_cross_site_pull_is_refused_on_the_proxy_port(secured, emulator):
    """A page on another site posting text/plain (no preflight) must not pull a model: 403,
    as Ollama answers it directly, in every auth mode (the key check comes after)."""
    mode, service = secured
    response = requests.post(
        service.proxy_url + "/api/pull",
        data=json.dumps({"model": MODEL, "stream": False}),
        headers={"Content-Type": "text/plain", "Origin": EVIL, "X-Request-ID": f"csrf-{mode}"},
        timeout=10,
    )
    assert response.status_code == 403, response.text
    assert response.json()["type"] == "cors_forbidden"
    assert "Access-Control-Allow-Origin" not in response.headers
    _never_reached_ollama(emulator, f"csrf-{mode}")


def test_a_cross_site_session_reset_is_refused_on_the_management_port(secured, emulator):
    mode, service = secured
    response = requests.post(
        service.management_url + "/api/session/reset",
        data="{}",
        headers={"Content-Type": "text/plain", "Origin": EVIL, "X-Request-ID": f"reset-{mode}"},
        timeout=10,
    )
    assert response.status_code == 403, response.text
    assert response.json()["type"] == "cors_forbidden"
    _never_reached_ollama(emulator, f"reset-{mode}")


def test_cross_site_inference_is_refused_before_the_fast_path(secured, emulator):
    mode, service = secured
    for path, body in (
        ("/api/generate", {"model": MODEL, "prompt": "x", "stream": False}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
    ):
        rid = f"xsite-{mode}-{path.replace('/', '-')}"
        response = requests.post(
            service.proxy_url + path,
            json=body,
            headers={"Origin": EVIL, "X-Request-ID": rid, "X-API-Key": ADMIN_KEY},
            timeout=10,
        )
        assert response.status_code == 403, (path, response.text)
        _never_reached_ollama(emulator, rid)
    # Preflights on the proxy port too.
    preflight = requests.options(
        service.proxy_url + "/api/generate",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
        timeout=5,
    )
    assert preflight.status_code == 403


def test_a_rebound_public_host_is_refused_on_both_ports(secured, emulator):
    mode, service = secured
    headers = {"X-API-Key": ADMIN_KEY}
    for base, port in ((service.proxy_url, 11434), (service.management_url, 11436)):
        tags = requests.get(
            base + "/api/tags",
            headers={**headers, "Host": f"evil.example:{port}", "X-Request-ID": f"dns-{mode}"},
            timeout=10,
        )
        assert tags.status_code == 403, tags.text
        assert tags.json()["type"] == "host_forbidden"
        generate = requests.post(
            base + "/api/generate",
            json={"model": MODEL, "prompt": "x", "stream": False},
            headers={**headers, "Host": f"evil.example:{port}", "X-Request-ID": f"dns-{mode}"},
            timeout=10,
        )
        assert generate.status_code == 403, generate.text
    _never_reached_ollama(emulator, f"dns-{mode}")


def test_callers_without_a_browser_and_allowed_browsers_keep_working(secured, emulator):
    """curl (no Origin), n8n (a container or Service name as Host), the dashboard (an allowed
    Origin), a local browser tool (Ollama's default origins), the status page (its own origin,
    whatever address it was opened on)."""
    _mode, service = secured
    key = {"X-API-Key": ADMIN_KEY}
    generate = {"model": MODEL, "prompt": "x", "stream": False}
    for base, port in ((service.proxy_url, 11434), (service.management_url, 11436)):
        cases = [
            {},  # curl
            {"Host": f"llm-service:{port}"},  # n8n in compose
            {"Host": f"llm-service.default.svc.cluster.local:{port}"},  # n8n in k8s
            {"Host": "llm-service.default.svc"},
            {"Host": "192.168.1.20"},
            {"Host": "localhost"},
            {"Origin": "http://dashboard.local:3001"},  # LLM_CORS_ORIGINS
            {"Origin": "http://localhost:5173"},  # Ollama's default origins
            # The status page opened on the Jetson's address: its own origin.
            {"Origin": f"http://192.168.1.20:{port}", "Host": f"192.168.1.20:{port}"},
            {"Origin": f"http://jetson.local:{port}", "Host": f"jetson.local:{port}"},
        ]
        for extra in cases:
            response = requests.post(
                base + "/api/generate", json=generate, headers={**key, **extra}, timeout=10
            )
            assert response.status_code == 200, (base, extra, response.text)
            tags = requests.get(base + "/api/tags", headers={**key, **extra}, timeout=10)
            assert tags.status_code == 200, (base, extra, tags.text)
            if "Origin" in extra and "Host" not in extra:
                allowed = response.headers["Access-Control-Allow-Origin"]
                assert allowed == extra["Origin"]
    # The status page's own POST (an action), same origin, on the management port.
    own = f"127.0.0.1:{service.management_port}"
    action = requests.post(
        service.management_url + "/api/cache/clear",
        headers={**key, "Origin": f"http://{own}", "Host": own},
        timeout=10,
    )
    assert action.status_code == 200, action.text


UNLOAD_ALL_BODY = {"model": "", "keep_alive": 0}


def test_unload_all_needs_the_admin_role_in_all_mode(secured, emulator):
    mode, service = secured
    requests.post(service.proxy_url + "/api/generate", json={"model": MODEL, "prompt": "x",
                  "stream": False}, headers={"X-API-Key": ADMIN_KEY}, timeout=10)  # fmt: skip
    for path in ("/api/generate", "/api/chat"):
        for base in (service.proxy_url, service.management_url):
            user = requests.post(base + path, json=UNLOAD_ALL_BODY,
                                 headers={"X-API-Key": USER_KEY}, timeout=10)  # fmt: skip
            if mode == "all":
                assert user.status_code == 403, (path, user.text)
                assert user.json()["type"] == "forbidden"
            else:
                assert user.status_code == 200, (path, user.text)
            admin = requests.post(base + path, json=UNLOAD_ALL_BODY,
                                  headers={"X-API-Key": ADMIN_KEY}, timeout=10)  # fmt: skip
            assert admin.status_code == 200, (path, admin.text)
            assert admin.json()["done_reason"] == "unload"
    if mode == "all":
        line = next(
            json.loads(line[line.index("{") :])
            for line in service.output().splitlines()
            if '"outcome":"forbidden"' in line
        )
        assert line["key"] == "n8n" and line["status"] == 403
    # The self-healing engine sends it with no key, on the management port, within 5 s.
    anonymous = requests.post(service.management_url + "/api/generate", json=UNLOAD_ALL_BODY,
                              timeout=5)  # fmt: skip
    assert anonymous.status_code == (401 if mode == "all" else 200), anonymous.text


def test_v1_infer_counts_against_the_keys_concurrency_cap(secured, emulator):
    mode, service = secured
    if mode == "off":
        pytest.skip("keys are not read when auth is off")
    emulator.reset()
    slow(emulator, "gemma3:4b", seconds=2)
    url = service.management_url + "/v1/infer"
    body = {"task": "recovery_plan", "input": "CUDA out of memory", "models": ["gemma3:4b"]}
    headers = {"Authorization": f"Bearer {CAPPED_KEY}"}
    results: list[requests.Response] = []
    lock = threading.Lock()

    def call() -> None:
        response = requests.post(url, json=body, headers=headers, timeout=30)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 429, 429], [(r.status_code, r.text[:200]) for r in results]
    refused = [r for r in results if r.status_code == 429]
    assert all(r.json()["reason"] == "key_limit" for r in refused)
    # The place is given back: the next call goes through.
    assert requests.post(url, json=body, headers=headers, timeout=30).status_code == 200


def test_ollamas_api_status_is_served_on_the_proxy_port(secured):
    _mode, service = secured
    headers = {"X-API-Key": ADMIN_KEY}
    proxied = requests.get(service.proxy_url + "/api/status", headers=headers, timeout=10)
    assert proxied.status_code == 200, proxied.text
    assert proxied.json() == {"cloud": {"disabled": False, "source": "none"}}
    assert "X-Error-Source" not in proxied.headers  # Ollama's answer, not ours
    ours = requests.get(service.management_url + "/api/status", headers=headers, timeout=10)
    assert ours.status_code == 200 and "cloud" not in ours.json()
    page = requests.get(service.proxy_url + "/ui/", timeout=10)
    assert page.status_code == 404  # the page itself stays on the management port


@pytest.mark.parametrize("host", ["llm-service:11434", "llm-service.default.svc.cluster.local"])
def test_the_sdks_keep_working_with_a_service_name_as_host(secured, host):
    """The `ollama` and `openai` packages, as n8n-like callers in compose or k8s use them."""
    import ollama
    import openai

    mode, service = secured
    if mode != "all":
        pytest.skip("once is enough")
    auth = {"Authorization": f"Bearer {USER_KEY}", "Host": host}
    client = ollama.Client(host=service.proxy_url, headers=auth)
    assert client.generate(model=MODEL, prompt="x").response
    assert client.list().models
    oai = openai.OpenAI(base_url=service.proxy_url + "/v1", api_key=USER_KEY,
                        default_headers={"Host": host}, max_retries=0)  # fmt: skip
    reply = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content
    refused = ollama.Client(host=service.proxy_url, headers={**auth, "Host": "evil.example"})
    with pytest.raises(ollama.ResponseError) as err:
        refused.list()
    assert err.value.status_code == 403
