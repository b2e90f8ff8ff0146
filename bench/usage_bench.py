"""The write-path cost of usage accounting: µs per counted access line, the new per-caller
Prometheus counters per line, a batch write, a read, and a read of a full 90-day retention
(``python -m bench.usage_bench``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from management_api.metrics import Metrics
from management_api.usage.recorder import UsageRecorder, line_usage
from management_api.usage.store import HOUR, UsageStore

LINES = 200_000
CALLERS, MODELS = 10, 4


def _lines() -> list[dict]:
    return [
        {"path": "/api/generate", "caller": f"c{i % CALLERS}", "key": None,
         "model": f"m{i % MODELS}", "model_key": f"m{i % MODELS}", "status": 200,
         "outcome": "completed", "queue_wait_ms": 12.5, "prompt_tokens": 30, "eval_count": 80,
         "gpu_ms": 900.0, "priority": "standard"}
        for i in range(1000)
    ]  # fmt: skip


def main() -> None:
    lines = _lines()
    recorder = UsageRecorder(
        UsageStore(Path(tempfile.mkdtemp()) / "usage.sqlite3"), model_label=lambda m: m
    )
    started = time.perf_counter()
    for i in range(LINES):
        recorder.on_request_done(lines[i % 1000])
    print(f"count one line: {(time.perf_counter() - started) / LINES * 1e6:.2f} µs")

    metrics = Metrics()
    started = time.perf_counter()
    for i in range(LINES):
        line = lines[i % 1000]
        usage, caller = line_usage(line), metrics.caller_label(line)
        model = metrics.model_label(line["model_key"])
        metrics.caller_tokens.labels(caller, model, "prompt").inc(usage[1])
        metrics.caller_tokens.labels(caller, model, "completion").inc(usage[2])
        metrics.caller_gpu.labels(caller, model).inc(usage[3])
    print(f"per-caller counters, one line: {(time.perf_counter() - started) / LINES * 1e6:.2f} µs")

    for _ in range(3):
        for line in lines:
            recorder.on_request_done(line)
        started = time.perf_counter()
        buckets = recorder.flush()
        print(f"write {buckets} buckets: {(time.perf_counter() - started) * 1000:.2f} ms")
    started = time.perf_counter()
    rows = recorder.report(0, 4e9, ["caller"])
    print(f"read by caller: {(time.perf_counter() - started) * 1000:.2f} ms, "
          f"{sum(r['requests'] for r in rows)} requests")  # fmt: skip

    # A full retention: 90 days of hourly buckets of 20 callers x 4 models, read back whole.
    store = UsageStore(Path(tempfile.mkdtemp()) / "usage.sqlite3")
    store.add({
        (hour * HOUR, f"c{c}", f"m{m}", "", "standard", "completed"): [1, 2, 3, 0.5, 0.1, 0, 0]
        for hour in range(90 * 24) for c in range(20) for m in range(4)
    })  # fmt: skip
    full = UsageRecorder(store, model_label=lambda m: m)
    started = time.perf_counter()
    full.report(0, 90 * 24 * HOUR, ["caller"])
    print(f"read 90 days (172,800 buckets) by caller: {time.perf_counter() - started:.3f} s")


if __name__ == "__main__":
    main()
