"""Timestamps in Go's ``time.RFC3339Nano`` form, as Ollama marshals ``time.Time``."""

from __future__ import annotations

import datetime as dt
import math
import time

# Ollama's "forever" is math.MaxInt64 ns after now: about 292 years.
FOREVER_SECONDS = 9_223_372_036.854775807

_utc_prefix_cache: tuple[int, str] = (-1, "")


def _fraction(ns: int) -> str:
    frac = ns % 1_000_000_000
    if not frac:
        return ""
    return "." + f"{frac:09d}".rstrip("0")


def utc_now_rfc3339() -> str:
    """``time.Now().UTC()`` marshalled: ``2024-09-12T03:54:03.516566Z``."""
    global _utc_prefix_cache
    ns = time.time_ns()
    sec = ns // 1_000_000_000
    cached_sec, prefix = _utc_prefix_cache
    if cached_sec != sec:
        prefix = dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _utc_prefix_cache = (sec, prefix)
    return prefix + _fraction(ns) + "Z"


def local_rfc3339(epoch_seconds: float) -> str:
    """A wall-clock instant in local time with its offset (``Z`` when the offset is 0)."""
    if math.isinf(epoch_seconds):
        epoch_seconds = time.time() + FOREVER_SECONDS
    # Microsecond steps: float seconds carry no real nanosecond digits.
    ns = round(epoch_seconds * 1e6) * 1000
    sec = ns // 1_000_000_000
    local = dt.datetime.fromtimestamp(sec).astimezone()
    offset = local.utcoffset() or dt.timedelta(0)
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(ns)
    total = int(offset.total_seconds())
    if total == 0:
        return text + "Z"
    sign = "+" if total > 0 else "-"
    hours, minutes = divmod(abs(total) // 60, 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"
