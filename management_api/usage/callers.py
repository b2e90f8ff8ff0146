"""The status page's Callers table: per caller, this hour and the last 24 hours.

Requests, tokens and GPU-seconds come from the usage buckets (exact, restart-proof). Queue-wait
p95 per priority class needs the single waits, which the buckets do not keep: `RecentWaits`
holds the waits of the last ``max_events`` inference requests in memory (a request observer),
so the p95 figures cover at most that many requests and start empty after a restart.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from management_api.proxy.inference import INFERENCE_ROUTES
from management_api.usage.recorder import DEFAULT_CLASS, UsageRecorder
from management_api.usage.store import HOUR, hour_of

CLASSES = ("interactive", "standard", "batch")
DAY = 86400
MAX_WAIT_EVENTS = 20_000
WINDOWS = (("hour", HOUR), ("day", DAY))


class RecentWaits:
    """Queue waits of recent inference requests per caller and class (bounded, oldest first
    out)."""

    def __init__(
        self, max_events: int = MAX_WAIT_EVENTS, clock: Callable[[], float] = time.time
    ) -> None:
        self._events: deque[tuple[float, str, str, float]] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._clock = clock

    def on_request_done(self, line: Mapping[str, Any]) -> None:
        if line.get("path") not in INFERENCE_ROUTES or line.get("model") is None:
            return
        if line.get("outcome") in ("cache_hit", "coalesced"):
            return  # answered without a slot: no queue to wait in
        wait = float(line.get("queue_wait_ms") or 0) / 1000
        event = (self._clock(), str(line.get("caller") or "anonymous"),
                 str(line.get("priority") or DEFAULT_CLASS), wait)  # fmt: skip
        with self._lock:
            self._events.append(event)

    def p95(self, since: float) -> dict[str, dict[str, float | None]]:
        """Per caller, the p95 wait (seconds) of each class since ``since`` (None: no request)."""
        with self._lock:
            recent = [e for e in self._events if e[0] >= since]
        waits: dict[str, dict[str, list[float]]] = {}
        for _, caller, klass, wait in recent:
            waits.setdefault(caller, {}).setdefault(klass, []).append(wait)
        return {
            caller: {k: _p95(per_class.get(k, [])) for k in CLASSES}
            for caller, per_class in waits.items()
        }


def _p95(values: list[float]) -> float | None:
    """Nearest-rank p95 (the smallest value at or above 95 % of them), None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[math.ceil(0.95 * len(ordered)) - 1], 3)


def callers_table(
    recorder: UsageRecorder, waits: RecentWaits, now: float | None = None
) -> dict[str, Any]:
    """Rows per caller with, per window (``hour``: this UTC hour so far; ``day``: the last 24
    hourly buckets, this one included), requests, tokens, GPU-seconds and wait p95 per class."""
    now = time.time() if now is None else now
    rows: dict[str, dict[str, Any]] = {}
    for window, seconds in WINDOWS:
        since = hour_of(now) - seconds + HOUR  # whole hourly buckets
        p95 = waits.p95(since)
        for group in recorder.report(since, now + 1, ["caller"]):
            row = rows.setdefault(group["caller"], {"caller": group["caller"]})
            row[window] = {
                "requests": group["requests"],
                "tokens": group["prompt_tokens"] + group["completion_tokens"],
                "gpu_seconds": group["gpu_seconds"],
                "wait_p95_seconds": p95.get(group["caller"], dict.fromkeys(CLASSES)),
            }
    empty = {"requests": 0, "tokens": 0, "gpu_seconds": 0.0,
             "wait_p95_seconds": dict.fromkeys(CLASSES)}  # fmt: skip
    ordered = sorted(rows.values(), key=lambda r: (-r["day"]["requests"], r["caller"]))
    for row in ordered:
        row.setdefault("hour", dict(empty))
    return {"classes": list(CLASSES), "rows": ordered}
