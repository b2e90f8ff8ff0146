"""The Hermes-style API over real sockets."""

from __future__ import annotations

import json

import requests

from tests.integration.test_proxy import MODEL, post_async, slow


def sse_events(text: str) -> list:
    return [
        json.loads(block[len("data: ") :])
        for block in text.split("\n\n")
        if block.startswith("data: ")
    ]


def test_generate_returns_result_and_stats(service, emulator):
    direct = requests.post(
        emulator.url + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False},
        timeout=10,
    ).json()
    response = requests.post(
        service.management + f"/v1/llm/{MODEL}", json={"prompt": "hi"}, timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == direct["response"]
    assert body["model"] == MODEL and body["done_reason"] == "stop"
    assert body["eval_count"] == direct["eval_count"]
    assert body["duration_ms"] >= 0


def test_stream_sends_chunks_then_done(service, emulator):
    response = requests.post(
        service.management + f"/v1/llm/{MODEL}/stream", json={"prompt": "hi"}, timeout=10
    )
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert all("chunk" in e for e in events[:-1]) and len(events) > 2
    assert events[-1]["done"] is True and events[-1]["eval_count"] == len(events) - 1


def test_a_long_prompt_answers_with_its_counts(service, emulator):
    # Ollama's last line then carries a `context` of 72,000 numbers: read without them.
    prompt = " ".join(f"word{i}" for i in range(30000))
    body = {"model": MODEL, "prompt": prompt, "stream": False}
    direct = requests.post(emulator.url + "/api/generate", json=body, timeout=30).json()
    assert len(direct["context"]) > 60000
    whole = requests.post(service.management + f"/v1/llm/{MODEL}", json={"prompt": prompt},
                          timeout=30)  # fmt: skip
    assert whole.status_code == 200, whole.text[:300]
    assert whole.json()["result"] == direct["response"]
    assert whole.json()["prompt_eval_count"] == direct["prompt_eval_count"]
    stream = requests.post(service.management + f"/v1/llm/{MODEL}/stream",
                           json={"prompt": prompt}, timeout=30)  # fmt: skip
    events = sse_events(stream.text)
    assert "".join(e["chunk"] for e in events[:-1]) == direct["response"]
    assert events[-1]["done"] is True
    assert events[-1]["prompt_eval_count"] == direct["prompt_eval_count"]


def test_validation_and_unknown_model_errors_have_real_statuses(service):
    url = service.management + "/v1/llm/"
    bad = requests.post(url + MODEL, json={"prompt": ""}, timeout=5)
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "prompt is required and must be a non-empty string",
        "type": "validation_error",
        "field": "prompt",
    }
    missing = requests.post(url + "no-such:1b/stream", json={"prompt": "x"}, timeout=5)
    assert missing.status_code == 404
    assert missing.json()["type"] == "model_not_found"
    assert MODEL in missing.json()["available_models"]


def test_stream_over_limit_is_429_before_any_event(service, emulator):
    slow(emulator, MODEL, seconds=2)
    url = service.proxy + "/api/generate"
    threads = [post_async(url, {"model": MODEL, "prompt": "hold"})]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, {"model": MODEL, "prompt": "q"}) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    response = requests.post(
        service.management + f"/v1/llm/{MODEL}/stream", json={"prompt": "x"}, timeout=5
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"]
    body = response.json()
    assert body["type"] == "concurrency_limit"
    assert body["max_concurrency"] == 1 and body["current"] == 1
    for thread, _ in threads:
        thread.join(20)


def test_timeout_ms_gives_408(service, emulator):
    emulator.fault("stall_first_byte", route="/api/generate", seconds=3)
    response = requests.post(
        service.management + f"/v1/llm/{MODEL}", json={"prompt": "x", "timeout_ms": 300}, timeout=10
    )
    assert response.status_code == 408
    assert response.json() == {
        "error": "Request timed out after 300ms",
        "type": "timeout",
        "timeout_ms": 300,
    }
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=3)


def test_status_reports_ollama_and_models(service):
    response = requests.get(service.management + "/v1/status", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and body["checks"]["ollama"] == "ok"
    assert MODEL in body["models"]


def test_stream_client_leaving_during_load_frees_the_slot(service, emulator):
    from tests.integration.test_proxy import RawClient, wait_upstream_closed

    emulator.fault("stall_first_byte", route="/api/generate", seconds=8)
    client = RawClient(service.management, f"/v1/llm/{MODEL}/stream", {"prompt": "x"}, "h-gone")
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    head = client.read_some()
    assert head.startswith(b"HTTP/1.1 200")  # admitted: 200 + SSE headers, then heartbeats
    closed_at = client.close()
    conn = wait_upstream_closed(service, emulator, "h-gone")
    assert conn["closed_at"] - closed_at < 1.0
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=3)
