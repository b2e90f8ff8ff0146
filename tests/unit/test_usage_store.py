"""Usage accounting beyond tests/unit/test_usage.py: reopening, adding to written rows, bounded
buckets, the per-caller metrics, and SQLite's sums against Python's."""

from __future__ import annotations

from pathlib import Path

import pytest

from management_api.usage.recorder import UsageRecorder, totals
from management_api.usage.store import HOUR, UsageStore, hour_of

T0 = 1_780_000_000.0  # some moment; hour_of(T0) is its hour


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def line(caller: str = "n8n", model: str = "llama3.2:latest", **extra: object) -> dict:
    base = {
        "path": "/api/generate", "caller": caller, "key": None, "model": model,
        "model_key": model, "status": 200,
        "outcome": "completed", "queue_wait_ms": 250.0, "prompt_tokens": 10, "eval_count": 5,
        "gpu_ms": 1500.0,
    }  # fmt: skip
    base.update(extra)
    return base


def recorder(tmp_path: Path, clock: Clock, **options: object) -> UsageRecorder:
    return UsageRecorder(
        UsageStore(tmp_path / "usage.sqlite3"), model_label=lambda m: m, clock=clock, **options
    )


def test_reads_are_exact_before_and_after_a_flush_and_survive_reopening(tmp_path: Path) -> None:
    clock = Clock(T0)
    usage = recorder(tmp_path, clock)
    for caller in ("a", "a", "b"):
        usage.on_request_done(line(caller))
    before = usage.report(T0 - HOUR, T0 + 1, ["caller"])
    assert usage.flush() == 2  # two buckets, one transaction
    after = usage.report(T0 - HOUR, T0 + 1, ["caller"])
    assert before == after
    assert [(r["caller"], r["requests"], r["prompt_tokens"]) for r in after] == [
        ("a", 2, 20),
        ("b", 1, 10),
    ]
    usage.on_request_done(line("a"))  # unflushed, then written by stop
    usage.stop()
    usage.store.close()
    reopened = recorder(tmp_path, clock)
    rows = reopened.report(T0 - HOUR, T0 + 1, ["caller"])
    assert [(r["caller"], r["requests"], r["outcomes"]) for r in rows] == [
        ("a", 3, {"completed": 3}),
        ("b", 1, {"completed": 1}),
    ]
    assert totals(rows)["completion_tokens"] == 20
    assert totals(rows)["gpu_seconds"] == 6.0


def test_a_flush_adds_to_rows_already_written(tmp_path: Path) -> None:
    clock = Clock(T0)
    usage = recorder(tmp_path, clock)
    usage.on_request_done(line())
    usage.flush()
    usage.on_request_done(line(status=404))  # Ollama answered, with an error status
    usage.on_request_done(line(outcome="upstream_error", status=502))
    usage.flush()
    (row,) = usage.report(T0 - 1, T0 + 1, ["model"])
    assert row["requests"] == 3
    assert row["outcomes"] == {"completed": 1, "http_404": 1, "upstream_error": 1}


def test_many_lines_make_as_many_buckets_as_distinct_keys(tmp_path: Path) -> None:
    usage = recorder(tmp_path, Clock(T0))
    for i in range(5000):
        usage.on_request_done(line(f"c{i % 7}", model=f"m{i % 3}"))
    assert len(usage._pending) == 21
    assert usage.flush() == 21
    assert sum(r["requests"] for r in usage.report(T0 - 1, T0 + 1, ["caller"])) == 5000


def test_metrics_count_tokens_and_gpu_per_caller_with_at_most_32_header_names() -> None:
    from management_api.metrics import Metrics

    metrics = Metrics()
    for i in range(40):
        metrics.on_request_done(line(f"flow-{i}"))
    metrics.on_request_done(line("ops", key="ops"))  # a key's name is never `other`
    metrics.on_request_done(line(path="/api/show"))  # not inference: not counted
    sample = metrics.registry.get_sample_value
    labels = {"model": "llama3.2:latest"}
    assert (
        sample("llm_service_tokens_total", {**labels, "caller": "flow-0", "kind": "prompt"}) == 10
    )
    assert (
        sample("llm_service_tokens_total", {**labels, "caller": "flow-31", "kind": "completion"})
        == 5
    )
    assert (
        sample("llm_service_tokens_total", {**labels, "caller": "flow-32", "kind": "prompt"})
        is None
    )
    assert sample("llm_service_tokens_total", {**labels, "caller": "other", "kind": "prompt"}) == 80
    assert sample("llm_service_gpu_seconds_total", {**labels, "caller": "other"}) == 12.0
    assert sample("llm_service_gpu_seconds_total", {**labels, "caller": "ops"}) == 1.5
    assert sample("llm_service_gpu_seconds_total", {**labels, "caller": "n8n"}) is None


def test_reports_summed_by_sqlite_equal_the_buckets_summed_in_python(tmp_path: Path) -> None:
    clock = Clock(hour_of(T0))
    usage = recorder(tmp_path, clock)
    for i in range(300):
        clock.now = hour_of(T0) + (i % 5) * HOUR
        usage.on_request_done(line(f"c{i % 3}", model=f"m{i % 2}", task=f"t{i % 2}",
                                   status=404 if i % 7 == 0 else 200))  # fmt: skip
        if i == 150:
            usage.flush()  # half written, half in memory
    buckets = usage.buckets(T0 - HOUR, clock.now + HOUR)
    for fields in (["caller"], ["model", "task"], ["hour"], ["caller", "priority"]):
        report = usage.report(T0 - HOUR, clock.now + HOUR, fields)
        index = {"hour": 0, "caller": 1, "model": 2, "task": 3, "priority": 4}
        expected: dict[tuple, list[float]] = {}
        for key, sums in buckets.items():
            group = expected.setdefault(tuple(key[index[f]] for f in fields), [0.0] * 7)
            for i, value in enumerate(sums):
                group[i] += value
        got = {tuple(row[f] for f in fields): row for row in report}
        assert set(got) == set(expected)
        for ident, sums in expected.items():
            assert got[ident]["requests"] == sums[0]
            assert got[ident]["prompt_tokens"] == sums[1]
            assert got[ident]["gpu_seconds"] == pytest.approx(sums[3])
    assert totals(usage.report(T0 - HOUR, clock.now + HOUR, ["caller"]))["outcomes"] == {
        "completed": 257,
        "http_404": 43,
    }
