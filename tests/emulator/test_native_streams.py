"""Stream shapes, non-streamed answers, load/unload forms, keep-alive and /api/ps."""

from __future__ import annotations

import datetime
import json
import re
import time

import requests

from tests.fake_ollama.harness import FakeOllama

CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$")
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?(Z|[+-]\d\d:\d\d)$")
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


def parse_go_time(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp with up to nanosecond digits."""
    match = re.fullmatch(r"(.{19})(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    assert match, text
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    stamp = datetime.datetime.fromisoformat(base + zone).timestamp()
    return stamp + float("0." + (fraction or "0"))


def stream_lines(response: requests.Response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line]


def test_generate_stream_shape(fake: FakeOllama) -> None:
    response = requests.post(
        fake.url + "/api/generate", json={"model": "llama3.2", "prompt": "Why?"}, stream=True
    )
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = stream_lines(response)
    *chunks, final = lines
    assert len(chunks) == 12
    for chunk in chunks:
        assert list(chunk) == ["model", "created_at", "response", "done"]
        assert chunk["model"] == "llama3.2" and chunk["done"] is False
        assert CREATED_AT.match(chunk["created_at"])
    assert list(final) == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        *METRICS,
    ]
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert all(isinstance(final[key], int) and final[key] > 0 for key in METRICS)
    assert final["eval_count"] == 12
    # load_duration covers queue + load; the default load takes 50 ms.
    assert final["load_duration"] >= 40_000_000
    assert final["total_duration"] > final["load_duration"]


def test_generate_is_deterministic_and_non_streamed_matches(fake: FakeOllama) -> None:
    body = {"model": "llama3.2:1b", "prompt": "same prompt"}
    streamed = "".join(
        c["response"]
        for c in stream_lines(requests.post(fake.url + "/api/generate", json=body, stream=True))
    )
    whole = requests.post(fake.url + "/api/generate", json={**body, "stream": False})
    assert whole.headers["Content-Type"] == "application/json; charset=utf-8"
    data = whole.json()
    assert data["response"] == streamed and data["done"] is True
    assert list(data)[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]
    other = requests.post(
        fake.url + "/api/generate", json={**body, "prompt": "other", "stream": False}
    )
    assert other.json()["response"] != streamed


def test_raw_generate_has_no_context_and_num_predict_caps(fake: FakeOllama) -> None:
    body = {
        "model": "llama3.2:1b",
        "prompt": "x",
        "raw": True,
        "stream": False,
        "options": {"num_predict": 3},
    }
    data = requests.post(fake.url + "/api/generate", json=body).json()
    assert "context" not in data
    assert (data["done_reason"], data["eval_count"]) == ("length", 3)


def test_chat_stream_shape_and_thinking(fake: FakeOllama) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    *chunks, final = stream_lines(requests.post(fake.url + "/api/chat", json=body, stream=True))
    assert list(chunks[0]) == ["model", "created_at", "message", "done"]
    assert chunks[0]["message"]["role"] == "assistant"
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert final["message"] == {"role": "assistant", "content": ""}
    thinking = requests.post(
        fake.url + "/api/chat",
        json={
            "model": "qwen3:14b-q8",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        },
    ).json()
    assert thinking["message"]["thinking"] and thinking["message"]["content"]
    plain = requests.post(
        fake.url + "/api/chat",
        json={
            "model": "qwen3:14b-q8",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "think": False,
        },
    ).json()
    assert "thinking" not in plain["message"]


def test_load_and_unload_forms(fake: FakeOllama) -> None:
    for path, key in (("/api/generate", "response"), ("/api/chat", "message")):
        load = requests.post(fake.url + path, json={"model": "llama3.2:1b", "stream": True})
        assert load.headers["Content-Type"] == "application/json; charset=utf-8"
        data = load.json()
        assert (data["done"], data["done_reason"]) == (True, "load")
        assert list(data) == ["model", "created_at", key, "done", "done_reason"]
        unload = requests.post(fake.url + path, json={"model": "llama3.2:1b", "keep_alive": 0})
        assert unload.json()["done_reason"] == "unload"
        assert requests.get(fake.url + "/api/ps").json() == {"models": []}
    # Unload of a model that exists but is not loaded still answers.
    not_loaded = requests.post(
        fake.url + "/api/generate", json={"model": "gemma3:4b", "keep_alive": 0}
    )
    assert not_loaded.json()["done_reason"] == "unload"
    missing = requests.post(fake.url + "/api/generate", json={"model": "ghost", "keep_alive": 0})
    assert missing.status_code == 404
    observations = fake.observations()
    assert (observations["loads"], observations["unloads"]) == (2, 2)


def test_ps_fields_and_expiry(fake: FakeOllama) -> None:
    requests.post(fake.url + "/api/generate", json={"model": "llama3.2:1b", "keep_alive": "1s"})
    requests.post(fake.url + "/api/generate", json={"model": "gemma3:4b", "keep_alive": -1})
    models = requests.get(fake.url + "/api/ps").json()["models"]
    assert [m["name"] for m in models] == ["gemma3:4b", "llama3.2:1b"]  # latest expiry first
    first = models[0]
    assert list(first) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert LOCAL_TIME.match(first["expires_at"]) and first["expires_at"].startswith("23")
    assert first["context_length"] == 4096 and first["size_vram"] == first["size"]
    fake.wait_for(
        lambda: (
            [m["name"] for m in requests.get(fake.url + "/api/ps").json()["models"]]
            == ["gemma3:4b"]
        ),
        timeout=5,
    )


def test_omitted_keep_alive_keeps_the_previous_duration(fake: FakeOllama) -> None:
    requests.post(fake.url + "/api/generate", json={"model": "llama3.2:1b", "keep_alive": "10m"})
    requests.post(
        fake.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "x", "stream": False}
    )
    (model,) = requests.get(fake.url + "/api/ps").json()["models"]
    remaining = parse_go_time(model["expires_at"]) - time.time()
    assert 590 < remaining <= 600  # not the 5m default


def test_keep_alive_zero_unloads_when_idle(fake: FakeOllama) -> None:
    requests.post(
        fake.url + "/api/generate",
        json={"model": "llama3.2:1b", "prompt": "x", "keep_alive": 0, "stream": False},
    )
    assert requests.get(fake.url + "/api/ps").json() == {"models": []}


def test_tags_order_and_shape(fake: FakeOllama) -> None:
    models = requests.get(fake.url + "/api/tags").json()["models"]
    assert list(models[0]) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", m["digest"]) for m in models)
    stamps = [m["modified_at"] for m in models]
    assert stamps == sorted(stamps, reverse=True)
    assert "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M" in [m["name"] for m in models]
    embed = next(m for m in models if m["name"] == "nomic-embed-text:latest")
    assert embed["details"]["family"] == "nomic-bert"


def test_embeddings(fake: FakeOllama) -> None:
    data = requests.post(
        fake.url + "/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]}
    ).json()
    assert list(data) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert len(data["embeddings"]) == 2 and len(data["embeddings"][0]) == 768
    norm = sum(v * v for v in data["embeddings"][0]) ** 0.5
    assert abs(norm - 1) < 1e-4
    short = requests.post(
        fake.url + "/api/embed", json={"model": "nomic-embed-text", "input": "a", "dimensions": 64}
    ).json()
    assert len(short["embeddings"][0]) == 64
    assert abs(sum(v * v for v in short["embeddings"][0]) - 1) < 1e-4
    empty = requests.post(
        fake.url + "/api/embed", json={"model": "nomic-embed-text", "input": []}
    ).json()
    assert empty == {"model": "nomic-embed-text", "embeddings": []}
    legacy = requests.post(
        fake.url + "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a"}
    ).json()
    assert len(legacy["embedding"]) == 768
    assert abs(sum(v * v for v in legacy["embedding"]) ** 0.5 - 1) > 1e-3  # not normalised
    assert requests.post(
        fake.url + "/api/embeddings", json={"model": "nomic-embed-text"}
    ).json() == {"embedding": []}


def test_show(fake: FakeOllama) -> None:
    data = requests.post(fake.url + "/api/show", json={"model": "qwen3:14b-q8"}).json()
    assert data["capabilities"] == ["completion", "tools", "thinking"]
    assert data["details"]["family"] == "qwen3"
    assert data["model_info"]["general.architecture"] == "qwen3"
    assert LOCAL_TIME.match(data["modified_at"])
    assert data["modelfile"].startswith('# Modelfile generated by "ollama show"')
