"""Downsampling of the sampler's history for plots (``GET /api/stats/history``).

An hour at a short `LLM_STATS_INTERVAL` is thousands of points; a chart a few hundred pixels
wide needs a few hundred. Consecutive points are folded into equal-count buckets: numbers are
averaged, except temperatures, which keep the bucket's maximum so that a short spike past a
warning line stays visible; per-core lists and per-zone/per-rail maps are folded member-wise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DEFAULT_MAX_POINTS = 720
# Folded with max(), not the mean: a peak must survive downsampling.
PEAK_KEYS = frozenset({"gpu_temperature_c", "thermal_c"})


def downsample(points: Sequence[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """At most `max_points` points, oldest first; each carries the time of its bucket's last
    point. Fewer points than the cap come back unchanged."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    if len(points) <= max_points:
        return [dict(p) for p in points]
    size = math.ceil(len(points) / max_points)
    return [_fold(points[i : i + size]) for i in range(0, len(points), size)]


def _fold(bucket: Sequence[dict[str, Any]]) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    for key in bucket[-1]:
        values = [p.get(key) for p in bucket]
        if key == "t":
            folded[key] = values[-1]
        else:
            folded[key] = _fold_values(values, peak=key in PEAK_KEYS)
    return folded


def _fold_values(values: list[Any], *, peak: bool) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    last = present[-1]
    if isinstance(last, bool):
        return last
    if isinstance(last, (int, float)):
        numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if peak:
            return max(numbers)
        mean = sum(numbers) / len(numbers)
        return round(mean) if isinstance(last, int) else round(mean, 3)
    if isinstance(last, list):
        width = len(last)
        columns = [[v[i] for v in present if isinstance(v, list) and len(v) == width]
                   for i in range(width)]  # fmt: skip
        return [_fold_values(list(column), peak=peak) for column in columns]
    if isinstance(last, dict):
        keys = [k for k in last]
        return {
            k: _fold_values([v.get(k) for v in present if isinstance(v, dict)], peak=peak)
            for k in keys
        }
    return last
