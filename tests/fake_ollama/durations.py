"""Go's ``time.ParseDuration`` and Ollama's ``keep_alive`` decoding (``api.Duration``).

Durations are returned in seconds as floats; ``math.inf`` stands for Ollama's
"forever" (``math.MaxInt64`` nanoseconds), which any negative value selects.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ApiError

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_NS = 1 << 63


def go_quote(text: str) -> str:
    """Quote like Go's ``time.quote``: non-ASCII and control bytes become ``\\xNN``."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if code >= 0x80 or code < 0x20:
            out.extend(f"\\x{byte:02x}" for byte in ch.encode("utf-8", "surrogatepass"))
        else:
            if ch in '"\\':
                out.append("\\")
            out.append(ch)
    out.append('"')
    return "".join(out)


class DurationError(ValueError):
    """The text is not a Go duration; ``str()`` is Go's exact message."""


def parse_go_duration(text: str) -> int:
    """Parse a Go duration string into signed nanoseconds, raising Go's messages."""
    orig = text
    invalid = DurationError("time: invalid duration " + go_quote(orig))
    neg = False
    if text and text[0] in "+-":
        neg = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise invalid
    total = 0
    while text:
        if not (text[0] == "." or "0" <= text[0] <= "9"):
            raise invalid
        i = 0
        while i < len(text) and "0" <= text[i] <= "9":
            i += 1
        whole_digits, text = text[:i], text[i:]
        whole = int(whole_digits) if whole_digits else 0
        if whole >= _MAX_NS:
            raise invalid
        frac_digits = ""
        if text.startswith("."):
            text = text[1:]
            j = 0
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            frac_digits, text = text[:j], text[j:]
        if not whole_digits and not frac_digits:
            raise invalid
        k = 0
        while k < len(text) and not (text[k] == "." or "0" <= text[k] <= "9"):
            k += 1
        if k == 0:
            raise DurationError("time: missing unit in duration " + go_quote(orig))
        unit_text, text = text[:k], text[k:]
        unit = _UNITS_NS.get(unit_text)
        if unit is None:
            raise DurationError(
                "time: unknown unit " + go_quote(unit_text) + " in duration " + go_quote(orig)
            )
        if whole > _MAX_NS // unit:
            raise invalid
        value = whole * unit
        if frac_digits:
            # Go keeps at most the digits that fit in a uint64; float math as Go does.
            digits = frac_digits[:19]
            value += int(int(digits) * (unit / 10 ** len(digits)))
            if value > _MAX_NS:
                raise invalid
        total += value
        if total > _MAX_NS:
            raise invalid
    if neg:
        return -total
    if total > _MAX_NS - 1:
        raise invalid
    return total


def _go_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return type(value).__name__


def parse_keep_alive(value: Any) -> float:
    """Decode a JSON ``keep_alive`` value (not null) the way ``api.Duration`` does.

    Raises ``ApiError(400, …)`` with Ollama's texts for bad values.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, f"Unsupported type: '{_go_type_name(value)}'")
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except DurationError as exc:
            raise ApiError(400, str(exc)) from None
        return math.inf if ns < 0 else ns / 1e9
    if value < 0:
        return math.inf
    # Go converts float seconds to integer nanoseconds by truncation.
    return int(float(value) * 1e9) / 1e9


def parse_env_keep_alive(text: str, default: float = 300.0) -> float:
    """``OLLAMA_KEEP_ALIVE``: a Go duration or integer seconds; invalid keeps the default."""
    text = text.strip()
    if not text:
        return default
    try:
        seconds = parse_go_duration(text) / 1e9
    except DurationError:
        try:
            seconds = float(int(text))
        except ValueError:
            return default
    return math.inf if seconds < 0 else seconds
