"""A finished answer as Ollama framed it, and its replay in any request's shape (pure).

An `Answer` keeps the body exactly as relayed, per shape it was seen in (one JSON object, NDJSON
lines, SSE events). Replaying the same shape sends those bytes again, piece by piece, with only
the creation time set to now. A native generate/chat answer can also be rendered in the other
shape: the stream's pieces concatenated into one object, or one object split into a content line
and the final line (its timing fields are the original's). Shapes that cannot be rebuilt from what
is stored (an OpenAI stream from a JSON answer, and the reverse) are a miss; the answer then
fetched is added to the same entry.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from management_api.cache.embeddings import is_whole_answer
from management_api.cache.policy import JSON, NDJSON, SSE, SSE_USAGE
from management_api.proxy.answer_lines import without_context
from management_api.proxy.answer_usage import answer_usage

NATIVE_JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
OPENAI_JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
SSE_DONE = b"data: [DONE]"

# The top-level created_at of a native line: it follows the model, first thing on the line.
_NATIVE_CREATED = re.compile(rb'(?m)^(\{"model":"(?:[^"\\\n]|\\.)*","created_at":")[^"\n]*"')
_OPENAI_CREATED = re.compile(
    rb'("object":"(?:chat\.completion|chat\.completion\.chunk|text_completion)","created":)\d+'
)


def go_time_now() -> str:
    """Now as Ollama writes ``created_at``: UTC, RFC 3339, fraction without trailing zeros."""
    now = datetime.now(timezone.utc)
    fraction = f"{now.microsecond:06d}".rstrip("0")
    return now.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


@dataclass
class Answer:
    kind: str  # generate | chat | openai_chat | … (proxy/inference.py)
    raws: dict[str, bytes] = field(default_factory=dict)  # shape -> body as relayed
    content_types: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(raw) for raw in self.raws.values())

    def merged(self, other: Answer) -> Answer:
        """This answer plus the shapes `other` was seen in (a newer body wins)."""
        return Answer(
            self.kind,
            {**self.raws, **other.raws},
            {**self.content_types, **other.content_types},
        )


# --- capture: is a relayed body a complete answer that ended with "stop"?


def _json_lines(body: bytes, *, drop_context: bool = False) -> list[dict[str, Any]] | None:
    """Every line of an answer, parsed; with `drop_context`, without generate's `context` (a
    Python int per prompt token: a long prompt's answer would cost several times its size to
    check; an answer rendered in another shape keeps it, as Ollama would send it)."""
    lines = []
    start = 0
    while start <= len(body):
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end
        raw = without_context(body, start, end) if drop_context else body[start:end]
        start = end + 1
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(line, dict) or "error" in line:
            return None
        lines.append(line)
    return lines or None


def _sse_payloads(body: bytes) -> list[dict[str, Any]] | None:
    """The JSON events of a finished OpenAI stream (it must end with ``[DONE]``)."""
    events = [e.strip() for e in body.split(b"\n\n") if e.strip()]
    if not events or events[-1] != SSE_DONE:
        return None
    payloads = []
    for event in events[:-1]:
        if not event.startswith(b"data: "):
            return None
        try:
            payload = json.loads(event[6:])
        except ValueError:
            return None
        if not isinstance(payload, dict) or "error" in payload:
            return None
        payloads.append(payload)
    return payloads


def _finish_reasons(payloads: list[dict[str, Any]]) -> list[Any]:
    reasons = []
    for payload in payloads:
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                reasons.append(choice["finish_reason"])
    return reasons


def finish_reason(kind: str, shape: str, body: bytes) -> str | None:
    """Why a whole, error-free answer ended (``stop``, ``length``, …); None for a body that is
    cut, failed or not an answer at all. Embeddings that came back whole count as ``stop``."""
    if kind in ("generate", "chat"):
        lines = _json_lines(body, drop_context=kind == "generate")  # done and its reason only
        if lines is None or (shape == JSON and len(lines) != 1):
            return None
        last = lines[-1]
        reason = last.get("done_reason")
        return str(reason) if last.get("done") is True and reason else None
    if kind in ("openai_chat", "openai_completions"):
        if shape == JSON:
            lines = _json_lines(body)
            payloads = lines if lines is not None and len(lines) == 1 else None
        else:
            payloads = _sse_payloads(body)
        reasons = _finish_reasons(payloads) if payloads is not None else []
        return str(reasons[0]) if len(reasons) == 1 else None
    if kind == "embed":  # checked where it lies: a batch's answer can be megabytes
        return "stop" if is_whole_answer(body) else None
    if kind in ("embeddings", "openai_embeddings"):
        lines = _json_lines(body)
        if lines is None or len(lines) != 1:
            return None
        fields = {"embed": "embeddings", "embeddings": "embedding", "openai_embeddings": "data"}
        value = lines[0].get(fields[kind])
        return "stop" if isinstance(value, list) and value else None
    return None


# --- replay


def _pieces(body: bytes, separator: bytes) -> list[bytes]:
    pieces, start = [], 0
    while True:
        end = body.find(separator, start)
        if end < 0:
            if start < len(body):
                pieces.append(body[start:])
            return pieces
        pieces.append(body[start : end + len(separator)])
        start = end + len(separator)


def _restamp(kind: str, body: bytes) -> bytes:
    if kind in ("generate", "chat"):
        stamp = go_time_now().encode()
        return _NATIVE_CREATED.sub(lambda m: m.group(1) + stamp + b'"', body)
    if kind in ("openai_chat", "openai_completions"):
        stamp = str(int(time.time())).encode()
        return _OPENAI_CREATED.sub(lambda m: m.group(1) + stamp, body)
    return body


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def answer_tokens(answer: Answer) -> int:
    """Prompt plus completion tokens of the answer as Ollama reported them (0 when no shape it
    was seen in carries counts): what replaying it saves."""
    best = 0
    for raw in answer.raws.values():
        best = max(best, tokens_of(raw[-65536:]))
    return best


def tokens_of(body: bytes) -> int:
    """Prompt plus completion tokens in the last JSON line of a body (0 when it says none)."""
    usage = answer_usage(body)
    return (usage.prompt_tokens or 0) + (usage.completion_tokens or 0)


def render(answer: Answer, shape: str) -> tuple[str, list[bytes]] | None:
    """(content type, body pieces) of the answer in `shape`, or None when it cannot be built."""
    raw = answer.raws.get(shape)
    if raw is not None:
        body = _restamp(answer.kind, raw)
        if shape == NDJSON:
            return answer.content_types[shape], _pieces(body, b"\n")
        if shape in (SSE, SSE_USAGE):
            return answer.content_types[shape], _pieces(body, b"\n\n")
        return answer.content_types[shape], [body]
    if answer.kind in ("openai_chat", "openai_completions"):
        return _render_openai(answer, shape)
    if answer.kind not in ("generate", "chat"):
        return None
    if shape == JSON and NDJSON in answer.raws:
        lines = _json_lines(answer.raws[NDJSON])
        whole = _stream_to_object(answer.kind, lines) if lines else None
        return (NATIVE_JSON_TYPE, [_dump(whole)]) if whole is not None else None
    if shape == NDJSON and JSON in answer.raws:
        lines = _json_lines(answer.raws[JSON])
        if not lines:
            return None
        stream = _object_to_stream(answer.kind, lines[0])
        return NDJSON_TYPE, [_dump(line) + b"\n" for line in stream]
    return None


def _text_field(kind: str) -> str:
    return "response" if kind == "generate" else "message"


def _stream_to_object(kind: str, lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The non-stream object Ollama sends for the same answer: pieces concatenated."""
    now = go_time_now()
    final = lines[-1]
    if kind == "generate":
        if any("tool_calls" in line for line in lines):
            return None
        text = "".join(str(line.get("response", "")) for line in lines)
        thinking = "".join(str(line.get("thinking", "")) for line in lines)
        out: dict[str, Any] = {}
        for name, value in final.items():
            if name == "response":
                out["response"] = text
                if thinking:
                    out["thinking"] = thinking
            elif name != "thinking":
                out[name] = value
        out["created_at"] = now
        return out
    content, thinking, tools = [], [], []
    for line in lines:
        message = line.get("message")
        if not isinstance(message, dict):
            return None
        content.append(str(message.get("content", "")))
        thinking.append(str(message.get("thinking", "")))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            tools.extend(calls)
    message_out: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if "".join(thinking):
        message_out["thinking"] = "".join(thinking)
    if tools:
        message_out["tool_calls"] = tools
    out = {name: (message_out if name == "message" else value) for name, value in final.items()}
    out["created_at"] = now
    return out


def _object_to_stream(kind: str, whole: dict[str, Any]) -> list[dict[str, Any]]:
    """The same answer as a stream: its thinking, its content, then the final line."""
    now = go_time_now()
    head = {"model": whole.get("model"), "created_at": now}
    lines: list[dict[str, Any]] = []
    if kind == "generate":
        if whole.get("thinking"):
            lines.append({**head, "response": "", "thinking": whole["thinking"], "done": False})
        if whole.get("response"):
            lines.append({**head, "response": whole["response"], "done": False})
        final = {k: v for k, v in whole.items() if k != "thinking"}
        final.update(created_at=now, response="")
        return [*lines, final]
    message = whole.get("message") if isinstance(whole.get("message"), dict) else {}
    role = message.get("role", "assistant")
    parts = (
        {"content": "", "thinking": message.get("thinking")},
        {"content": message.get("content")},
        {"content": "", "tool_calls": message.get("tool_calls")},
    )
    for part in parts:
        name = list(part)[-1]
        if part[name]:
            lines.append({**head, "message": {"role": role, **part}, "done": False})
    final = dict(whole)
    final.update(created_at=now, message={"role": role, "content": ""})
    return [*lines, final]


# --- the OpenAI layer: chat.completion / text_completion objects and their SSE chunks


@dataclass
class _OpenAIParts:
    head: dict[str, Any]  # id, model, system_fingerprint
    pieces: list[tuple[str, str]]  # ("content" | "reasoning", text), in order
    finish_reason: str
    usage: dict[str, Any] | None


def _openai_parts(kind: str, shape: str, raw: bytes) -> _OpenAIParts | None:
    if shape == JSON:
        lines = _json_lines(raw)
        if not lines or not isinstance(lines[0].get("choices"), list) or not lines[0]["choices"]:
            return None
        body, choice = lines[0], lines[0]["choices"][0]
        if kind == "openai_chat":
            message = choice.get("message") or {}
            if message.get("tool_calls"):
                return None
            pieces = [("reasoning", message.get("reasoning") or ""),
                      ("content", message.get("content") or "")]  # fmt: skip
        else:
            pieces = [("content", choice.get("text") or "")]
        return _OpenAIParts(_openai_head(body), [p for p in pieces if p[1]],
                            str(choice.get("finish_reason")), body.get("usage"))  # fmt: skip
    payloads = _sse_payloads(raw)
    if not payloads:
        return None
    pieces, finish, usage = [], None, None
    for payload in payloads:
        if payload.get("usage") is not None:
            usage = payload["usage"]
        for choice in payload.get("choices") or []:
            if kind == "openai_chat":
                delta = choice.get("delta") or {}
                if delta.get("tool_calls"):
                    return None
                pieces += [(name, delta[name]) for name in ("reasoning", "content")
                           if isinstance(delta.get(name), str) and delta[name]]  # fmt: skip
            elif isinstance(choice.get("text"), str) and choice["text"]:
                pieces.append(("content", choice["text"]))
            if choice.get("finish_reason") is not None:
                finish = str(choice["finish_reason"])
    if finish is None:
        return None
    return _OpenAIParts(_openai_head(payloads[0]), pieces, finish, usage)


def _openai_head(body: dict[str, Any]) -> dict[str, Any]:
    return {name: body.get(name) for name in ("id", "model", "system_fingerprint")}


def _render_openai(answer: Answer, shape: str) -> tuple[str, list[bytes]] | None:
    parts = None
    # Prefer a stored shape that carries usage (a JSON answer, or a stream with usage).
    for source in (JSON, SSE_USAGE, SSE):
        if source in answer.raws:
            parts = _openai_parts(answer.kind, source, answer.raws[source])
            if parts is not None and (parts.usage is not None or shape == SSE):
                break
    if parts is None or (parts.usage is None and shape != SSE):
        return None
    chat = answer.kind == "openai_chat"
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"

    def frame(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        head = parts.head
        return {"id": head["id"], "object": obj + (".chunk" if chat and shape != JSON else ""),
                "created": created, "model": head["model"],
                "system_fingerprint": head["system_fingerprint"], "choices": choices,
                **extra}  # fmt: skip

    if shape == JSON:
        text = "".join(t for name, t in parts.pieces if name == "content")
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            reasoning = "".join(t for name, t in parts.pieces if name == "reasoning")
            if reasoning:
                message["reasoning"] = reasoning
            choice = {"index": 0, "message": message, "finish_reason": parts.finish_reason}
        else:
            choice = {"text": text, "index": 0, "finish_reason": parts.finish_reason}
        return OPENAI_JSON_TYPE, [_dump(frame([choice], usage=parts.usage))]
    events: list[dict[str, Any]] = []
    if chat:
        events.append(frame([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]))
        events += [frame([{"index": 0, "delta": {name: text}, "finish_reason": None}])
                   for name, text in parts.pieces]  # fmt: skip
        events.append(frame([{"index": 0, "delta": {}, "finish_reason": parts.finish_reason}]))
    else:
        events += [frame([{"text": text, "index": 0, "finish_reason": None}])
                   for _, text in parts.pieces]  # fmt: skip
        events.append(frame([{"text": "", "index": 0, "finish_reason": parts.finish_reason}]))
    if shape == SSE_USAGE:
        events.append(frame([], usage=parts.usage))
    return SSE_TYPE, [b"data: " + _dump(event) + b"\n\n" for event in events] + [SSE_DONE + b"\n\n"]
