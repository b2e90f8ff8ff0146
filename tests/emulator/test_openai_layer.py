"""The OpenAI compatibility layer: the ``openai`` client plus raw SSE and error shapes."""

from __future__ import annotations

import base64
import json
import re
import struct

import openai
import pytest
import requests

from tests.fake_ollama.harness import FakeOllama

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def client(fake: FakeOllama) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="ignored", max_retries=0)


def test_chat_completions(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="llama3.2:1b", messages=HELLO)
    assert re.fullmatch(r"chatcmpl-\d{1,3}", reply.id)
    assert reply.system_fingerprint == "fp_ollama" and reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    chunks = list(
        client.chat.completions.create(
            model="llama3.2:1b", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        chunks[0].choices[0].delta.role == "assistant"
        and chunks[0].choices[0].delta.content is None
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == reply.usage.total_tokens
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    capped = client.chat.completions.create(model="llama3.2:1b", messages=HELLO, max_tokens=2)
    assert capped.choices[0].finish_reason == "length"


def test_completions_embeddings_models(client: openai.OpenAI) -> None:
    done = client.completions.create(model="llama3.2:1b", prompt="Once")
    assert re.fullmatch(r"cmpl-\d{1,3}", done.id) and done.choices[0].text
    streamed = list(client.completions.create(model="llama3.2:1b", prompt="Once", stream=True))
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    vectors = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 768
    vectors_a = client.embeddings.create(model="nomic-embed-text", input="a").data[0].embedding
    encoded = client.embeddings.create(
        model="nomic-embed-text", input="a", encoding_format="base64"
    )
    packed = base64.b64decode(encoded.data[0].embedding)
    assert list(struct.unpack("<768f", packed))[:3] == pytest.approx(vectors_a[:3], abs=1e-6)
    ids = [m.id for m in client.models.list()]
    assert "llama3.2:1b" in ids
    model = client.models.retrieve("llama3.2:1b")
    assert (model.id, model.owned_by) == ("llama3.2:1b", "library")


def test_errors_keep_status_and_use_the_envelope(client: openai.OpenAI, fake: FakeOllama) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="ghost", messages=HELLO)
    assert missing.value.body == {
        "message": "model 'ghost' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="llama3.2:1b", messages=[])
    assert empty.value.body["message"] == "[] is too short - 'messages'"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ghost")
    fake.configure(max_queue=0)
    with pytest.raises(openai.InternalServerError) as busy:
        client.chat.completions.create(model="llama3.2:1b", messages=HELLO)
    assert busy.value.status_code == 503
    assert busy.value.body["type"] == "api_error"
    assert (
        busy.value.body["message"]
        == "server busy, please try again.  maximum pending requests exceeded"
    )


def test_raw_sse_framing(fake: FakeOllama) -> None:
    response = requests.post(
        fake.url + "/v1/chat/completions",
        json={"model": "llama3.2:1b", "messages": HELLO, "stream": True},
        stream=True,
    )
    assert response.headers["Content-Type"] == "text/event-stream"
    raw = response.content.decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    assert all(frame.startswith("data: ") for frame in frames[:-1])
    assert "event:" not in raw
    first, finish = json.loads(frames[0][6:]), json.loads(frames[-3][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant"}
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


def test_raw_openai_errors(fake: FakeOllama) -> None:
    url = fake.url + "/v1"
    empty = requests.post(url + "/chat/completions", data=b"")
    assert empty.status_code == 400 and empty.json()["error"]["message"] == "EOF"
    assert empty.headers["Content-Type"] == "application/json"
    no_model = requests.post(url + "/chat/completions", json={"model": "", "messages": HELLO})
    assert no_model.json()["error"] == {
        "message": "model is required",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    for body, text in [
        ({"model": "nomic-embed-text"}, "invalid input"),
        ({"model": "nomic-embed-text", "input": []}, "invalid input"),
        (
            {"model": "nomic-embed-text", "input": "a", "encoding_format": "hex"},
            "Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64'].",
        ),
    ]:
        response = requests.post(url + "/embeddings", json=body)
        assert (response.status_code, response.json()["error"]["message"]) == (400, text)
    image = requests.post(
        url + "/chat/completions",
        json={
            "model": "gemma3:4b",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                }
            ],
        },
    )
    assert image.json()["error"]["message"] == (
        "image URLs are not currently supported, please use base64 encoded data instead"
    )


def test_models_list_is_null_when_empty(fake: FakeOllama) -> None:
    for model in [m["name"] for m in requests.get(fake.url + "/api/tags").json()["models"]]:
        requests.delete(fake.url + "/api/delete", json={"model": model})
    listing = requests.get(fake.url + "/v1/models")
    assert listing.json() == {"object": "list", "data": None}
    assert requests.get(fake.url + "/api/tags").json() == {"models": []}
