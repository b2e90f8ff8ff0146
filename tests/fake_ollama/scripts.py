"""Scripted answers per model: what a generation says, how late it starts, or how it fails.

``POST /_fake/scripts`` ``{"model", "content"? | "json"?, "ttft_seconds"?,
"tokens_per_second"?, "status"?, "message"?, "times"=0}`` -> ``{"id"}``; ``GET`` lists them,
``DELETE`` clears them (``POST /_fake/reset`` does too). The first script armed for a model
applies to its next generation (``/api/generate``, ``/api/chat`` and the OpenAI layer):
``content`` (text) or ``json`` (any JSON value, sent as its compact text) replaces the generated
words, streamed a word at a time; ``ttft_seconds`` and ``tokens_per_second`` replace the model's
timing; ``status`` answers that HTTP error (with ``message``) before any token. ``times`` counts
uses (0 = until cleared).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError
from .names import parse_name

_PIECE = re.compile(r"\s*\S+")


@dataclass
class Script:
    id: str
    model: str  # case-folded full name
    content: str | None
    ttft_seconds: float | None
    tokens_per_second: float | None
    status: int | None
    message: str
    times: int
    used: int = 0

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def apply(self, job: Any) -> None:
        """Change a validated job (tests/fake_ollama/inference.py ``Job``) as scripted."""
        if self.status is not None:
            raise ApiError(self.status, self.message)
        changes: dict[str, float | int] = {}
        if self.ttft_seconds is not None:
            changes["ttft_seconds"] = self.ttft_seconds
        if self.tokens_per_second is not None:
            changes["tokens_per_second"] = self.tokens_per_second
        if self.content is not None:
            pieces = _PIECE.findall(self.content) or [self.content]
            job.scripted = pieces
            changes["tokens"] = len(pieces)
        if changes:
            job.timing = dataclasses.replace(job.timing, **changes)


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key!r} must be a non-negative number")
    return float(value)


class ScriptBook:
    def __init__(self) -> None:
        self._scripts: list[Script] = []
        self._ids = itertools.count(1)

    def add(self, body: dict[str, Any]) -> Script:
        model = str(body.get("model") or "").strip()
        if not model:
            raise ValueError("'model' is required")
        content = body.get("content")
        if "json" in body:
            content = json.dumps(body["json"], separators=(", ", ": "))
        if content is not None and not isinstance(content, str):
            raise ValueError("'content' must be a string")
        status = body.get("status")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError("'status' must be between 400 and 599")
        times = body.get("times", 0)
        if isinstance(times, bool) or not isinstance(times, int) or times < 0:
            raise ValueError("'times' must be a non-negative integer (0 = until cleared)")
        script = Script(
            id=f"s{next(self._ids)}",
            model=parse_name(model).key,
            content=content,
            ttft_seconds=_number(body, "ttft_seconds"),
            tokens_per_second=_number(body, "tokens_per_second"),
            status=status,
            message=str(body.get("message", "scripted failure")),
            times=times,
        )
        self._scripts.append(script)
        return script

    def take(self, model_key: str) -> Script | None:
        for script in self._scripts:
            if script.model == model_key:
                script.used += 1
                if script.times and script.used >= script.times:
                    self._scripts.remove(script)
                return script
        return None

    def clear(self) -> None:
        self._scripts.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [script.describe() for script in self._scripts]
