"""The response cache under gunicorn against the emulator, over real sockets.

Counts of upstream calls come from the emulator's own connection records, so "reached Ollama
once" means Ollama saw one request.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ollama
import openai
import pytest
import requests

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess

ADMIN = "cache-admin-key-0123456789"
USER = "cache-user-key-01234567890"
CHAT_MODEL = "llama3.2:1b"
EMBED_MODEL = "nomic-embed-text"
# Defaults of one slot and a queue of two: 50 requests that were not coalesced would mostly 429.
LIMITS = """
[defaults]
max_concurrency = 1
max_queue = 2
max_wait_seconds = 30
first_byte_timeout_seconds = 10
idle_timeout_seconds = 5
"""
CREATED_AT = re.compile(r'"created_at":"[^"]*"')


def _env(emulator: FakeOllama, state, max_mb: str) -> dict[str, str]:
    (state / "limits.toml").write_text(LIMITS)
    return {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(state / "limits.toml"),
        "LLM_CACHE_MAX_MB": max_mb,
        "LLM_CACHE_TTL_SECONDS": "600",
        "LLM_MODEL_CACHE_TTL": "30",
        "LLM_WORKER_THREADS": "128",
        "LLM_AUTH_MODE": "management",
        "LLM_API_KEYS": f"ops:{ADMIN}:admin,app:{USER}:user",
    }


@pytest.fixture(scope="module")
def cached_service(emulator: FakeOllama, tmp_path_factory) -> Iterator[ServiceProcess]:
    env = _env(emulator, tmp_path_factory.mktemp("cache"), "64")
    with ServiceProcess(env=env) as process:
        yield process
        process.assert_alive()


@pytest.fixture
def svc(cached_service: ServiceProcess, emulator: FakeOllama) -> ServiceProcess:
    emulator.reset()
    emptied = requests.delete(
        cached_service.management_url + "/api/cache", headers={"X-API-Key": ADMIN}, timeout=5
    )
    assert emptied.status_code == 200, emptied.text
    return cached_service


def _upstream(emulator: FakeOllama, path: str) -> list[dict]:
    return emulator.connections(path=path)


def _chat(svc: ServiceProcess, text: str, *, stream: bool = False, **extra) -> requests.Response:
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        "options": {"temperature": 0},
        **extra,
    }
    return requests.post(svc.proxy_url + "/api/chat", json=body, timeout=30)


def test_temperature_zero_chat_reaches_ollama_once(svc, emulator):
    first = _chat(svc, "What is the capital of France?")
    second = _chat(svc, "What is the capital of France?")
    assert first.status_code == second.status_code == 200
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert len(_upstream(emulator, "/api/chat")) == 1
    # Byte for byte, apart from the creation time.
    assert first.content != b"" and CREATED_AT.sub("", first.text) == CREATED_AT.sub(
        "", second.text
    )
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert json.loads(second.content)["created_at"] >= json.loads(first.content)["created_at"]

    # A stream replayed from the stored stream, line by line.
    streamed = _chat(svc, "Name three rivers.", stream=True)
    replayed = _chat(svc, "Name three rivers.", stream=True)
    assert (streamed.headers["X-Cache"], replayed.headers["X-Cache"]) == ("MISS", "HIT")
    assert replayed.headers["Content-Type"] == "application/x-ndjson"
    assert CREATED_AT.sub("", streamed.text) == CREATED_AT.sub("", replayed.text)
    assert len(streamed.text.splitlines()) > 2
    assert len(_upstream(emulator, "/api/chat")) == 2


def test_stream_and_non_stream_share_an_entry(svc, emulator):
    # The ollama package always sends "tools": [], and an empty list is not proven to be a
    # no-op for every chat template (issue 28): send the body it sends.
    whole = _chat(svc, "Describe the sea.", tools=[]).json()
    client = ollama.Client(host=svc.proxy_url)
    parts = list(
        client.chat(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "Describe the sea."}],
            stream=True,
            options={"temperature": 0},
        )
    )
    assert len(_upstream(emulator, "/api/chat")) == 1  # the stream came from the cache
    assert "".join(p.message.content for p in parts) == whole["message"]["content"]
    final = parts[-1]
    assert final.done and final.done_reason == "stop"
    assert final.eval_count == whole["eval_count"]
    assert final.total_duration == whole["total_duration"]  # what the original took

    # And the other way round: a stored stream answers a non-stream request as one object.
    streamed = [json.loads(x) for x in _chat(svc, "Tell a joke.", stream=True).text.splitlines()]
    single = _chat(svc, "Tell a joke.")
    assert single.headers["X-Cache"] == "HIT"
    assert single.json()["message"]["content"] == "".join(
        line["message"]["content"] for line in streamed
    )
    assert single.json()["done_reason"] == "stop"
    assert len(_upstream(emulator, "/api/chat")) == 2


def test_a_generate_answer_in_the_other_shape_keeps_its_context(svc, emulator):
    # The cache checks a recorded answer without parsing `context`; rendering it in the other
    # shape keeps it, as Ollama sends it (clients continue a conversation with it).
    def generate(prompt: str, stream: bool) -> requests.Response:
        body = {"model": CHAT_MODEL, "prompt": prompt, "stream": stream,
                "options": {"temperature": 0}}  # fmt: skip
        return requests.post(svc.proxy_url + "/api/generate", json=body, timeout=30)

    streamed = generate("Count to five.", True)
    whole = generate("Count to five.", False)
    assert (streamed.headers["X-Cache"], whole.headers["X-Cache"]) == ("MISS", "HIT")
    final = json.loads(streamed.text.splitlines()[-1])
    assert len(final["context"]) > 0 and whole.json()["context"] == final["context"]
    stored = generate("Count to six.", False)
    replayed = generate("Count to six.", True)
    assert (stored.headers["X-Cache"], replayed.headers["X-Cache"]) == ("MISS", "HIT")
    assert json.loads(replayed.text.splitlines()[-1])["context"] == stored.json()["context"]


def test_openai_chat_is_cached_in_its_own_shape(svc, emulator):
    client = openai.OpenAI(base_url=svc.proxy_url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Say hello."}]
    first = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0)
    second = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages, temperature=0
    )
    assert second.headers["X-Cache"] == "HIT"
    assert second.parse().choices[0].message.content == first.choices[0].message.content
    chunks = [
        client.chat.completions.create(
            model=CHAT_MODEL, messages=messages, temperature=0, stream=True
        )
        for _ in range(2)
    ]
    texts = ["".join(c.choices[0].delta.content or "" for c in s if c.choices) for s in chunks]
    assert texts[0] == texts[1] == first.choices[0].message.content
    # The stream was rebuilt from the JSON answer, and with usage when asked for.
    streamed = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in streamed if c.usage is not None]
    assert usage == [first.usage]
    assert len(_upstream(emulator, "/v1/chat/completions")) == 1
    # A stream first, without usage: the JSON answer cannot be rebuilt from it (one more call).
    other = [{"role": "user", "content": "Say goodbye."}]
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=other, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=other, temperature=0
    )
    assert raw.headers["X-Cache"] == "MISS"
    assert len(_upstream(emulator, "/v1/chat/completions")) == 3
    again = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=other, temperature=0, stream=True
    )
    assert again.headers["X-Cache"] == "HIT"


def test_omitted_or_nonzero_temperature_is_never_cached(svc, emulator):
    body = {"model": CHAT_MODEL, "prompt": "Why is the sky blue?", "stream": False}
    answers = [
        requests.post(svc.proxy_url + "/api/generate", json=b, timeout=30)
        for b in (body, body, {**body, "options": {"temperature": 0.7}}, {**body, "options": {}})
    ]
    assert [a.headers["X-Cache"] for a in answers] == ["BYPASS"] * 4
    assert len(_upstream(emulator, "/api/generate")) == 4
    assert requests.get(svc.management_url + "/api/cache", timeout=5).json()["entries"] == 0


def test_no_store_and_no_cache(svc, emulator):
    def chat(cache_control: str | None) -> requests.Response:
        headers = {"Cache-Control": cache_control} if cache_control else {}
        body = {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Count to three."}],
            "stream": False,
            "options": {"temperature": 0},
        }
        return requests.post(svc.proxy_url + "/api/chat", json=body, headers=headers, timeout=30)

    assert chat("no-store").headers["X-Cache"] == "BYPASS"  # not written …
    assert chat(None).headers["X-Cache"] == "MISS"
    assert chat("no-store").headers["X-Cache"] == "BYPASS"  # … and not read
    assert chat("no-cache").headers["X-Cache"] == "BYPASS"  # lookup skipped, entry refreshed
    assert len(_upstream(emulator, "/api/chat")) == 4
    assert chat(None).headers["X-Cache"] == "HIT"
    assert requests.get(svc.management_url + "/api/cache", timeout=5).json()["entries"] == 1
    assert len(_upstream(emulator, "/api/chat")) == 4


def _settle() -> None:
    # The catalog is invalidated when the mutation's response body closes, just after the
    # client has read it.
    time.sleep(0.3)


def _chat_with(svc: ServiceProcess, model: str, text: str) -> requests.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "stream": False,
        "options": {"temperature": 0},
    }
    return requests.post(svc.proxy_url + "/api/chat", json=body, timeout=30)


def _digest(emulator: FakeOllama, model: str) -> str | None:
    models = requests.get(emulator.url + "/api/tags", timeout=5).json()["models"]
    return next((m["digest"] for m in models if m["name"] == model), None)


def test_pull_with_a_new_digest_invalidates(svc, emulator):
    # mistral:7b is in the emulator's registry but not installed (no other test uses it).
    # Install it as a copy of another model, so that pulling it changes its digest.
    model = "mistral:7b"
    copied = requests.post(
        svc.proxy_url + "/api/copy",
        json={"source": "gemma3:4b", "destination": model},
        headers={"X-API-Key": ADMIN},
        timeout=10,
    )
    assert copied.status_code == 200
    _settle()
    assert _chat_with(svc, model, "Hello there.").headers["X-Cache"] == "MISS"
    assert _chat_with(svc, model, "Hello there.").headers["X-Cache"] == "HIT"
    before = _digest(emulator, model)
    pulled = requests.post(
        svc.proxy_url + "/api/pull",
        json={"model": model, "stream": False},
        headers={"X-API-Key": ADMIN},
        timeout=30,
    )
    assert pulled.status_code == 200, pulled.text
    assert _digest(emulator, model) not in (before, None)
    _settle()
    assert _chat_with(svc, model, "Hello there.").headers["X-Cache"] == "MISS"
    assert len(_upstream(emulator, "/api/chat")) == 2


def test_delete_invalidates(svc, emulator):
    model = "qwen3:14b-q8"  # no other test here uses it (the emulator's reset brings it back)
    assert _chat_with(svc, model, "One more thing.").headers["X-Cache"] == "MISS"
    assert _chat_with(svc, model, "One more thing.").headers["X-Cache"] == "HIT"
    deleted = requests.delete(
        svc.proxy_url + "/api/delete",
        json={"model": model},
        headers={"X-API-Key": ADMIN},
        timeout=10,
    )
    assert deleted.status_code == 200
    _settle()
    gone = _chat_with(svc, model, "One more thing.")
    assert gone.status_code == 404 and gone.headers["X-Cache"] == "BYPASS"
    assert len(_upstream(emulator, "/api/chat")) == 2


def _set_limits(svc: ServiceProcess, text: str) -> None:
    Path(svc.env["LLM_LIMITS_FILE"]).write_text(text)
    reloaded = requests.post(
        svc.management_url + "/api/limits/reload", headers={"X-API-Key": ADMIN}, timeout=5
    )
    assert reloaded.status_code == 200, reloaded.text


@pytest.fixture
def long_queue(svc):
    # Waiting for an identical request takes a queue place like any waiting request (issue 29),
    # so 49 followers need a queue that long.
    _set_limits(svc, LIMITS.replace("max_queue = 2", "max_queue = 60"))
    yield
    _set_limits(svc, LIMITS)


def test_identical_concurrent_requests_make_one_upstream_call(svc, emulator, long_queue):
    model = "llama3.2:latest"
    emulator.set_model(model, ttft_seconds=1.5)
    body = {"model": model, "prompt": "Write a haiku.", "options": {"temperature": 0}}
    start = threading.Barrier(50)

    def send(index: int) -> requests.Response:
        start.wait(10)
        stream = index % 2 == 0  # half stream, half not: one entry serves both
        return requests.post(
            svc.proxy_url + "/api/generate", json={**body, "stream": stream}, timeout=60
        )

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(send, range(50)))
    assert [a.status_code for a in answers] == [200] * 50
    results = [a.headers["X-Cache"] for a in answers]
    assert results.count("MISS") == 1
    assert set(results) <= {"MISS", "COALESCED", "HIT"}
    assert results.count("COALESCED") >= 40  # all arrived within the 1.5 s the first one took
    assert len(_upstream(emulator, "/api/generate")) == 1
    texts = set()
    for answer in answers:
        lines = [json.loads(line) for line in answer.text.splitlines()]
        texts.add("".join(line["response"] for line in lines))
        assert lines[-1]["done_reason"] == "stop"
    assert len(texts) == 1
    status = requests.get(svc.management_url + "/api/cache", timeout=5).json()
    assert (status["in_flight"], status["waiting"]) == (0, 0)


def test_a_waiting_client_that_leaves_is_dropped(svc, emulator):
    emulator.set_model(CHAT_MODEL, ttft_seconds=2.0)
    first = threading.Thread(target=_chat, args=(svc, "Slow answer."))
    first.start()
    emulator.wait_for(lambda: len(_upstream(emulator, "/api/chat")) == 1, timeout=10)

    def cache() -> dict:
        return requests.get(svc.management_url + "/api/cache", timeout=5).json()

    with pytest.raises(requests.Timeout):
        requests.post(
            svc.proxy_url + "/api/chat",
            json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Slow answer."}],
                  "stream": False, "options": {"temperature": 0}},
            timeout=0.5,
        )  # fmt: skip
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not cache()["waiting"] and '"outcome":"client_gone_coalescing"' in svc.output():
            break
        time.sleep(0.05)
    assert '"status":499,"outcome":"client_gone_coalescing"' in svc.output()
    status = cache()
    assert (status["in_flight"], status["waiting"]) == (1, 0)  # dropped; the first still runs
    first.join(30)
    assert _chat(svc, "Slow answer.").headers["X-Cache"] == "HIT"
    assert len(_upstream(emulator, "/api/chat")) == 1


def test_a_failed_first_request_lets_the_next_waiter_go_upstream(svc, emulator, long_queue):
    emulator.set_model(CHAT_MODEL, ttft_seconds=1.0)
    emulator.fault("drop_mid_stream", route="/api/chat", after_chunks=2)
    results: dict[int, requests.Response] = {}

    def send(index: int) -> None:
        results[index] = _chat(svc, "Tell me about owls.", stream=True)

    first = threading.Thread(target=send, args=(0,))
    first.start()
    emulator.wait_for(lambda: len(_upstream(emulator, "/api/chat")) == 1, timeout=10)
    others = [threading.Thread(target=send, args=(i,)) for i in (1, 2, 3)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(30)
    assert '"error"' in results[0].text  # cut: one terminal error line, never stored
    good = [results[i] for i in (1, 2, 3)]
    assert sorted(r.headers["X-Cache"] for r in good)[-1] == "MISS"
    assert [r.headers["X-Cache"] for r in good].count("MISS") == 1
    assert all(json.loads(r.text.splitlines()[-1])["done_reason"] == "stop" for r in good)
    assert len(_upstream(emulator, "/api/chat")) == 2


def _embed(svc: ServiceProcess, inputs: list[str]) -> requests.Response:
    return requests.post(
        svc.proxy_url + "/api/embed", json={"model": EMBED_MODEL, "input": inputs}, timeout=30
    )


def test_embed_batch_sends_only_the_misses(svc, emulator):
    texts = [f"chunk number {i} of the manual" for i in range(10)]
    cached = [texts[i] for i in (0, 2, 3, 5, 7, 9)]
    first = _embed(svc, cached)
    assert first.headers["X-Cache"] == "MISS"
    answer = _embed(svc, texts)
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "MISS"
    calls = _upstream(emulator, "/api/embed")
    assert len(calls) == 2
    assert calls[1]["inputs"] == [texts[i] for i in (1, 4, 6, 8)]
    whole = requests.post(
        emulator.url + "/api/embed", json={"model": EMBED_MODEL, "input": texts}, timeout=30
    ).json()
    body = answer.json()
    assert list(body) == list(whole)  # same fields, same order
    assert body["model"] == whole["model"]
    assert body["embeddings"] == whole["embeddings"]  # the same vectors, in order
    assert body["prompt_eval_count"] == whole["prompt_eval_count"]
    # Now every item is stored: no call at all.
    again = _embed(svc, texts)
    assert again.headers["X-Cache"] == "HIT" and again.json()["embeddings"] == whole["embeddings"]
    assert len(_upstream(emulator, "/api/embed")) == 3  # two through us, one direct


def test_cache_routes_and_metrics(svc, emulator):
    def chat_row() -> dict:
        status = requests.get(svc.management_url + "/api/cache", timeout=5).json()
        wanted = ("/api/chat", CHAT_MODEL)
        rows = [r for r in status["routes"] if (r["route"], r["model"]) == wanted]
        return {**status, "row": rows[0] if rows else None}

    before = chat_row()["row"] or {"requests": {"hit": 0, "miss": 0}}
    _chat(svc, "Status check.")
    _chat(svc, "Status check.")
    status = chat_row()
    assert status["enabled"] is True and status["entries"] == 1 and status["bytes"] > 0
    row = status["row"]
    assert row["entries"] == 1 and row["bytes"] == status["bytes"]
    assert row["requests"]["hit"] == before["requests"]["hit"] + 1
    assert row["requests"]["miss"] == before["requests"]["miss"] + 1
    assert 0 < row["hit_ratio"] < 1
    metrics = requests.get(svc.management_url + "/metrics", timeout=5).text
    assert 'llm_service_cache_requests_total{result="hit",route="/api/chat"}' in metrics
    assert re.search(r"^llm_service_cache_entries 1\.0$", metrics, re.M)
    assert re.search(r"^llm_service_cache_bytes [1-9]", metrics, re.M)
    # Emptying needs the admin role when keys are on.
    url = svc.management_url + "/api/cache"
    assert requests.delete(url, timeout=5).status_code == 401
    assert requests.delete(url, headers={"X-API-Key": USER}, timeout=5).status_code == 403
    emptied = requests.delete(url, headers={"X-API-Key": ADMIN}, timeout=5)
    assert emptied.json()["removed_entries"] == 1
    assert requests.get(url, timeout=5).json()["entries"] == 0
    assert _chat(svc, "Status check.").headers["X-Cache"] == "MISS"


def test_access_log_says_what_the_cache_did(svc, emulator):
    _chat(svc, "Log me.")
    _chat(svc, "Log me.")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            json.loads(line[line.index("{") :])
            for line in svc.output().splitlines()
            if "llm_service.access" in line and '"/api/chat"' in line and '"cache"' in line
        ]
        if [entry["cache"] for entry in lines[-2:]] == ["MISS", "HIT"]:
            break
        time.sleep(0.05)
    assert [entry["cache"] for entry in lines[-2:]] == ["MISS", "HIT"]
    assert lines[-1]["outcome"] == "cache_hit" and lines[-1]["status"] == 200


def test_byte_cap_evicts_the_least_recently_used(emulator, tmp_path_factory):
    emulator.reset()
    # 16 KiB: about 25 small JSON answers; a stream answer is several times larger.
    env = _env(emulator, tmp_path_factory.mktemp("cache-small"), str(16 / 1024))
    with ServiceProcess(env=env) as small:
        oldest = _chat(small, "Oldest entry.", stream=True)
        assert oldest.headers["X-Cache"] == "MISS"
        assert requests.get(small.management_url + "/api/cache", timeout=5).json()["entries"] == 1
        assert _chat(small, "Kept entry.").headers["X-Cache"] == "MISS"
        assert _chat(small, "Kept entry.").headers["X-Cache"] == "HIT"  # now the most recent
        for i in range(60):
            _chat(small, f"Filler number {i}.")
            status = requests.get(small.management_url + "/api/cache", timeout=5).json()
            assert status["bytes"] <= 16 * 1024
            if status["evictions"]:
                break
        assert status["evictions"] == 1
        assert _chat(small, "Kept entry.").headers["X-Cache"] == "HIT"
        assert _chat(small, "Oldest entry.", stream=True).headers["X-Cache"] == "MISS"
        small.assert_alive()


def test_errors_and_cut_or_length_answers_are_never_stored(svc, emulator):
    emulator.fault("status", route="/api/chat", status=500)
    failed = _chat(svc, "Never stored.")
    assert failed.status_code == 500 and failed.headers["X-Cache"] == "MISS"
    emulator.fault("error_line", route="/api/chat", after_chunks=2)
    cut = _chat(svc, "Never stored.", stream=True)
    assert cut.headers["X-Cache"] == "MISS" and '"error"' in cut.text.splitlines()[-1]
    # num_predict below the answer's length: done_reason "length".
    short = [_chat(svc, "Cut short.", options={"temperature": 0, "num_predict": 2}) for _ in "ab"]
    assert [r.json()["done_reason"] for r in short] == ["length", "length"]
    assert [r.headers["X-Cache"] for r in short] == ["MISS", "MISS"]
    assert requests.get(svc.management_url + "/api/cache", timeout=5).json()["entries"] == 0
    assert _chat(svc, "Never stored.").headers["X-Cache"] == "MISS"
    assert len(_upstream(emulator, "/api/chat")) == 5


def test_the_flask_path_serves_hits_too(svc, emulator):
    # A chunked body (no Content-Length) goes through Flask rather than the fast path.
    body = json.dumps(
        {"model": CHAT_MODEL, "prompt": "Chunked.", "stream": False, "options": {"temperature": 0}}
    ).encode()
    answers = [
        requests.post(svc.proxy_url + "/api/generate", data=iter([body]), timeout=30)
        for _ in range(2)
    ]
    assert [a.headers["X-Cache"] for a in answers] == ["MISS", "HIT"]
    assert answers[0].json()["response"] == answers[1].json()["response"]
    assert len(_upstream(emulator, "/api/generate")) == 1


# --- coalesced requests wait like queued ones (issue 29)


def test_identical_requests_past_the_queue_are_refused_like_different_ones(svc, emulator):
    # One slot and a queue of two: the first runs, two wait for its answer, 17 are refused.
    model = "llama3.2:latest"
    emulator.set_model(model, ttft_seconds=1.5)
    body = {"model": model, "prompt": "Same again.", "stream": False, "options": {"temperature": 0}}
    start = threading.Barrier(20)

    def send(_: int) -> requests.Response:
        start.wait(10)
        return requests.post(svc.proxy_url + "/api/generate", json=body, timeout=60)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))
    codes = [a.status_code for a in answers]
    assert codes.count(429) == 17, codes
    refused = [a.json() for a in answers if a.status_code == 429]
    assert {r["reason"] for r in refused} == {"queue_full"}
    assert all(a.headers["Retry-After"] for a in answers if a.status_code == 429)
    assert sorted(a.headers["X-Cache"] for a in answers if a.status_code == 200) == [
        "COALESCED",
        "COALESCED",
        "MISS",
    ]
    assert len(_upstream(emulator, "/api/generate")) == 1


def test_a_coalesced_wait_is_bounded_by_max_wait_seconds(svc, emulator):
    _set_limits(svc, LIMITS.replace("max_wait_seconds = 30", "max_wait_seconds = 1"))
    try:
        emulator.set_model(CHAT_MODEL, ttft_seconds=3.0)
        first = ThreadPoolExecutor(1).submit(_chat, svc, "Slow and identical.")
        emulator.wait_for(lambda: len(_upstream(emulator, "/api/chat")) == 1, timeout=10)
        started = time.monotonic()
        follower = _chat(svc, "Slow and identical.")
        waited = time.monotonic() - started
        assert follower.status_code == 429, follower.text
        assert follower.json()["reason"] == "queue_timeout"
        assert 0.9 <= waited < 2.5, waited
        assert first.result(30).status_code == 200
    finally:
        _set_limits(svc, LIMITS)


def test_a_leader_that_never_reads_does_not_hold_its_followers(svc, emulator):
    # ~12 MB of JSON: far more than the socket buffers between us and a client that reads nothing.
    model = "llama3.2:1b"
    emulator.set_model(model, ttft_seconds=0, tokens=1_000_000, tokens_per_second=10_000_000)
    body = {"model": model, "prompt": "A big one.", "stream": False, "options": {"temperature": 0}}
    data = json.dumps(body).encode()
    leader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    leader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    leader.connect(("127.0.0.1", svc.proxy_port))
    try:
        leader.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
        )
        emulator.wait_for(lambda: len(_upstream(emulator, "/api/generate")) == 1, timeout=10)
        started = time.monotonic()
        follower = requests.post(svc.proxy_url + "/api/generate", json=body, timeout=30)
        took = time.monotonic() - started
        assert follower.status_code == 200
        assert follower.headers["X-Cache"] in ("COALESCED", "HIT")
        assert json.loads(follower.content)["eval_count"] == 1_000_000
        assert took < 5, took
        assert len(_upstream(emulator, "/api/generate")) == 1
    finally:
        leader.close()
