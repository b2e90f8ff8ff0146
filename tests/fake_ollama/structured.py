"""Constrained output: the ``format`` field as Ollama 0.32.15 applies it.

Ollama passes ``"json"`` as a JSON grammar and a schema object as llama-server's
``json_schema`` (``llm/llama_server.go``); llama-server turns the schema into a grammar
(``json_schema_to_grammar``) and the model can then only sample text the grammar allows.
Here a seeded walk over the schema picks one value such a grammar allows, so the answer is
valid against the schema, differs between models, prompts and seeds, and is the same for
the same ones.

Failure paths, as in the pinned version:

* a format that is neither ``"json"`` nor an object (``"xml"``, ``5``, ``[]``) is a plain
  error from the runner call: 500 ``invalid format: "<raw>"; expected "json" or a valid JSON
  Schema object``;
* a schema llama-server cannot convert is its HTTP 400, whose body Ollama passes on as the
  error text (``api.StatusError`` with the runner's status and trimmed body).
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any

from . import regexgen
from .errors import ApiError

_PRIMITIVES = ("boolean", "number", "integer", "string", "array", "object", "null")
_WORDS = (
    "edge",
    "device",
    "model",
    "memory",
    "runner",
    "token",
    "stream",
    "query",
    "search",
    "answer",
    "sensor",
    "board",
    "cache",
    "batch",
    "signal",
    "report",
    "status",
    "update",
    "network",
    "storage",
)
_PIECE = re.compile(r"\s*(?:[A-Za-z]+|\d+|[^\sA-Za-z\d]+)")
_MAX_DEPTH = 8


def _dump(value: Any) -> str:
    """nlohmann's compact ``dump()``: no spaces, key order kept, UTF-8 unescaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _runner_400(message: str) -> ApiError:
    body = _dump({"error": {"code": 400, "message": message, "type": "invalid_request_error"}})
    return ApiError(400, body)


def parse_format(value: Any) -> str | dict[str, Any] | None:
    """``None`` (unconstrained), ``"json"`` or a schema; raise Ollama's error otherwise."""
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        _check(value, value, 0)
        return value
    raw = _dump(value)
    raise ApiError(
        500,
        f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object',
    )


def _check(schema: Any, root: dict[str, Any], depth: int) -> None:
    """Raise llama-server's conversion error for what its converter rejects."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    for one in kinds:
        if one is not None and (not isinstance(one, str) or one not in _PRIMITIVES):
            raise _runner_400(
                '"json_schema": JSON schema conversion failed:\nUnrecognized schema: '
                + _dump(schema)
            )
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and not (pattern.startswith("^") and pattern.endswith("$")):
        raise _runner_400(
            '"json_schema": JSON schema conversion failed:\n'
            "Pattern must start with '^' and end with '$'"
        )
    ref = schema.get("$ref")
    if isinstance(ref, str) and _resolve(ref, root) is None:
        raise _runner_400(
            f'"json_schema": JSON schema conversion failed:\nError resolving ref {ref}'
        )
    for key in ("properties", "$defs", "definitions"):
        for sub in (schema.get(key) or {}).values():
            _check(sub, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in schema.get(key) or []:
            _check(sub, root, depth + 1)
    for key in ("items", "additionalProperties"):
        _check(schema.get(key), root, depth + 1)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any] | None:
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


# --- values a grammar allows --------------------------------------------------------------


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date-time":
        day = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        return f"{day}T{rng.randint(0, 23):02d}:00:00Z"
    if fmt == "uuid":
        return "-".join(
            "".join(rng.choice("0123456789abcdef") for _ in range(n)) for n in (8, 4, 4, 4, 12)
        )
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        found = regexgen.matching(pattern, rng, low, None if high is None else int(high))
        if found is not None:
            return found
    text = _words(rng, 1, 3)
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    if high is not None:
        text = text[: int(high)].rstrip() if len(text) > int(high) else text
        while len(text) < low:  # rstrip went below the minimum
            text += "x"
    return text


def _number(schema: dict[str, Any], rng: random.Random, integer: bool) -> int | float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if "exclusiveMinimum" in schema and isinstance(schema["exclusiveMinimum"], (int, float)):
        low = schema["exclusiveMinimum"] + (1 if integer else 0.01)
    if "exclusiveMaximum" in schema and isinstance(schema["exclusiveMaximum"], (int, float)):
        high = schema["exclusiveMaximum"] - (1 if integer else 0.01)
    if low is None and high is None:
        low, high = 0, 100
    elif low is None:
        low = high - 100
    elif high is None:
        high = low + 100
    high = max(high, low)  # contradictory bounds: the grammar pins the value to the low one
    if integer:
        return rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
    return min(max(round(rng.uniform(low, high), 2), low), high)


def _pick_type(schema: dict[str, Any], rng: random.Random) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if k != "null"] or kind
        return rng.choice(real) if real else None
    if kind is None:
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
    return kind


def value_for(schema: Any, rng: random.Random, root: dict[str, Any], depth: int = 0) -> Any:
    """A value valid against ``schema`` (a parse_format-checked schema or sub-schema)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return _words(rng, 1, 2)
    if isinstance(schema.get("$ref"), str):
        target = _resolve(schema["$ref"], root)
        return value_for(target, rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = [s for s in schema.get(key) or [] if isinstance(s, dict)]
        if options:
            usable = [s for s in options if s.get("type") != "null"] or options
            return value_for(rng.choice(usable), rng, root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for sub in schema["allOf"]:
            if isinstance(sub, dict):
                sub = _resolve(sub["$ref"], root) or {} if "$ref" in sub else sub
                for name, item in sub.items():
                    if name in ("properties",) and name in merged:
                        merged[name] = {**merged[name], **item}
                    elif name == "required" and name in merged:
                        merged[name] = [*merged[name], *item]
                    else:
                        merged[name] = item
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return value_for({**merged, **rest}, rng, root, depth + 1)
    kind = _pick_type(schema, rng)
    if kind == "object":
        return _object(schema, rng, root, depth)
    if kind == "array":
        return _array(schema, rng, root, depth)
    if kind == "string":
        return _string(schema, rng)
    if kind == "integer":
        return _number(schema, rng, integer=True)
    if kind == "number":
        return _number(schema, rng, integer=False)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _words(rng, 1, 3)  # {} allows anything; a short string is what models write


def _object(schema: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int) -> Any:
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    out: dict[str, Any] = {}
    for name, sub in properties.items():
        if name in required or rng.random() < 0.75:
            out[name] = value_for(sub, rng, root, depth + 1)
    extra = schema.get("additionalProperties")
    if not properties and isinstance(extra, dict):
        for _ in range(rng.randint(1, 2)):
            out[rng.choice(_WORDS)] = value_for(extra, rng, root, depth + 1)
    elif not properties and extra is not False:
        return _any_object(rng)  # {"type": "object"} alone allows any object
    low = int(schema.get("minProperties", 0))
    while len(out) < low and properties:
        missing = [n for n in properties if n not in out]
        if not missing:
            break
        out[missing[0]] = value_for(properties[missing[0]], rng, root, depth + 1)
    return out


def _array(schema: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int) -> Any:
    prefix = [s for s in schema.get("prefixItems") or [] if isinstance(s, dict)]
    low = int(schema.get("minItems", 0))
    high = schema.get("maxItems")
    top = low + 3 if high is None else min(int(high), max(low, 1) + 3)
    count = rng.randint(
        max(low, len(prefix)) if prefix else max(low, 1 if top else 0), max(low, top)
    )
    items = schema.get("items")
    out = []
    for index in range(count):
        sub = prefix[index] if index < len(prefix) else items
        value = value_for(sub, rng, root, depth + 1)
        if schema.get("uniqueItems"):
            for _ in range(8):
                if value not in out:
                    break
                value = value_for(sub, rng, root, depth + 1)
            if value in out:
                break
        out.append(value)
    return out


def _any_object(rng: random.Random) -> dict[str, Any]:
    """What a model writes under the plain JSON grammar: a small flat object."""
    out: dict[str, Any] = {}
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(_WORDS)
        out[key] = rng.randint(0, 100) if rng.random() < 0.3 else _words(rng, 1, 3)
    return out


def constrained_text(fmt: str | dict[str, Any], rng: random.Random) -> str:
    """The text a model constrained by ``fmt`` writes (``json.dumps`` spacing)."""
    value = _any_object(rng) if fmt == "json" else value_for(fmt, rng, fmt)
    return json.dumps(value, ensure_ascii=False)


def pieces(text: str) -> list[str]:
    """Split text into token-sized pieces whose concatenation is ``text``."""
    found = _PIECE.findall(text)
    return found if "".join(found) == text else [text]
