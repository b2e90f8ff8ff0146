"""What one answer cost, read from the last JSON line Ollama sent (no Flask, no I/O).

Ollama's final chunk carries ``prompt_eval_count``/``eval_count`` and the durations in
nanoseconds; an OpenAI-compatible answer carries ``usage`` with token counts and no durations.
GPU time is prompt evaluation plus generation (``prompt_eval_duration + eval_duration``); an
embedding answer reports only ``total_duration`` and ``load_duration``, so its time is their
difference. A model load is not counted: it is the box's cost, not the caller's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from management_api.proxy.answer_lines import last_object

_NS = 1e9


@dataclass(frozen=True)
class AnswerUsage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    gpu_seconds: float | None = None  # None: the answer did not say (OpenAI routes)


NOTHING = AnswerUsage()


def answer_usage(tail: bytes | bytearray) -> AnswerUsage:
    """The usage in the last JSON line of ``tail`` (NDJSON, SSE ``data:`` lines or one JSON;
    a whole answer or its last bytes), read without generate's ``context``."""
    line = last_object(tail)
    if line is None:
        return NOTHING
    try:
        payload = json.loads(line)
    except ValueError:
        return NOTHING
    return usage_of(payload) if isinstance(payload, dict) else NOTHING


def usage_of(payload: dict[str, Any]) -> AnswerUsage:
    """The usage of one decoded answer (Ollama's final object or an OpenAI response)."""
    usage = payload.get("usage")
    if isinstance(usage, dict):
        return AnswerUsage(
            _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        )
    return AnswerUsage(
        _count(payload.get("prompt_eval_count")),
        _count(payload.get("eval_count")),
        _gpu_seconds(payload),
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _gpu_seconds(payload: dict[str, Any]) -> float | None:
    prompt, generation = (
        _count(payload.get("prompt_eval_duration")),
        _count(payload.get("eval_duration")),
    )
    if prompt is not None or generation is not None:
        return ((prompt or 0) + (generation or 0)) / _NS
    total, load = _count(payload.get("total_duration")), _count(payload.get("load_duration"))
    if total is not None:
        return max(0, total - (load or 0)) / _NS
    return None
