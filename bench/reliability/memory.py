"""Does the API worker leak? RSS, descriptors and threads after warm-up, as figures and checks."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from bench.reliability.observe import ProcessSample

RSS_GROWTH_LIMIT_MB = 10.0
# Descriptors and threads may rise with load until pools are full; past warm-up, the peak of
# the second half may not exceed the peak of the first half by more than this.
COUNT_GROWTH_LIMIT = 32


def _slope_per_hour(samples: list[ProcessSample]) -> float:
    if len(samples) < 2:
        return 0.0
    xs = [s.at for s in samples]
    ys = [s.rss_mb for s in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var * 3600


def analyse(samples: list[ProcessSample], t0: float, warmup_s: float) -> dict[str, Any]:
    """Figures for the summary, with `failures` naming any growth past the limits."""
    after = [s for s in samples if s.at - t0 >= warmup_s]
    failures: list[str] = []
    if len(after) < 4:
        return {"failures": [f"only {len(after)} samples after warm-up; run longer"]}
    edge = min(3, len(after) // 2)
    rss_start = statistics.median(s.rss_mb for s in after[:edge])
    rss_end = statistics.median(s.rss_mb for s in after[-edge:])
    growth = rss_end - rss_start
    if growth > RSS_GROWTH_LIMIT_MB:
        failures.append(f"RSS grew {growth:.1f} MB after warm-up (limit {RSS_GROWTH_LIMIT_MB})")
    half = len(after) // 2
    for name in ("fds", "threads"):
        first = max(getattr(s, name) for s in after[:half])
        second = max(getattr(s, name) for s in after[half:])
        if second - first > COUNT_GROWTH_LIMIT:
            failures.append(f"{name} kept growing: peak {first} then {second}")
    return {
        "rss_mb_first": round(samples[0].rss_mb, 2),
        "rss_mb_start": round(rss_start, 2),
        "rss_mb_end": round(rss_end, 2),
        "rss_mb_max": round(max(s.rss_mb for s in after), 2),
        "rss_growth_mb": round(growth, 2),
        "rss_slope_mb_per_hour": round(_slope_per_hour(after), 2),
        "fds_start": after[0].fds,
        "fds_end": after[-1].fds,
        "fds_max": max(s.fds for s in after),
        "threads_start": after[0].threads,
        "threads_end": after[-1].threads,
        "threads_max": max(s.threads for s in after),
        "warmup_seconds": warmup_s,
        "samples": len(samples),
        "failures": failures,
    }


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["seconds", "rss_mb", "fds", "threads"])
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], warmup_s: float, path: Path, title: str) -> None:
    import matplotlib  # a dev extra, imported only where a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["seconds"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    for ax, key, label in zip(
        axes, ("rss_mb", "fds", "threads"), ("RSS (MB)", "open fds", "threads"), strict=True
    ):
        ax.plot(minutes, [r[key] for r in rows], marker=".", linewidth=1)
        ax.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
