"""The proxy over real sockets: gunicorn + the Ollama emulator (proxy-practice.md §7 matrix)."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

from tests.integration.conftest import BASE_LIMITS

MODEL = "llama3.2:latest"  # default limits: 1 running, 2 queued


def slow(emulator, model: str, seconds: float = 1.5, tokens: int = 15) -> None:
    """Make each generation of `model` take about `seconds`."""
    emulator.set_model(model, tokens=tokens, tokens_per_second=tokens / seconds, ttft_seconds=0)


def post_async(url: str, body: dict, request_id: str | None = None, timeout: float = 30):
    """Start a request in a thread; returns (thread, result dict)."""
    result: dict = {}
    headers = {"X-Request-ID": request_id} if request_id else {}

    def run() -> None:
        try:
            response = requests.post(url, json=body, headers=headers, timeout=timeout)
            result["status"] = response.status_code
            result["headers"] = response.headers
            result["text"] = response.text
        except requests.RequestException as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


class RawClient:
    """A client on a raw socket, so a test decides exactly when the connection closes."""

    def __init__(self, base_url: str, path: str, body: dict, request_id: str) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port))
        payload = json.dumps(body).encode()
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"X-Request-ID: {request_id}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )

    def read_some(self, timeout: float = 10) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536)

    def close(self) -> float:
        closed_at = time.monotonic()
        self.sock.close()
        return closed_at


def upstream_connection(emulator, request_id: str) -> dict | None:
    for conn in emulator.observations()["connections"]:
        if conn.get("request_id") == request_id:
            return conn
    return None


def wait_upstream_closed(service, emulator, request_id: str) -> dict:
    holder: dict = {}

    def closed() -> bool:
        conn = upstream_connection(emulator, request_id)
        if conn and conn.get("closed_at"):
            holder.update(conn)
            return True
        return False

    service.wait_for(closed, timeout=5)
    return holder


# --- 1. limit N: N+1 queues, N+Q+1 gets 429 with Retry-After


def test_over_limit_queues_then_rejects_with_retry_after(service, emulator):
    slow(emulator, MODEL, seconds=1.5)
    url = service.proxy + "/api/generate"
    body = {"model": "llama3.2", "prompt": "hold", "stream": False}
    running = post_async(url, body)
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    queued = [post_async(url, body) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)

    rejected = requests.post(url, json=body, timeout=10)
    assert rejected.status_code == 429
    assert int(rejected.headers["Retry-After"]) >= 1
    payload = rejected.json()
    assert payload["type"] == "concurrency_limit"
    assert payload["reason"] == "queue_full"
    assert payload["retry_after_seconds"] == int(rejected.headers["Retry-After"])
    assert (payload["model"], payload["limit"], payload["in_flight"], payload["queued"]) == (
        "llama3.2",
        1,
        1,
        2,
    )
    for thread, result in [running, *queued]:
        thread.join(15)
        assert result["status"] == 200, result
        assert json.loads(result["text"])["done"] is True
    assert emulator.observations()["max_in_flight"].get(MODEL) == 1


# --- 2. a queued request past its wait limit gets 429 and its place is released


def test_queue_timeout_releases_the_place(service, emulator):
    service.set_limits(BASE_LIMITS.replace("max_wait_seconds = 30", "max_wait_seconds = 0.5"))
    slow(emulator, MODEL, seconds=2)
    url = service.proxy + "/api/generate"
    holder = post_async(url, {"model": MODEL, "prompt": "hold", "stream": False})
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    started = time.monotonic()
    late = requests.post(url, json={"model": MODEL, "prompt": "late"}, timeout=10)
    assert late.status_code == 429
    assert late.json()["reason"] == "queue_timeout"
    assert late.json()["retry_after_seconds"] == int(late.headers["Retry-After"])
    assert time.monotonic() - started < 2  # rejected at its deadline, not when the slot freed
    assert service.model_counters(MODEL)["queued"] == 0
    holder[0].join(10)
    assert holder[1]["status"] == 200


# --- 3. client disconnects: queued, before the first byte, mid-stream


def test_disconnect_while_queued_frees_the_place(service, emulator):
    slow(emulator, MODEL, seconds=2)
    holder = post_async(service.proxy + "/api/generate", {"model": MODEL, "prompt": "hold"})
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    client = RawClient(service.proxy, "/api/generate", {"model": MODEL, "prompt": "q"}, "gone-q")
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 1)
    client.close()
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 0, timeout=2)
    assert service.model_counters(MODEL)["rejected"]["cancelled"] >= 1
    holder[0].join(10)
    # The cancelled request never reached Ollama.
    assert upstream_connection(emulator, "gone-q") is None


def test_disconnect_before_first_byte_closes_upstream(service, emulator):
    emulator.fault("stall_first_byte", route="/api/generate", seconds=8)
    client = RawClient(service.proxy, "/api/generate", {"model": MODEL, "prompt": "x"}, "gone-fb")
    service.wait_for(lambda: upstream_connection(emulator, "gone-fb") is not None)
    time.sleep(0.3)  # Ollama is "loading"; nothing has been sent yet
    closed_at = client.close()
    conn = wait_upstream_closed(service, emulator, "gone-fb")
    assert conn["closed_at"] - closed_at < 0.5, conn
    assert conn["first_byte_at"] is None
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=2)


def test_disconnect_mid_stream_closes_upstream(service, emulator):
    slow(emulator, MODEL, seconds=4, tokens=40)
    client = RawClient(service.proxy, "/api/generate", {"model": MODEL, "prompt": "x"}, "gone-mid")
    first = client.read_some()
    assert first.startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    closed_at = client.close()
    conn = wait_upstream_closed(service, emulator, "gone-mid")
    assert conn["closed_at"] - closed_at < 0.5, conn
    assert conn["outcome"] == "client_closed"
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=2)


# --- 4. upstream faults: no leaked slots


def test_upstream_hang_hits_the_first_byte_timeout(service, emulator):
    service.set_limits(
        BASE_LIMITS.replace("first_byte_timeout_seconds = 10", "first_byte_timeout_seconds = 1")
    )
    emulator.fault("hang", route="/api/generate")
    response = requests.post(
        service.proxy + "/api/generate", json={"model": MODEL, "prompt": "x"}, timeout=10
    )
    assert response.status_code == 504
    assert response.json()["type"] == "timeout"
    # Given back when the server closes the response, a moment after the client has it all.
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=5)


def test_error_line_after_200_passes_through_unchanged(service, emulator):
    emulator.fault("error_line", route="/api/generate", after_chunks=2, message="runner died")
    response = requests.post(
        service.proxy + "/api/generate", json={"model": MODEL, "prompt": "x"}, timeout=10
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200
    assert lines[-1] == {"error": "runner died"}
    assert not any(line.get("done") for line in lines)
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=5)


def test_drop_mid_stream_ends_with_one_error_line(service, emulator):
    emulator.fault("drop_mid_stream", route="/api/generate", after_chunks=2)
    response = requests.post(
        service.proxy + "/api/generate", json={"model": MODEL, "prompt": "x"}, timeout=10
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200
    assert "error" in lines[-1] and len([x for x in lines if "error" in x]) == 1
    assert not any(line.get("done") for line in lines)
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=2)


def test_openai_stream_drop_ends_with_an_sse_error_event(service, emulator):
    emulator.fault("drop_mid_stream", route="/v1/chat/completions", after_chunks=2)
    response = requests.post(
        service.proxy + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
        timeout=10,
    )
    events = [e for e in response.text.split("\n\n") if e.strip()]
    assert events[-1].startswith("data: ")
    assert "error" in json.loads(events[-1][len("data: ") :])
    assert "data: [DONE]" not in response.text


def test_upstream_status_error_passes_through(service, emulator):
    emulator.fault("status", route="/api/generate", status=500, message="boom")
    response = requests.post(
        service.proxy + "/api/generate", json={"model": MODEL, "prompt": "x"}, timeout=10
    )
    assert response.status_code == 500
    assert response.json() == {"error": "boom"}
    assert "X-Error-Source" not in response.headers  # Ollama's error, not ours


def test_ollama_down_gives_503_with_retry_after(emulator, tmp_path):
    from tests.service_harness import ServiceProcess, free_port

    env = {"OLLAMA_URL": f"http://127.0.0.1:{free_port()}", "LLM_UPSTREAM_GRACE_SECONDS": "0.5"}
    with ServiceProcess(env=env) as service:
        started = time.monotonic()
        response = requests.post(
            service.proxy_url + "/api/generate", json={"model": MODEL, "prompt": "x"}, timeout=10
        )
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert time.monotonic() - started >= 0.4  # it retried during the grace window
        assert "127.0.0.1" not in response.text


# --- 5. the management API answers while every slot and queue place is taken


def test_management_routes_stay_fast_when_saturated(service, emulator):
    slow(emulator, MODEL, seconds=3)
    url = service.proxy + "/api/generate"
    body = {"model": MODEL, "prompt": "hold", "stream": False}
    threads = [post_async(url, body)]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, body) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    timings = []
    for path in ["/health/live", "/api/limits"] * 5:
        started = time.perf_counter()
        assert requests.get(service.management + path, timeout=5).status_code == 200
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.1, timings
    for thread, _ in threads:
        thread.join(20)


# --- the 300-request accounting test


def test_300_concurrent_requests_over_three_models(service, emulator):
    limits = {"llama3.2:1b": 1, "qwen3:14b-q8": 2, "gemma3:4b": 4}
    for model in limits:
        emulator.set_model(model, tokens=4, tokens_per_second=100, ttft_seconds=0)

    def one(i: int):
        model = list(limits)[i % 3]
        try:
            response = requests.post(
                service.proxy + "/api/generate",
                json={"model": model, "prompt": f"p{i}", "stream": i % 2 == 0},
                timeout=60,
            )
        except requests.RequestException as exc:
            return model, "error", repr(exc)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            return model, 429, None
        lines = response.text.strip().splitlines()
        done = json.loads(lines[-1])
        return model, response.status_code, done.get("done")

    with ThreadPoolExecutor(max_workers=300) as pool:
        results = list(pool.map(one, range(300)))
    assert all(status in (200, 429) for _, status, _ in results), results
    assert all(done is True for _, status, done in results if status == 200)
    observed = emulator.observations()["max_in_flight"]
    for model, limit in limits.items():
        assert observed[model] == limit, (model, observed)
    totals = service.totals()
    assert totals["in_flight"] == 0 and totals["queued"] == 0


# --- FIFO


def test_queued_requests_are_admitted_in_arrival_order(service, emulator):
    slow(emulator, MODEL, seconds=0.5, tokens=5)
    service.set_limits(BASE_LIMITS.replace("max_queue = 2\n", "max_queue = 10\n", 1))
    url = service.proxy + "/api/generate"
    body = {"model": MODEL, "prompt": "fifo", "stream": False}
    threads = [post_async(url, body, request_id="fifo-0")]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    for i in range(1, 6):
        threads.append(post_async(url, body, request_id=f"fifo-{i}"))
        service.wait_for(lambda i=i: service.model_counters(MODEL)["queued"] == i)
    for thread, result in threads:
        thread.join(20)
        assert result["status"] == 200
    conns = [c for c in emulator.observations()["connections"] if c["request_id"] or ""]
    order = [c["request_id"] for c in sorted(conns, key=lambda c: c["opened_at"])]
    assert [r for r in order if r.startswith("fifo-")] == [f"fifo-{i}" for i in range(6)]


# --- limits reload while requests run


def test_limits_file_edit_applies_without_dropping_requests(service, emulator, caplog):
    slow(emulator, MODEL, seconds=1.5)
    url = service.proxy + "/api/generate"
    body = {"model": MODEL, "prompt": "x", "stream": False}
    threads = [post_async(url, body)]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, body) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    # Edited on disk only: the poll (every 0.2 s here) must pick it up.
    service.limits_file.write_text(
        BASE_LIMITS.replace(
            "max_concurrency = 1\nmax_queue = 2", "max_concurrency = 3\nmax_queue = 2"
        )
    )
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 3, timeout=5)
    for thread, result in threads:
        thread.join(15)
        assert result["status"] == 200
    service.limits_file.write_text("[defaults]\nmax_concurrency = 'lots'\n")
    refused = requests.post(service.management + "/api/limits/reload", timeout=5)
    assert refused.status_code == 422
    assert refused.json()["status"] == "kept"
    assert service.model_counters(MODEL)["limits"]["max_concurrency"] == 3
    assert "max_concurrency" in service.process.output()


# --- unload everything while every slot is busy


def test_unload_all_answers_within_5_s_while_saturated(service, emulator):
    slow(emulator, MODEL, seconds=3)
    url = service.proxy + "/api/generate"
    body = {"model": MODEL, "prompt": "hold", "stream": False}
    threads = [post_async(url, body)]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, body) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    started = time.monotonic()
    response = requests.post(
        service.management + "/api/generate", json={"model": "", "keep_alive": 0}, timeout=5
    )
    assert time.monotonic() - started < 5
    assert response.status_code == 200
    payload = response.json()
    assert payload["done"] is True and payload["done_reason"] == "unload"
    assert MODEL in payload["unloaded_models"]
    chat = requests.post(
        service.management + "/api/chat", json={"model": "", "keep_alive": 0}, timeout=5
    )
    assert chat.status_code == 200 and chat.json()["message"]["role"] == "assistant"
    for thread, _ in threads:
        thread.join(20)


def test_load_and_unload_forms_bypass_the_queue(service, emulator):
    slow(emulator, MODEL, seconds=2)
    url = service.proxy + "/api/generate"
    threads = [post_async(url, {"model": MODEL, "prompt": "hold"})]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, {"model": MODEL, "prompt": "q"}) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    for body, reason in (({"model": MODEL}, "load"), ({"model": MODEL, "keep_alive": 0}, "unload")):
        response = requests.post(url, json=body, timeout=5)
        assert response.status_code == 200
        assert response.json()["done_reason"] == reason
    for thread, _ in threads:
        thread.join(20)


def test_missing_and_unknown_models_get_ollamas_answer_never_429(service, emulator):
    slow(emulator, MODEL, seconds=2)
    url = service.proxy + "/api/generate"
    threads = [post_async(url, {"model": MODEL, "prompt": "hold"})]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    cases = [
        ({"prompt": "x"}, 404, "model '' not found"),
        ({"model": "no-such-model", "prompt": "x"}, 404, "model 'no-such-model' not found"),
        ({"model": "-bad", "prompt": "x"}, 400, "invalid model name"),
    ]
    for body, status, text in cases:
        response = requests.post(url, json=body, timeout=5)
        assert (response.status_code, response.json()["error"]) == (status, text)
    empty = requests.post(url, data=b"", timeout=5)
    assert (empty.status_code, empty.json()["error"]) == (400, "missing request body")
    for thread, _ in threads:
        thread.join(20)


# --- header hygiene


def test_host_origin_and_authorization_are_not_forwarded(service, emulator):
    # The service judges Host and Origin itself (access/guard.py; a public name or a foreign
    # origin gets 403, tests/integration/test_security.py) and drops them: Ollama, listening
    # on loopback, would refuse a container name like this one, which compose callers use.
    emulator.configure(loopback_checks=True)
    try:
        response = requests.post(
            service.proxy + "/api/generate",
            json={"model": MODEL, "prompt": "x", "stream": False},
            headers={
                "Host": "llm-service:11434",
                "Origin": "http://localhost:3000",
                "Authorization": "Bearer secret",
                "X-Request-ID": "hygiene-1",
            },
            timeout=10,
        )
    finally:
        emulator.configure(loopback_checks=False)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "hygiene-1"
    assert "X-Queue-Wait-Ms" in response.headers
    seen = upstream_connection(emulator, "hygiene-1")["headers"]
    assert seen.get("origin") is None and seen.get("authorization") is None
    assert "llm-service" not in (seen.get("host") or "")
