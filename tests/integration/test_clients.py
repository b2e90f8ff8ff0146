"""Real clients through the proxy give the same results as talking to the emulator directly."""

from __future__ import annotations

import ollama
import openai
import pytest

MODEL = "llama3.2:latest"
EMBED_MODEL = "nomic-embed-text:latest"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def _strip_timing(payload: dict) -> dict:
    volatile = {"created_at", "total_duration", "load_duration", "prompt_eval_duration",
                "eval_duration", "expires_at"}  # fmt: skip
    return {k: v for k, v in payload.items() if k not in volatile}


@pytest.fixture
def clients(service, emulator):
    return ollama.Client(host=emulator.url), ollama.Client(host=service.proxy)


def test_ollama_client_chat_stream(clients):
    direct, proxied = clients
    want = "".join(c.message.content for c in direct.chat(MODEL, MESSAGES, stream=True))
    got_chunks = list(proxied.chat(MODEL, MESSAGES, stream=True))
    assert "".join(c.message.content for c in got_chunks) == want
    assert got_chunks[-1].done and got_chunks[-1].done_reason == "stop"


def test_ollama_client_generate_embed_list_ps(clients):
    direct, proxied = clients
    a, b = direct.generate(MODEL, "hello"), proxied.generate(MODEL, "hello")
    assert _strip_timing(a.model_dump()) == _strip_timing(b.model_dump())
    assert direct.embed(EMBED_MODEL, ["a", "b"]).embeddings == (
        proxied.embed(EMBED_MODEL, ["a", "b"]).embeddings
    )
    assert [m.model for m in direct.list().models] == [m.model for m in proxied.list().models]
    assert sorted(m.model for m in direct.ps().models) == sorted(
        m.model for m in proxied.ps().models
    )
    with pytest.raises(ollama.ResponseError) as info:
        proxied.generate("no-such-model", "x")
    assert info.value.status_code == 404
    assert info.value.error == "model 'no-such-model' not found"


def test_openai_client_chat_and_embeddings(service, emulator):
    direct = openai.OpenAI(base_url=emulator.url + "/v1", api_key="unused")
    proxied = openai.OpenAI(base_url=service.proxy + "/v1", api_key="unused", max_retries=0)
    a = direct.chat.completions.create(model=MODEL, messages=MESSAGES)
    b = proxied.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens
    want = "".join(
        c.choices[0].delta.content or ""
        for c in direct.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        if c.choices
    )
    got = "".join(
        c.choices[0].delta.content or ""
        for c in proxied.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        if c.choices
    )
    assert got == want and got
    ea = direct.embeddings.create(model=EMBED_MODEL, input=["x", "y"])
    eb = proxied.embeddings.create(model=EMBED_MODEL, input=["x", "y"])
    assert [d.embedding for d in ea.data] == [d.embedding for d in eb.data]


def test_openai_client_sees_429_as_rate_limit(service, emulator):
    from tests.integration.test_proxy import post_async, slow

    slow(emulator, MODEL, seconds=2)
    url = service.proxy + "/api/generate"
    threads = [post_async(url, {"model": MODEL, "prompt": "hold"})]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, {"model": MODEL, "prompt": "q"}) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    proxied = openai.OpenAI(base_url=service.proxy + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        proxied.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"]
    assert info.value.body["type"] == "rate_limit_error"
    for thread, _ in threads:
        thread.join(20)
