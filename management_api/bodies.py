"""Safe JSON bodies for our own routes: bounded nesting, clear 400s, never a 500.

`json.loads` recurses per nesting level, so a body of 100,000 ``[`` raises RecursionError; we
measure the depth first (a linear scan that skips strings) and refuse anything deeper than
`MAX_DEPTH`, which no legitimate request comes near.
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
