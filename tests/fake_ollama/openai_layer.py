"""The OpenAI-compatible routes (``middleware/openai.go``, ``openai/openai.go``).

Requests are translated to the native handlers' validation and generation; errors
keep their HTTP status and are wrapped in OpenAI's envelope.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import time
from typing import Any

from aiohttp import web

from . import embedding, inference
from .bodies import decode_value
from .errors import ApiError
from .exchange import EVENT_STREAM, JSON_PLAIN, Exchange, go_json, go_str
from .inference import Job, Result
from .names import ModelRequired, parse_model_ref
from .schemas import OPENAI_CHAT, OPENAI_COMPLETION, OPENAI_EMBED
from .state import EmulatorState

FINGERPRINT = "fp_ollama"
_EFFORT_TO_THINK = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "max",
    "ultra": "max",
    "max": "max",
}
_GO_TYPES = {bool: "bool", int: "float64", float: "float64", dict: "map[string]interface {}"}


def error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def envelope(status: int, message: str) -> bytes:
    return go_json(
        {"error": {"message": message, "type": error_type(status), "param": None, "code": None}}
    )


def sse_error_line(message: str) -> bytes:
    return b"data: " + envelope(500, message) + b"\n\n"


def _sse(obj: Any) -> bytes:
    return b"data: " + go_json(obj) + b"\n\n"


_SLOT = go_json("\x00")  # an encoded placeholder no real token produces


class _FrameTemplate:
    """A chunk rendered once with a placeholder, then filled per token (the hot path)."""

    def __init__(self, chunk: dict[str, Any]) -> None:
        left, right = _sse(chunk).split(_SLOT)
        self.left, self.right = left, right

    def fill(self, text: str) -> bytes:
        return self.left + go_str(text) + self.right


def _go_type(value: Any) -> str:
    """Go's ``%T`` of a value ``encoding/json`` decoded into ``any``."""
    if value is None:
        return "<nil>"
    if isinstance(value, list):
        return "[]interface {}"
    return _GO_TYPES.get(type(value), "float64" if isinstance(value, float) else "string")


def _stop_list(stop: Any, *, strict: bool) -> list[str] | None:
    """``stop`` as Ollama's list: a string becomes ``[stop]`` (so ``""`` gives ``[""]``, which
    the runner ignores); in a list, chat drops non-strings, completions reject them."""
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        return None
    out = []
    for item in stop:
        if isinstance(item, str):
            out.append(item)
        elif strict:
            raise ApiError(400, f"invalid type for 'stop' field: {_go_type(item)}")
    return out


def _options(req: dict[str, Any], *, strict_stop: bool = False) -> dict[str, Any]:
    """OpenAI sampling fields as Ollama options; temperature and top_p default to 1.0."""
    options: dict[str, Any] = {}
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if key in req:
            options[key] = req[key]
    stops = _stop_list(req.get("stop"), strict=strict_stop)
    if stops is not None:
        options["stop"] = stops
    options["temperature"] = req.get("temperature", 1.0)
    top_p = req.get("top_p")
    options["top_p"] = top_p or 1.0
    return {k: v for k, v in options.items() if v is not None}


def _content_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ApiError(400, "invalid message content type")
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise ApiError(400, "invalid message format")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url", "") if isinstance(url, dict) else str(url or "")
            if not url.startswith("data:"):
                raise ApiError(
                    400,
                    "image URLs are not currently supported, "
                    "please use base64 encoded data instead",
                )
    return "".join(texts)


class ChatCompletionSink:
    def __init__(self, ex: Exchange, job: Job, stream: bool, include_usage: bool) -> None:
        self.ex, self.job, self.stream, self.include_usage = ex, job, stream, include_usage
        self.id = f"chatcmpl-{random.randint(0, 998)}"
        self.created = int(time.time())
        self.started = False
        self._templates: dict[str, _FrameTemplate] = {}

    def begin(self) -> None:
        if self.stream:
            self.ex.begin_stream(EVENT_STREAM)

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.job.raw_model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    async def piece(self, kind: str, text: str) -> None:
        if not self.stream:
            return
        if not self.started:
            self.started = True
            await self.ex.line(_sse(self._chunk({"role": "assistant"}, None)))
        key = "reasoning" if kind == "thinking" else "content"
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = _FrameTemplate(self._chunk({key: "\x00"}, None))
        await self.ex.line(template.fill(text))

    def _usage(self, result: Result) -> dict[str, int]:
        return {
            "prompt_tokens": result.prompt_eval_count,
            "completion_tokens": result.eval_count,
            "total_tokens": result.prompt_eval_count + result.eval_count,
        }

    async def done(self, result: Result) -> web.StreamResponse:
        calls = openai_tool_calls(result.tool_calls or [])
        # finish_reason tool_calls replaces stop only (openai.go ToChatCompletion/FinishChunk)
        finish = "tool_calls" if calls and result.done_reason == "stop" else result.done_reason
        if not self.stream:
            message: dict[str, Any] = {"role": "assistant", "content": result.content}
            if result.thinking:
                message["reasoning"] = result.thinking
            if calls:
                message["tool_calls"] = calls
            body = {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.job.raw_model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": self._usage(result),
            }
            return await self.ex.json(body, content_type=JSON_PLAIN)
        if not self.started:
            self.started = True
            await self.ex.line(_sse(self._chunk({"role": "assistant"}, None)))
        if calls:
            await self.ex.line(_sse(self._chunk({"content": "", "tool_calls": calls}, None)))
        await self.ex.line(_sse(self._chunk({}, finish)))
        if self.include_usage:
            usage = self._chunk({}, None)
            usage["choices"] = []
            usage["usage"] = self._usage(result)
            await self.ex.line(_sse(usage))
        await self.ex.line(b"data: [DONE]\n\n")
        return await self.ex.finish()


def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``openai.ToToolCalls``: arguments as Go's compact JSON text."""
    return [
        {
            "id": call["id"],
            "index": call["function"]["index"],
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": json.dumps(
                    call["function"]["arguments"], separators=(",", ":"), ensure_ascii=False
                ),
            },
        }
        for call in calls
    ]


def _response_format(req: dict[str, Any]) -> Any:
    """``response_format`` as the native ``format`` (``openai.FromChatRequest``)."""
    spec = req.get("response_format") or {}
    kind = str(spec.get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = spec.get("json_schema")
        return schema.get("schema") if isinstance(schema, dict) else None
    return None


class CompletionSink:
    def __init__(self, ex: Exchange, job: Job, stream: bool, include_usage: bool) -> None:
        self.ex, self.job, self.stream, self.include_usage = ex, job, stream, include_usage
        self.id = f"cmpl-{random.randint(0, 998)}"
        self.created = int(time.time())
        self._template: _FrameTemplate | None = None

    def begin(self) -> None:
        if self.stream:
            self.ex.begin_stream(EVENT_STREAM)

    def _chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.job.raw_model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
        }

    async def piece(self, kind: str, text: str) -> None:
        if self.stream and kind == "content":
            if self._template is None:
                self._template = _FrameTemplate(self._chunk("\x00", None))
            await self.ex.line(self._template.fill(text))

    async def done(self, result: Result) -> web.StreamResponse:
        usage = {
            "prompt_tokens": result.prompt_eval_count,
            "completion_tokens": result.eval_count,
            "total_tokens": result.prompt_eval_count + result.eval_count,
        }
        if not self.stream:
            body = self._chunk(result.content, result.done_reason)
            body["usage"] = usage
            return await self.ex.json(body, content_type=JSON_PLAIN)
        await self.ex.line(_sse(self._chunk("", result.done_reason)))
        if self.include_usage:
            final = self._chunk("", None)
            final["choices"] = []
            final["usage"] = usage
            await self.ex.line(_sse(final))
        await self.ex.line(b"data: [DONE]\n\n")
        return await self.ex.finish()


def _stream_flags(req: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(req.get("stream", False))
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    return stream, include_usage


async def chat_completions(state: EmulatorState, ex: Exchange, value: Any) -> web.StreamResponse:
    req = decode_value(value, OPENAI_CHAT, "openai.ChatCompletionRequest")
    messages = req.get("messages") or []
    if not messages:
        raise ApiError(400, "[] is too short - 'messages'")
    native_messages = [
        {"role": str(m.get("role", "")).lower(), "content": _content_text(m.get("content"))}
        for m in messages
    ]
    native: dict[str, Any] = {
        "model": req.get("model", ""),
        "messages": native_messages,
        "options": _options(req),
        "tools": req.get("tools"),
        "format": _response_format(req),
    }
    # ``reasoning`` wins over ``reasoning_effort`` when present, even with no effort in it.
    if "reasoning" in req:
        effort = req["reasoning"].get("effort") or ""
    else:
        effort = req.get("reasoning_effort") or ""
    if effort:
        if effort not in _EFFORT_TO_THINK:
            raise ApiError(
                400,
                f"invalid reasoning value: {json.dumps(effort)} (must be "
                '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")',
            )
        native["think"] = _EFFORT_TO_THINK[effort]
    job = inference.prepare_chat(state, native, ex.started)
    inference.validate_chat(job, native)
    stream, include_usage = _stream_flags(req)
    return await inference.run_job(state, job, ChatCompletionSink(ex, job, stream, include_usage))


async def completions(state: EmulatorState, ex: Exchange, value: Any) -> web.StreamResponse:
    req = decode_value(value, OPENAI_COMPLETION, "openai.CompletionRequest")
    native = {
        "model": req.get("model", ""),
        "prompt": req.get("prompt", ""),
        "suffix": req.get("suffix", ""),
        "options": _options(req, strict_stop=True),
    }
    job = inference.prepare_generate(state, native, ex.started)
    wanted = ["completion"] + (["insert"] if native["suffix"] else [])
    error = inference.think_error(job, None) or inference.capability_error(job, wanted, "generate")
    if error is not None:
        raise error
    stream, include_usage = _stream_flags(req)
    return await inference.run_job(state, job, CompletionSink(ex, job, stream, include_usage))


async def embeddings(state: EmulatorState, ex: Exchange, value: Any) -> web.StreamResponse:
    req = decode_value(value, OPENAI_EMBED, "openai.EmbedRequest")
    raw_input = req.get("input")
    if raw_input is None or raw_input == []:
        raise ApiError(400, "invalid input")
    encoding = req.get("encoding_format", "")
    if encoding not in ("", "float", "base64"):
        raise ApiError(
            400,
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64'].",
        )
    inputs = [raw_input] if isinstance(raw_input, str) else raw_input
    job, texts = embedding.prepare_embed(
        state, {"model": req.get("model", ""), "input": inputs}, ex.started
    )
    runner = await inference.acquire_runner(state, job)
    try:
        vectors, tokens = await embedding.compute_embeddings(
            state, job, runner, texts, truncate=True, dimensions=req.get("dimensions", 0)
        )
    finally:
        state.scheduler.release(runner)
    data = []
    for index, vector in enumerate(vectors):
        encoded: Any = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": encoded, "index": index})
    body = {
        "object": "list",
        "data": data,
        "model": job.raw_model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return await ex.json(body, content_type=JSON_PLAIN)


def _model_object(model_id: str, modified_at: float, namespace: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(modified_at), "owned_by": namespace}


async def list_models(state: EmulatorState, ex: Exchange) -> web.StreamResponse:
    data = [
        _model_object(entry.name.display, entry.modified_at, entry.name.namespace)
        for entry in state.catalog.listing()
    ]
    return await ex.json({"object": "list", "data": data or None}, content_type=JSON_PLAIN)


async def retrieve_model(state: EmulatorState, ex: Exchange, model: str) -> web.StreamResponse:
    try:
        ref = parse_model_ref(model)
    except ModelRequired:
        raise ApiError(400, "model is required") from None
    entry = state.catalog.get(ref.name) if ref.source != "cloud" else None
    if entry is None:
        raise ApiError(404, f"model '{ref.name.display}' not found")
    body = _model_object(model, entry.modified_at, entry.name.namespace)
    return await ex.json(body, content_type=JSON_PLAIN)
