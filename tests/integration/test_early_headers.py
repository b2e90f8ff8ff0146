"""Early headers for long non-stream waits, through the real service and real clients."""

from __future__ import annotations

import json
import threading
import time

import ollama
import openai
import requests

MODEL = "llama3.2:1b"  # limit 1 in the test limits below
LIMITS = """
[defaults]
max_concurrency = 1
max_queue = 10
max_wait_seconds = 30
first_byte_timeout_seconds = 30
idle_timeout_seconds = 10
[[models]]
match = "llama3.2:1b"
early_headers_after_seconds = 1
max_wait_seconds = 2.5
"""


def slow(emulator, seconds: float) -> None:
    emulator.set_model(MODEL, tokens=12, tokens_per_second=12 / seconds, ttft_seconds=0)


def test_headers_arrive_after_the_configured_time_and_the_body_parses(service, emulator):
    service.set_limits(LIMITS)
    slow(emulator, 2.5)
    started = time.monotonic()
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    with requests.post(
        service.proxy + "/api/generate", json=body, stream=True, timeout=30
    ) as response:
        headers_after = time.monotonic() - started
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["X-Early-Headers"] == "1"
        raw = response.raw.read()
    assert 0.9 <= headers_after < 2.4, headers_after  # before the 2.5 s generation ended
    assert raw.startswith(b" ") and raw.lstrip().startswith(b"{")
    payload = json.loads(raw)  # JSON allows the leading whitespace
    assert payload["done"] is True and payload["model"] == MODEL
    # requests' own decoder too:
    again = requests.post(service.proxy + "/api/generate", json=body, timeout=30)
    assert again.headers.get("X-Early-Headers") == "1"
    assert again.json()["done"] is True


def test_quick_answers_and_streams_are_untouched(service, emulator):
    service.set_limits(LIMITS)
    slow(emulator, 0.2)
    quick = requests.post(
        service.proxy + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False},
        timeout=30,
    )
    assert "X-Early-Headers" not in quick.headers and not quick.content.startswith(b" ")
    slow(emulator, 1.5)
    stream = requests.post(
        service.proxy + "/api/generate", json={"model": MODEL, "prompt": "hi"}, timeout=30
    )
    assert "X-Early-Headers" not in stream.headers
    assert stream.headers["Content-Type"] == "application/x-ndjson"


def test_ollama_and_openai_clients_parse_an_early_answer(service, emulator):
    service.set_limits(LIMITS)
    slow(emulator, 1.6)
    client = ollama.Client(host=service.proxy)
    answer = client.generate(MODEL, "hello", stream=False)
    assert answer.done and answer.response
    chat = client.chat(MODEL, [{"role": "user", "content": "hi"}], stream=False)
    assert chat.message.content
    oa = openai.OpenAI(base_url=service.proxy + "/v1", api_key="unused", max_retries=0)
    completion = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content
    served = emulator.observations()["requests"]
    assert served.get("POST /api/generate", 0) + served.get("POST /api/chat", 0) >= 2


def test_an_error_after_early_headers_ends_the_body_with_the_error_object(service, emulator):
    """The second request's queue wait runs out (max_wait 2.5 s) after its headers (1 s)."""
    service.set_limits(LIMITS)
    slow(emulator, 4.0)
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    first = threading.Thread(
        target=requests.post, args=(service.proxy + "/api/generate",), kwargs={"json": body}
    )
    first.start()
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    second = requests.post(service.proxy + "/api/generate", json=body, timeout=30)
    first.join(30)
    assert second.status_code == 200 and second.headers["X-Early-Headers"] == "1"
    assert second.content.startswith(b" ")
    error = second.json()
    assert set(error) == {"error", "details"}  # what n8n needs to route it to an error output
    assert "concurrency limit" in error["error"]
    details = error["details"]
    assert details["type"] == "concurrency_limit" and details["status"] == 429
    assert details["reason"] == "queue_timeout" and details["retry_after_seconds"] >= 1
    assert service.model_counters(MODEL)["rejected"]["queue_timeout"] == 1


def test_a_chunked_request_takes_the_flask_path_and_gets_early_headers_too(service, emulator):
    service.set_limits(LIMITS)
    slow(emulator, 1.6)
    body = json.dumps({"model": MODEL, "prompt": "hi", "stream": False}).encode()
    response = requests.post(  # a generator body is sent chunked: no Content-Length
        service.proxy + "/api/generate", data=iter([body]), timeout=30
    )
    assert response.status_code == 200
    assert response.headers["X-Early-Headers"] == "1"
    assert response.content.startswith(b" ") and response.json()["done"] is True


def test_a_queued_request_learns_its_queue_position_with_the_early_headers(service, emulator):
    service.set_limits(LIMITS.replace("max_wait_seconds = 2.5", "max_wait_seconds = 20"))
    slow(emulator, 2.5)
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    holder = threading.Thread(
        target=requests.post, args=(service.proxy + "/api/generate",), daemon=True,
        kwargs={"json": body, "timeout": 30},
    )  # fmt: skip
    holder.start()
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    ahead = threading.Thread(
        target=requests.post, args=(service.proxy + "/api/generate",), daemon=True,
        kwargs={"json": body, "timeout": 30, "headers": {"X-LLM-Priority": "interactive"}},
    )  # fmt: skip
    ahead.start()
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 1)
    with requests.post(
        service.proxy + "/api/generate", json=body, stream=True, timeout=30,
        headers={"X-LLM-Priority": "batch"},
    ) as response:  # fmt: skip
        assert response.headers["X-Early-Headers"] == "1"
        assert response.headers["X-Queue-Position"] == "1"  # the interactive one goes first
        assert json.loads(response.raw.read())["done"] is True
    holder.join(30)
    ahead.join(30)
