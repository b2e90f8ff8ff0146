"""Answers whose shape matters, through the official clients: ``format`` / ``response_format``,
stop sequences, seeds, thinking and tool calls (issue 30, items 1-4).
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import ollama
import openai
import pytest
import requests
from pydantic import BaseModel, Field

from tests.fake_ollama.harness import FakeOllama

MODEL = "llama3.2:1b"


class Place(BaseModel):
    name: str = Field(min_length=2, max_length=40)
    country: str


class Trip(BaseModel):
    title: str
    days: int = Field(ge=1, le=14)
    budget: float = Field(ge=100, le=5000)
    mode: Literal["train", "bus", "car"]
    stops: list[Place] = Field(min_length=1, max_length=4)
    note: str | None = None


@pytest.fixture
def client(fake: FakeOllama) -> ollama.Client:
    return ollama.Client(host=fake.url)


@pytest.fixture
def oai(fake: FakeOllama) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="ollama", max_retries=0)


# --- 1. format -------------------------------------------------------------------------------


def test_pydantic_schema_through_the_ollama_client(client: ollama.Client) -> None:
    schema = Trip.model_json_schema()  # nested model: $defs + $ref, anyOf with null
    messages = [{"role": "user", "content": "Plan a trip through the Alps."}]
    whole = client.chat(model=MODEL, messages=messages, format=schema)
    trip = Trip.model_validate_json(whole.message.content)
    assert 1 <= len(trip.stops) <= 4
    chunks = list(client.chat(model=MODEL, messages=messages, format=schema, stream=True))
    assert len(chunks) > 5  # streamed token by token, as constrained output is
    assert "".join(c.message.content for c in chunks) == whole.message.content
    assert chunks[-1].done_reason == "stop" and chunks[-1].eval_count == len(chunks) - 1
    generated = client.generate(model=MODEL, prompt="Plan a trip.", format=schema)
    Trip.model_validate_json(generated.response)


def test_pydantic_schema_through_the_openai_client(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Plan a trip through the Alps."}],
        response_format=Trip,
    )
    choice = completion.choices[0]
    assert isinstance(choice.message.parsed, Trip)
    assert choice.finish_reason == "stop"
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Plan a trip through the Alps."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "trip", "schema": Trip.model_json_schema()},
        },
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    Trip.model_validate_json(text)


def test_json_object_mode(client: ollama.Client, oai: openai.OpenAI) -> None:
    plain = client.generate(model=MODEL, prompt="Describe the board as JSON.", format="json")
    assert isinstance(json.loads(plain.response), dict)
    reply = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe the board as JSON."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["alpha", "beta", 3]},
        "fixed": {"const": {"v": 1}},
        "either": {"anyOf": [{"type": "integer", "minimum": 5, "maximum": 7}, {"type": "boolean"}]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "minLength": 3, "maxLength": 6},
            "minItems": 2,
            "maxItems": 3,
        },
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "count": {"type": "integer", "minimum": -3, "maximum": -1},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-(\\d{2}|x+)$"},
        "inner": {
            "type": "object",
            "properties": {"flag": {"type": "boolean"}, "none": {"type": "null"}},
            "required": ["flag", "none"],
        },
    },
    "required": ["kind", "fixed", "either", "tags", "ratio", "count", "code", "inner"],
}


def test_schema_keywords_hold_for_many_prompts_and_seeds(fake: FakeOllama) -> None:
    for index in range(40):
        body = {
            "model": MODEL,
            "prompt": f"case {index}",
            "format": SCHEMA,
            "stream": False,
            "options": {"seed": index},
        }
        reply = requests.post(fake.url + "/api/generate", json=body, timeout=10)
        assert reply.status_code == 200, reply.text
        jsonschema.validate(json.loads(reply.json()["response"]), SCHEMA)


def test_format_ollama_rejects(fake: FakeOllama) -> None:
    url = fake.url + "/api/generate"
    base = {"model": MODEL, "prompt": "hi", "stream": False}
    bad = requests.post(url, json={**base, "format": "xml"}, timeout=10)
    assert bad.status_code == 500
    assert bad.json() == {
        "error": 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'
    }
    # A schema llama-server cannot convert: its HTTP 400 body becomes Ollama's error text.
    odd = {"type": "object", "properties": {"x": {"type": "decimal"}}}
    for stream in (False, True):
        reply = requests.post(url, json={**base, "format": odd, "stream": stream}, timeout=10)
        assert reply.status_code == 400
        inner = json.loads(reply.json()["error"])
        assert inner == {
            "error": {
                "code": 400,
                "message": '"json_schema": JSON schema conversion failed:\n'
                'Unrecognized schema: {"type":"decimal"}',
                "type": "invalid_request_error",
            }
        }
    # llama.cpp only converts anchored patterns.
    loose = {"type": "string", "pattern": "[a-z]+"}
    reply = requests.post(url, json={**base, "format": loose}, timeout=10)
    assert reply.status_code == 400
    assert json.loads(reply.json()["error"])["error"]["message"] == (
        '"json_schema": JSON schema conversion failed:\n'
        "Pattern must start with '^' and end with '$'"
    )
    # "" and null mean no format at all.
    for empty in ("", None):
        reply = requests.post(url, json={**base, "format": empty}, timeout=10)
        assert reply.status_code == 200 and not reply.json()["response"].startswith("{")


# --- 2. stop ---------------------------------------------------------------------------------


def test_stop_sequence_native(client: ollama.Client) -> None:
    free = client.generate(model=MODEL, prompt="Tell me about edge devices.")
    words = free.response.split(" ")
    stop = " " + words[4]
    expected = free.response[: free.response.index(stop)]
    cut = client.generate(
        model=MODEL, prompt="Tell me about edge devices.", options={"stop": [stop]}
    )
    assert cut.response == expected and cut.done_reason == "stop"
    assert cut.eval_count < free.eval_count
    parts = list(
        client.generate(
            model=MODEL, prompt="Tell me about edge devices.", options={"stop": [stop]}, stream=True
        )
    )
    assert "".join(p.response for p in parts) == expected and parts[-1].done_reason == "stop"


def test_stop_sequence_openai(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me about edge devices."}]
    free = oai.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content
    stop = " " + free.split(" ")[3]
    for form in (stop, [stop, "never-said"]):
        choice = oai.chat.completions.create(model=MODEL, messages=messages, stop=form).choices[0]
        assert choice.message.content == free[: free.index(stop)]
        assert choice.finish_reason == "stop"
    # "" becomes the stop list [""], and the runner drops empty stop strings: no effect.
    same = oai.chat.completions.create(model=MODEL, messages=messages, stop="").choices[0]
    assert same.message.content == free
    text = oai.completions.create(model=MODEL, prompt="Tell me.", stop=[""]).choices[0].text
    assert text == oai.completions.create(model=MODEL, prompt="Tell me.").choices[0].text


def test_completions_reject_a_non_string_stop(fake: FakeOllama) -> None:
    body = {"model": MODEL, "prompt": "hi", "stop": ["ok", 5]}
    reply = requests.post(fake.url + "/v1/completions", json=body, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "invalid type for 'stop' field: float64"
    # chat drops non-strings instead (openai.FromChatRequest)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["ok", 5]}
    assert requests.post(fake.url + "/v1/chat/completions", json=chat, timeout=10).ok


# --- 3. seeds --------------------------------------------------------------------------------


def test_seeds(client: ollama.Client, oai: openai.OpenAI) -> None:
    def say(**options: object) -> str:
        return client.generate(model=MODEL, prompt="Say something.", options=options).response

    assert say(seed=1, temperature=0.7) == say(seed=1, temperature=0.7)
    assert say(seed=1, temperature=0.7) != say(seed=2, temperature=0.7)
    assert say(seed=1, temperature=0) == say(seed=2, temperature=0)  # greedy ignores the seed
    schema = Trip.model_json_schema()
    first = client.generate(model=MODEL, prompt="Trip.", format=schema, options={"seed": 7})
    again = client.generate(model=MODEL, prompt="Trip.", format=schema, options={"seed": 7})
    other = client.generate(model=MODEL, prompt="Trip.", format=schema, options={"seed": 8})
    assert first.response == again.response != other.response

    def chat(seed: int) -> str:
        messages = [{"role": "user", "content": "Say something."}]
        reply = oai.chat.completions.create(model=MODEL, messages=messages, seed=seed)
        return reply.choices[0].message.content

    assert chat(3) == chat(3) != chat(4)


# --- 4. think and tools ----------------------------------------------------------------------


def test_capabilities_come_from_show(client: ollama.Client) -> None:
    assert set(client.show("qwen3:14b-q8").capabilities) >= {"thinking", "tools"}
    assert "tools" in client.show(MODEL).capabilities
    assert "thinking" not in client.show(MODEL).capabilities


def test_think(client: ollama.Client, oai: openai.OpenAI) -> None:
    generated = client.generate(model="qwen3:14b-q8", prompt="Why?", think=True)
    assert generated.thinking and generated.response
    messages = [{"role": "user", "content": "Why?"}]
    chunks = list(client.chat(model="qwen3:14b-q8", messages=messages, think=True, stream=True))
    assert "".join(c.message.thinking or "" for c in chunks)
    quiet = client.chat(model="qwen3:14b-q8", messages=messages, think=False)
    assert not quiet.message.thinking
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=MODEL, messages=messages, think=True)
    assert refused.value.status_code == 400
    assert refused.value.error == '"llama3.2:1b" does not support thinking'
    reply = oai.chat.completions.create(
        model="qwen3:14b-q8", messages=messages, reasoning_effort="high"
    )
    assert reply.choices[0].message.model_extra["reasoning"]
    stream = oai.chat.completions.create(
        model="qwen3:14b-q8", messages=messages, reasoning_effort="low", stream=True
    )
    reasoning = [
        (c.choices[0].delta.model_extra or {}).get("reasoning") for c in stream if c.choices
    ]
    assert any(reasoning)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(
            model="qwen3:14b-q8", messages=messages, reasoning_effort="huge"
        )
    assert bad.value.body["message"] == (
        'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", '
        '"xhigh", "ultra", "max", or "none")'
    )


def get_weather(city: str, unit: str) -> str:
    """Current weather of a city.

    Args:
        city: the city
        unit: celsius or fahrenheit
    """
    return f"sunny in {city}"


def test_tool_calls_through_the_ollama_client(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Use get_weather for Berlin."}]
    reply = client.chat(model=MODEL, messages=messages, tools=[get_weather])
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather"
    assert set(call.function.arguments) == {"city", "unit"}
    assert reply.done_reason == "stop" and reply.message.content == ""
    chunks = list(client.chat(model=MODEL, messages=messages, tools=[get_weather], stream=True))
    streamed = [c for c in chunks if c.message.tool_calls]
    assert len(streamed) == 1 and streamed[0].message.tool_calls[0].function.name == "get_weather"
    # With the tool's result, the model answers in text.
    result = {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
    follow = [*messages, reply.message, result]
    answer = client.chat(model=MODEL, messages=follow, tools=[get_weather])
    assert answer.message.content and not answer.message.tool_calls
    # No tool named: a text answer.
    plain = client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], tools=[get_weather]
    )
    assert plain.message.content and not plain.message.tool_calls
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="gemma3:4b", messages=messages, tools=[get_weather])
    assert refused.value.status_code == 400 and "does not support tools" in refused.value.error


def test_tool_calls_through_the_openai_client(oai: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["city", "unit"],
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "What does get_weather say for Oslo?"}]
    reply = oai.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 13
    arguments = json.loads(call.function.arguments)
    assert arguments["unit"] in ("celsius", "fahrenheit") and arguments["city"]
    stream = oai.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True)
    chunks = [c for c in stream if c.choices]
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_thinking_model_thinks_freely_then_answers_in_the_format(client: ollama.Client) -> None:
    # Ollama lifts the format while the model thinks and applies it to the answer.
    messages = [{"role": "user", "content": "Plan a trip."}]
    reply = client.chat(
        model="qwen3:14b-q8", messages=messages, format=Trip.model_json_schema(), think=True
    )
    assert reply.message.thinking and not reply.message.thinking.startswith("{")
    Trip.model_validate_json(reply.message.content)
