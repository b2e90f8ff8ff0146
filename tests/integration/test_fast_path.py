"""The inference fast path (fast_path.py) answers exactly as the Flask path would.

Each case sends the same request twice: with a Content-Length body (served by the fast path)
and with a chunked body (which the fast path leaves to Flask), then compares status, headers
and body. Plus: the routing it bypasses, the API key's concurrency place given back on both
paths, and one access-log line per request.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from management_api.access.auth import KeyRing, load_keys
from management_api.access.cors import CorsPolicy
from management_api.app import create_app
from management_api.proxy.inference import INFERENCE_ROUTES
from management_api.routes.fast_path import InferenceFastPath
from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess

KEY = "fast-path-key-0123456789"
CAPPED = "fast-path-capped-0123456"
ORIGIN = "http://dashboard.local:3001"
MODEL = "llama3.2:1b"
LIMITS = """
[defaults]
max_concurrency = 4
max_queue = 8
[[models]]
match = "gemma3:4b"
max_concurrency = 1
max_queue = 0
"""
# Differ per response by nature, whichever path served it.
VOLATILE_HEADERS = {"date", "x-queue-wait-ms", "content-length", "transfer-encoding"}


@pytest.fixture(scope="module")
def service(emulator: FakeOllama, tmp_path_factory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("fast-path")
    (state / "limits.toml").write_text(LIMITS)
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(state / "limits.toml"),
        "LLM_AUTH_MODE": "all",
        "LLM_API_KEYS": f"app:{KEY}:user,batch:{CAPPED}:user:1",
        "LLM_CORS_ORIGINS": ORIGIN,
        "LLM_MAX_BODY_MB": "1",
    }
    with ServiceProcess(env=env) as process:
        yield process
        process.assert_alive()


@pytest.fixture(autouse=True)
def fresh_emulator(emulator: FakeOllama) -> None:
    emulator.reset()


def send(
    url: str, body: bytes, *, chunked: bool, key: str | None = KEY, **headers: str
) -> requests.Response:
    headers = {"Content-Type": "application/json", **headers}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = iter([body]) if chunked else body  # a generator body goes out chunked
    return requests.post(url, data=data, headers=headers, timeout=30)


def both(url: str, body: bytes, **kwargs) -> tuple[requests.Response, requests.Response]:
    fast = send(url, body, chunked=False, **kwargs)
    flask = send(url, body, chunked=True, **kwargs)
    return fast, flask


def comparable_headers(response: requests.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower() not in VOLATILE_HEADERS}


def assert_same(fast: requests.Response, flask: requests.Response, *, body: bool = True) -> None:
    assert fast.status_code == flask.status_code, (fast.text, flask.text)
    assert comparable_headers(fast) == comparable_headers(flask)
    assert ("x-queue-wait-ms" in fast.headers) == ("x-queue-wait-ms" in flask.headers)
    if body:
        assert fast.content == flask.content


def generate(model: str = MODEL, **extra) -> bytes:
    return json.dumps({"model": model, "prompt": "hi", "stream": False, **extra}).encode()


def test_every_fast_route_is_a_forwarding_route_in_flask():
    # The fast path must never shadow a management route: Flask would forward these too.
    adapter = create_app().url_map.bind("localhost")
    for path in INFERENCE_ROUTES:
        endpoint, _ = adapter.match(path, method="POST")
        assert endpoint in {"ollama_api.forward", "openai_api.forward"}, path


def test_the_fast_path_serves_exactly_the_inference_posts_with_a_length():
    # The parity tests below would pass with the fast path switched off; this one would not.
    handed_on = []

    def flask_app(environ, start_response):
        handed_on.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        start_response("204 NO CONTENT", [])
        return []

    keyring = KeyRing("all", load_keys([f"app:{KEY}:user"], None))
    fast = InferenceFastPath(flask_app, gateway=None, keyring=keyring,  # type: ignore[arg-type]
                             cors=CorsPolicy([]), max_body_bytes=1024)  # fmt: skip

    def call(method: str, path: str, length: str | None) -> str:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(b"{}")}
        if length is not None:
            environ["CONTENT_LENGTH"] = length
        seen = []
        body = fast(environ, lambda status, headers: seen.append(status))
        body.close() if hasattr(body, "close") else None
        return seen[0]

    # No key: the fast path answers 401 itself, before any gateway is needed.
    for path in INFERENCE_ROUTES:
        assert call("POST", path, "2") == "401 UNAUTHORIZED"
    assert handed_on == []
    assert call("POST", "/api/generate", None) == "204 NO CONTENT"  # chunked: Flask's
    assert call("GET", "/api/generate", "2") == "204 NO CONTENT"
    assert call("POST", "/api/tags", "2") == "204 NO CONTENT"
    assert call("POST", "/api/models/pull", "2") == "204 NO CONTENT"
    assert len(handed_on) == 4


def test_success_is_identical(service):
    fast, flask = both(service.proxy_url + "/api/generate", generate(),
                       **{"X-Request-ID": "same-id"})  # fmt: skip
    assert_same(fast, flask, body=False)
    assert fast.status_code == 200 and fast.headers["X-Request-ID"] == "same-id"
    assert fast.json().keys() == flask.json().keys()
    assert fast.json()["response"] == flask.json()["response"]


def test_streams_are_identical(service):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    fast, flask = both(service.proxy_url + "/api/chat", body, **{"X-Request-ID": "stream-id"})
    assert_same(fast, flask, body=False)
    assert fast.headers["Content-Type"] == "application/x-ndjson"
    fast_lines = [json.loads(line) for line in fast.text.splitlines()]
    flask_lines = [json.loads(line) for line in flask.text.splitlines()]
    assert [line["message"]["content"] for line in fast_lines] == [
        line["message"]["content"] for line in flask_lines
    ]
    assert fast_lines[-1]["done"] is True


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", generate("not-installed:7b")),  # Ollama's 404, passed through
        ("/api/generate", b'{"model": '),  # Ollama's 400 for malformed JSON
        ("/api/chat", generate("Bad Name!")),  # invalid name: Ollama's own answer
        ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": []}).encode()),
    ],
)
def test_upstream_errors_are_identical(service, path, body):
    fast, flask = both(service.proxy_url + path, body, **{"X-Request-ID": "error-id"})
    assert fast.status_code >= 400
    assert_same(fast, flask)


@pytest.mark.parametrize("path", ["/api/generate", "/v1/embeddings"])
def test_auth_errors_are_identical(service, path):
    for key in (None, "not-a-valid-key-0123456789"):
        fast, flask = both(service.proxy_url + path, generate(), key=key,
                           **{"X-Request-ID": "auth-id", "Origin": ORIGIN})  # fmt: skip
        assert fast.status_code == 401
        assert fast.headers["WWW-Authenticate"] == 'Bearer realm="llm-service"'
        assert fast.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert_same(fast, flask)


def test_admission_429_is_identical(service, emulator):
    # gemma3:4b may run one request and queue none: while one runs, the next is refused.
    emulator.set_model("gemma3:4b", tokens=20, tokens_per_second=10, ttft_seconds=0)
    url = service.proxy_url + "/v1/chat/completions"
    body = json.dumps({"model": "gemma3:4b", "messages": [{"role": "user", "content": "x"}]})
    holder = threading.Thread(target=send, args=(url, body.encode()), kwargs={"chunked": False})
    holder.start()
    try:
        time.sleep(0.5)
        fast, flask = both(url, body.encode(), **{"X-Request-ID": "busy-id"})
    finally:
        holder.join(30)
    assert fast.status_code == 429
    assert fast.json()["error"]["type"] == "rate_limit_error"  # the OpenAI envelope
    assert_same(fast, flask, body=False)
    assert fast.json()["error"]["code"] == flask.json()["error"]["code"] == "concurrency_limit"


def test_oversized_body_gets_413_on_both_paths(service):
    body = generate(padding="x" * (1024 * 1024 + 1))
    fast, flask = both(service.proxy_url + "/api/generate", body)
    assert fast.status_code == flask.status_code == 413
    assert fast.json()["type"] == flask.json()["type"] == "payload_too_large"
    assert fast.headers["X-Error-Source"] == "llm-service"


@pytest.mark.parametrize("chunked", [False, True], ids=["fast", "flask"])
def test_key_place_is_given_back_after_each_request(service, chunked):
    # A key capped at 1 must be able to send request after request. Flask gives the place back
    # when the server closes the response, which can come a moment after the client read the
    # last byte (seen under a parallel run): a 429 is retried for a while; a place that is
    # never given back still fails.
    url = service.proxy_url + "/api/generate"
    for _ in range(3):
        deadline = time.monotonic() + 5
        response = send(url, generate(), chunked=chunked, key=CAPPED)
        while response.status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.02)
            response = send(url, generate(), chunked=chunked, key=CAPPED)
        assert response.status_code == 200, response.text


def test_key_limit_is_identical_and_released(service, emulator):
    emulator.set_model(MODEL, tokens=20, tokens_per_second=10, ttft_seconds=0)
    url = service.proxy_url + "/api/generate"
    holder = threading.Thread(
        target=send, args=(url, generate()), kwargs={"chunked": False, "key": CAPPED}
    )
    holder.start()
    try:
        time.sleep(0.5)
        fast, flask = both(url, generate(), key=CAPPED, **{"X-Request-ID": "cap-id"})
    finally:
        holder.join(30)
    assert fast.status_code == 429 and fast.json()["reason"] == "key_limit"
    assert_same(fast, flask)
    emulator.set_model(MODEL, tokens=1, tokens_per_second=1000, ttft_seconds=0)
    assert send(url, generate(), chunked=False, key=CAPPED).status_code == 200


def test_one_access_log_line_per_request(service):
    url = service.proxy_url + "/api/generate"
    ok = send(url, generate(), chunked=False, **{"X-Request-ID": "log-ok-id"})
    refused = send(url, generate(), chunked=False, key=None, **{"X-Request-ID": "log-401-id"})
    assert (ok.status_code, refused.status_code) == (200, 401)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line[line.index("{") :]) for line in service.output().splitlines()
                 if "llm_service.access" in line and "log-" in line]  # fmt: skip
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == 2, lines
    assert by_id["log-ok-id"]["status"] == 200 and by_id["log-ok-id"]["key"] == "app"
    assert by_id["log-ok-id"]["model"] == MODEL and "ttfb_ms" in by_id["log-ok-id"]
    assert by_id["log-401-id"]["status"] == 401 and by_id["log-401-id"]["key"] is None
