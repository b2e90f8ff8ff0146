"""Structured output, stop sequences, seeds, thinking and tool calls through the service's
proxy (real gunicorn) with the official clients: the proxy passes each shape on unchanged."""

from __future__ import annotations

import json

import ollama
import openai
from pydantic import BaseModel, Field

MODEL = "llama3.2:1b"


class Label(BaseModel):
    title: str = Field(min_length=1)
    tags: list[str] = Field(max_length=5)
    score: int = Field(ge=0, le=10)


def get_time(zone: str) -> str:
    """The time in a zone.

    Args:
        zone: an IANA zone name
    """
    return zone


def test_ollama_client_through_the_proxy(service) -> None:
    client = ollama.Client(host=service.proxy)
    messages = [{"role": "user", "content": "Label this clip."}]
    reply = client.chat(model=MODEL, messages=messages, format=Label.model_json_schema())
    Label.model_validate_json(reply.message.content)
    parts = list(
        client.chat(model=MODEL, messages=messages, format=Label.model_json_schema(), stream=True)
    )
    assert "".join(p.message.content for p in parts) == reply.message.content

    free = client.generate(model=MODEL, prompt="Say something.").response
    stop = " " + free.split(" ")[2]
    cut = client.generate(model=MODEL, prompt="Say something.", options={"stop": [stop]})
    assert cut.response == free[: free.index(stop)] and cut.done_reason == "stop"

    def say(seed: int) -> str:
        return client.generate(model=MODEL, prompt="Seeded.", options={"seed": seed}).response

    assert say(1) == say(1) != say(2)

    thought = client.chat(model="qwen3:14b-q8", messages=messages, think=True)
    assert thought.message.thinking
    ask = [{"role": "user", "content": "Call get_time for Europe/Berlin."}]
    called = client.chat(model=MODEL, messages=ask, tools=[get_time])
    assert [c.function.name for c in called.message.tool_calls] == ["get_time"]


def test_openai_client_through_the_proxy(service) -> None:
    client = openai.OpenAI(base_url=service.proxy + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Label this clip."}]
    parsed = client.chat.completions.parse(model=MODEL, messages=messages, response_format=Label)
    assert isinstance(parsed.choices[0].message.parsed, Label)

    free = client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content
    stop = " " + free.split(" ")[2]
    choice = client.chat.completions.create(model=MODEL, messages=messages, stop=stop).choices[0]
    assert choice.message.content == free[: free.index(stop)] and choice.finish_reason == "stop"

    def chat(seed: int) -> str:
        reply = client.chat.completions.create(model=MODEL, messages=messages, seed=seed)
        return reply.choices[0].message.content

    assert chat(5) == chat(5) != chat(6)

    params = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": params}}]
    ask = [{"role": "user", "content": "Call get_time for Europe/Berlin."}]
    stream = client.chat.completions.create(model=MODEL, messages=ask, tools=tools, stream=True)
    chunks = [c for c in stream if c.choices]
    calls = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_time"]
    assert "zone" in json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
