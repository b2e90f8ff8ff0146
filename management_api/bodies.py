"""Safe JSON bodies: bounded nesting, clear 400s, never a 500; and Go's reading of a body.

`json.loads` recurses per nesting level, so a body of 100,000 ``[`` raises RecursionError; we
measure the depth first (a linear scan that skips strings) and refuse anything deeper than
`MAX_DEPTH`, which no legitimate request comes near.

`go_object` reads a request body the way Ollama's Go structs do (encoding/json): a field name
matches case-insensitively, and of several spellings of one field the last in the body wins.
The proxy decides admission and the cache key on that reading, so it never judges a request on
a field Ollama does not use (``"model"``) while Ollama runs another one (``"Model"``).
"""

from __future__ import annotations

import json
from typing import Any

from management_api import errors

MAX_DEPTH = 64


def nesting_depth(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def loads_bounded(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON; raise ValueError for invalid or over-deep input."""
    if nesting_depth(raw) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(raw)


def json_object(raw: bytes, *, required: bool = True, **extra: Any) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong (``extra`` → error fields)."""
    if not raw.strip():
        if required:
            raise errors.BadRequest("a JSON body is required", **extra)
        return {}
    try:
        payload = loads_bounded(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = "too deeply nested" if "nested" in str(exc) else "not valid JSON"
        raise errors.BadRequest(f"the body is {reason}", **extra) from None
    if not isinstance(payload, dict):
        raise errors.BadRequest("the body must be a JSON object", **extra)
    return payload


class LossyObject(dict[str, Any]):
    """A body that was not valid UTF-8, read with replacement characters (Go reads it too, but
    replaces bytes differently): good enough to find the model, never to key the cache on."""


class _Pairs(dict[str, Any]):
    pairs: list[tuple[str, Any]]


def _keep_pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    obj.pairs = pairs
    return obj


def fold_name(name: str) -> str:
    """A field name as encoding/json compares it with a struct's (ASCII) field names.

    Go folds case with Unicode simple folding, under which the Kelvin sign folds to ``k`` and
    the long s to ``s``; `str.lower` already maps the Kelvin sign, the long s needs a hand.
    """
    if name.isascii():
        return name.lower()
    return name.lower().replace("\u017f", "s")


def go_object(raw: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The top-level fields of a JSON object body as Go fills a struct from it: names folded
    (`fold_name`), the last of several spellings winning. Nested values are kept as sent.

    Raises ValueError for a body that is not a JSON object, or nests deeper than `max_depth`.
    """
    if nesting_depth(raw) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    lossy = False
    try:
        payload = json.loads(raw)
    except UnicodeDecodeError:
        lossy = True
        payload = json.loads(raw.decode("utf-8", "replace"))
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    folded: dict[str, Any] = LossyObject() if lossy else {}
    for name, value in payload.items():
        key = fold_name(name)
        if key in folded:
            # Two spellings of one field: only the body's own order says which one Go keeps
            # (a dict keeps the first position of a repeated name), so read it again in order.
            return _fold_in_order(raw, lossy)
        folded[key] = value
    return folded


def _fold_in_order(raw: bytes, lossy: bool) -> dict[str, Any]:
    text = raw.decode("utf-8", "replace") if lossy else raw
    ordered = json.loads(text, object_pairs_hook=_keep_pairs)
    folded: dict[str, Any] = LossyObject() if lossy else {}
    for name, value in ordered.pairs:
        key = fold_name(name)
        folded.pop(key, None)  # the later spelling wins, in its own place
        folded[key] = value
    return folded
