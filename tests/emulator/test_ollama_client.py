"""The official ``ollama`` Python client against the emulator."""

from __future__ import annotations

import ollama
import pytest

from tests.fake_ollama.harness import FakeOllama


@pytest.fixture
def client(fake: FakeOllama) -> ollama.Client:
    return ollama.Client(host=fake.url)


def test_list_show_ps(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert "llama3.2:1b" in names and "nomic-embed-text:latest" in names
    shown = client.show("gemma3:4b")
    assert shown.capabilities == ["completion", "vision"]
    assert shown.details.parameter_size == "4.3B"
    assert client.ps().models == []
    client.generate(model="llama3.2:1b")  # load form
    (running,) = client.ps().models
    assert running.model == "llama3.2:1b" and running.expires_at is not None


def test_generate_and_chat(client: ollama.Client) -> None:
    whole = client.generate(model="llama3.2:1b", prompt="Why is the sky blue?")
    parts = list(client.generate(model="llama3.2:1b", prompt="Why is the sky blue?", stream=True))
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].context
    messages = [{"role": "user", "content": "Hello"}]
    reply = client.chat(model="llama3.2:1b", messages=messages)
    chunks = list(client.chat(model="llama3.2:1b", messages=messages, stream=True))
    assert "".join(c.message.content for c in chunks) == reply.message.content
    assert reply.message.role == "assistant" and reply.eval_count == 12
    thought = client.chat(model="qwen3:14b-q8", messages=messages, think=True)
    assert thought.message.thinking


def test_embed_and_embeddings(client: ollama.Client) -> None:
    embedded = client.embed(model="nomic-embed-text", input=["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[1]) == 768
    legacy = client.embeddings(model="nomic-embed-text", prompt="one")
    assert len(legacy.embedding) == 768


def test_pull_stream_and_not(client: ollama.Client, fake: FakeOllama) -> None:
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=200_000_000)
    progress = list(client.pull("all-minilm", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    big = [p for p in progress if p.total == 45_949_216]
    assert len(big) >= 2 and big[-1].completed == big[-1].total
    fake.configure(pull_bytes_per_second=2e10)
    assert client.pull("phi3:mini").status == "success"
    assert "phi3:mini" in [m.model for m in client.list().models]


def test_copy_delete_create(client: ollama.Client) -> None:
    assert client.copy("llama3.2:1b", "copied").status == "success"
    assert client.delete("copied").status == "success"
    steps = [
        p.status
        for p in client.create(model="terse", from_="llama3.2:1b", system="Be terse.", stream=True)
    ]
    assert steps[-2:] == ["writing manifest", "success"]
    assert "Be terse." in (client.show("terse").modelfile or "")
    # A model created FROM a registry model that is not local is pulled first.
    pulled = [p.status for p in client.create(model="mini", from_="all-minilm", stream=True)]
    assert pulled[0] == "pulling manifest" and pulled[-1] == "success"


def test_errors_raise_response_error(client: ollama.Client) -> None:
    cases = [
        (lambda: client.generate(model="ghost", prompt="x"), 404, "model 'ghost' not found"),
        (
            lambda: client.chat(model="gemma3:4b", messages=[], think=True),
            400,
            '"gemma3:4b" does not support thinking',
        ),
        (lambda: client.show("ghost"), 404, "model 'ghost:latest' not found"),
        (lambda: client.delete("ghost"), 404, "model 'ghost' not found"),
        (
            lambda: client.embed(model="ghost", input="x"),
            404,
            'model "ghost" not found, try pulling it first',
        ),
        (lambda: client.pull("ghost"), 500, "pull model manifest: file does not exist"),
    ]
    for call, status, text in cases:
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert (info.value.status_code, info.value.error) == (status, text)
    # A streamed pull of an unknown model fails on its error line (HTTP 200).
    with pytest.raises(ollama.ResponseError) as info:
        list(client.pull("ghost", stream=True))
    assert info.value.error == "pull model manifest: file does not exist"
