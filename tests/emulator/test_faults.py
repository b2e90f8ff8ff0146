"""Every fault kind once, plus the matching rules (route, model, times)."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama

STREAM = {"model": "llama3.2:1b", "prompt": "hi"}


def generate(fake: FakeOllama, timeout: float = 10, **extra: object) -> requests.Response:
    return requests.post(
        fake.url + "/api/generate", json={**STREAM, **extra}, stream=True, timeout=timeout
    )


def test_hang_until_the_client_leaves(fake: FakeOllama) -> None:
    fake.fault("hang", route="/api/generate")
    with pytest.raises(requests.exceptions.ReadTimeout):
        generate(fake, timeout=(5, 0.3))
    record = fake.wait_for(lambda: next(iter(fake.connections(outcome="client_closed")), None))
    assert record["fault"] == "hang" and record["first_byte_at"] is None


def test_stall_first_byte_then_normal_answer(fake: FakeOllama) -> None:
    fake.fault("stall_first_byte", route="/api/tags", seconds=0.4)
    started = time.monotonic()
    response = requests.get(fake.url + "/api/tags")
    assert response.status_code == 200 and response.json()["models"]
    assert time.monotonic() - started >= 0.4


def test_drop_mid_stream(fake: FakeOllama) -> None:
    fake.fault("drop_mid_stream", route="/api/generate", after_chunks=3)
    received = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for line in generate(fake).iter_lines():
            received.append(json.loads(line))
    assert len(received) == 3 and not any(line["done"] for line in received)
    (record,) = fake.connections(path="/api/generate")
    assert (record["outcome"], record["lines"], record["fault"]) == ("fault", 3, "drop_mid_stream")


def test_error_line_mid_stream(fake: FakeOllama) -> None:
    fake.fault("error_line", route="/api/generate", after_chunks=2, message="boom")
    response = generate(fake)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.iter_lines()]
    assert len(lines) == 3 and lines[-1] == {"error": "boom"}
    assert not any(line.get("done") for line in lines)
    fake.fault("error_line", route="/api/generate")
    whole = generate(fake, stream=False)
    assert whole.status_code == 500
    assert whole.json()["error"].startswith("model runner has unexpectedly stopped")


def test_status_fault_native_and_openai(fake: FakeOllama) -> None:
    fake.fault("status", route="/api/chat", status=502, message="bad gateway")
    response = requests.post(fake.url + "/api/chat", json={"model": "llama3.2:1b", "messages": []})
    assert (response.status_code, response.json()) == (502, {"error": "bad gateway"})
    fake.fault("status", route="/v1/chat/completions", status=503, message="busy")
    openai = requests.post(
        fake.url + "/v1/chat/completions",
        json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert openai.status_code == 503
    assert openai.json()["error"] == {
        "message": "busy",
        "type": "api_error",
        "param": None,
        "code": None,
    }


def test_matching_rules(fake: FakeOllama) -> None:
    fake.fault("status", route="/api/generate", model="llama3.2", status=500, message="x", times=2)
    assert generate(fake).status_code == 200  # other model
    assert generate(fake, model="llama3.2:latest").status_code == 500  # normalised match
    assert generate(fake, model="LLAMA3.2").status_code == 500
    assert generate(fake, model="llama3.2").status_code == 200  # used up
    forever = fake.fault("status", route="/api/tags", status=503, message="down", times=0)
    assert forever.startswith("f")
    assert [requests.get(fake.url + "/api/tags").status_code for _ in range(3)] == [503] * 3
    fake.clear_faults()
    assert requests.get(fake.url + "/api/tags").status_code == 200


def test_bad_fault_specs_are_rejected(fake: FakeOllama) -> None:
    for spec in (
        {"kind": "explode"},
        {"kind": "status", "status": 200},
        {"kind": "fail_pull", "mode": "x"},
    ):
        assert requests.post(fake.url + "/_fake/faults", json=spec).status_code == 400
    assert requests.post(fake.url + "/_fake/models", json={"model": "ghost"}).status_code == 404
