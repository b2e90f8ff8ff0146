"""When a chat answer is a tool call, and which one.

The trigger is deterministic so tests can ask for one: the request carries ``tools``, the
model has the "tools" capability (checked before, as Ollama does), and the **last message
is the user's** and names one or more of the tools' function names (case-insensitive, as a
whole word). Each named tool is called once, in the order of the ``tools`` list, with
arguments generated from its ``parameters`` schema (``structured.value_for``). After a
``tool`` message the model answers in text, as a model that got its result would.

Shapes (``api.ToolCall``): ``{"id": "call_<8 of a-z0-9>", "function": {"index": i,
"name": ..., "arguments": {...}}}``; ids as ``server/routes.go`` ``toolCallId``.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from . import structured

_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def named_tools(tools: list[dict[str, Any]] | None, messages: list[dict[str, Any]]) -> list:
    """The tools' function specs the last (user) message names, in ``tools`` order."""
    if not tools or not messages:
        return []
    last = messages[-1]
    if str(last.get("role", "")).lower() != "user":
        return []
    text = str(last.get("content") or "")
    named = []
    for tool in tools:
        function = tool.get("function") or {}
        name = function.get("name") or ""
        if name and re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text, re.IGNORECASE):
            named.append(function)
    return named


def calls_for(functions: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """``api.ToolCall`` dicts for each function, arguments valid against its parameters."""
    calls = []
    for index, function in enumerate(functions):
        params = function.get("parameters")
        if isinstance(params, dict) and params:
            arguments = structured.value_for(params, rng, params)
            if not isinstance(arguments, dict):
                arguments = {}
        else:
            arguments = {}
        call_id = "call_" + "".join(rng.choice(_ID_CHARS) for _ in range(8))
        calls.append(
            {
                "id": call_id,
                "function": {"index": index, "name": function["name"], "arguments": arguments},
            }
        )
    return calls


def raw_text(calls: list[dict[str, Any]]) -> str:
    """What the model wrote for the calls (counted as its tokens; never shown)."""
    return "".join(
        json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
        for c in calls
    )
