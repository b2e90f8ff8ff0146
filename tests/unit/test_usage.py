"""Usage accounting: hourly buckets, batching off the request path, pruning, restart, queries."""

from __future__ import annotations

import sqlite3
import time

import pytest

from management_api.usage.query import QueryError, parse_query, parse_time
from management_api.usage.recorder import CallerLabels, UsageRecorder, line_usage, totals
from management_api.usage.store import HOUR, UsageStore, hour_of

T0 = 1_780_000_000.0  # some moment; its hour starts at hour_of(T0)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _line(**fields):
    line = {
        "caller": "n8n",
        "key": None,
        "path": "/api/generate",
        "model": "llama3:8b",
        "model_key": "llama3:8b",
        "status": 200,
        "outcome": "ok",
        "queue_wait_ms": 250.0,
        "held_ms": 900.0,
        "prompt_tokens": 10,
        "eval_count": 20,
        "gpu_ms": 800.0,
        "priority": "standard",
    }
    line.update(fields)
    return line


def _recorder(tmp_path, clock, **kwargs):
    store = UsageStore(tmp_path / "usage.sqlite3")
    return UsageRecorder(store, model_label=lambda m: m, clock=clock, **kwargs)


def _rows_in_db(path):
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT hour, caller, model, task, outcome, requests FROM usage"
        ).fetchall()


def test_a_line_counts_tokens_gpu_and_wait():
    assert line_usage(_line()) == [1, 10, 20, 0.8, 0.25, 0, 0]


def test_openai_lines_count_the_held_slot_as_gpu_time():
    assert line_usage(_line(gpu_ms=None))[3] == 0.9
    del_gpu = _line()
    del del_gpu["gpu_ms"]
    assert line_usage(del_gpu)[3] == 0.9


def test_a_cache_hit_counts_the_tokens_it_saved_and_no_gpu():
    hit = _line(outcome="cache_hit", cache="HIT", saved_tokens=42, queue_wait_ms=0)
    for name in ("prompt_tokens", "eval_count", "gpu_ms", "held_ms"):
        del hit[name]
    assert line_usage(hit) == [1, 0, 0, 0.0, 0.0, 1, 42]


def test_lines_bucket_by_hour_caller_model_task(tmp_path):
    clock = Clock()
    rec = _recorder(tmp_path, clock)
    rec.on_request_done(_line())
    rec.on_request_done(_line())
    rec.on_request_done(_line(caller="dash", task="summarize"))
    clock.now = T0 + HOUR
    rec.on_request_done(_line())
    rec.on_request_done({"caller": "x", "model": None, "outcome": "ok"})  # /api/tags: not counted
    rec.flush()
    rows = sorted(_rows_in_db(tmp_path / "usage.sqlite3"))
    h = hour_of(T0)
    assert rows == [
        (h, "dash", "llama3:8b", "summarize", "ok", 1),
        (h, "n8n", "llama3:8b", "", "ok", 2),
        (h + HOUR, "n8n", "llama3:8b", "", "ok", 1),
    ]


def test_reads_are_exact_before_any_flush_and_after(tmp_path):
    clock = Clock()
    rec = _recorder(tmp_path, clock)
    for _ in range(3):
        rec.on_request_done(_line())
    rec.on_request_done(_line(status=502, outcome="upstream_error", prompt_tokens=None))
    before = rec.report(T0 - 10, T0 + 10, ["caller"])
    assert _rows_in_db(tmp_path / "usage.sqlite3") == []  # nothing written yet
    assert before == [
        {
            "caller": "n8n",
            "requests": 4,
            "prompt_tokens": 30,
            "completion_tokens": 80,
            "gpu_seconds": 3.2,
            "queue_wait_seconds": 1.0,
            "cache_hits": 0,
            "saved_tokens": 0,
            "outcomes": {"ok": 3, "upstream_error": 1},
        }
    ]
    rec.flush()
    rec.on_request_done(_line())  # one more, unwritten, on top of the written rows
    after = rec.report(T0 - 10, T0 + 10, ["caller"])
    assert after[0]["requests"] == 5 and after[0]["outcomes"] == {"ok": 4, "upstream_error": 1}


def test_group_by_several_fields_and_totals(tmp_path):
    rec = _recorder(tmp_path, Clock())
    rec.on_request_done(_line(caller="a", model_key="m1"))
    rec.on_request_done(_line(caller="a", model_key="m2"))
    rec.on_request_done(_line(caller="b", model_key="m2"))
    rows = rec.report(T0 - 10, T0 + 10, ["model", "caller"])
    assert {(r["model"], r["caller"], r["requests"]) for r in rows} == {
        ("m1", "a", 1),
        ("m2", "a", 1),
        ("m2", "b", 1),
    }
    assert totals(rows)["requests"] == 3 and totals(rows)["prompt_tokens"] == 30


def test_batches_are_written_by_the_thread_and_stop_flushes(tmp_path):
    rec = _recorder(tmp_path, Clock(), flush_seconds=0.05)
    rec.start()
    rec.on_request_done(_line())
    deadline = time.monotonic() + 5
    while not _rows_in_db(tmp_path / "usage.sqlite3") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _rows_in_db(tmp_path / "usage.sqlite3"), "the writer thread never flushed"
    rec.on_request_done(_line())
    rec.stop()  # flushes what came after the last batch
    assert _rows_in_db(tmp_path / "usage.sqlite3")[0][-1] == 2


def test_counts_survive_a_restart(tmp_path):
    clock = Clock()
    first = _recorder(tmp_path, clock, flush_seconds=60)
    first.start()
    for _ in range(7):
        first.on_request_done(_line())
    first.stop()  # a clean stop flushes although the period never came
    first.store.close()
    second = _recorder(tmp_path, clock)
    second.on_request_done(_line())
    report = second.report(T0 - 10, T0 + 10, ["caller"])
    assert report[0]["requests"] == 8 and report[0]["completion_tokens"] == 160


def test_a_failed_write_keeps_the_batch(tmp_path):
    rec = _recorder(tmp_path, Clock())
    rec.on_request_done(_line())
    real_add = rec.store.add
    calls = []

    def failing(batch):
        calls.append(dict(batch))
        raise sqlite3.OperationalError("disk I/O error")

    rec.store.add = failing
    with pytest.raises(sqlite3.OperationalError):
        rec.flush()
    assert rec.report(T0 - 10, T0 + 10, ["caller"])[0]["requests"] == 1  # still counted
    rec.on_request_done(_line())
    rec.store.add = real_add
    rec.flush()
    assert _rows_in_db(tmp_path / "usage.sqlite3")[0][-1] == 2  # nothing lost, nothing doubled


def test_retention_prunes_old_hours(tmp_path):
    clock = Clock()
    rec = _recorder(tmp_path, clock, retention_days=1)
    rec.on_request_done(_line())
    clock.now = T0 + 2 * HOUR
    rec.on_request_done(_line())
    rec.flush()
    clock.now = T0 + 86400 + HOUR  # the first hour ended more than a day ago, the second not
    rec._maybe_prune()
    assert [row[0] for row in _rows_in_db(tmp_path / "usage.sqlite3")] == [hour_of(T0) + 2 * HOUR]


def test_header_callers_beyond_the_limit_count_as_other():
    labels = CallerLabels(2)
    assert [labels({"caller": c}) for c in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]
    assert labels({"caller": "keyname", "key": "keyname"}) == "keyname"  # keys are bounded
    assert labels({"caller": "anonymous"}) == "anonymous"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1780000000", 1_780_000_000.0),
        ("1780000000.5", 1_780_000_000.5),
        ("2026-05-28T20:26:40Z", 1_780_000_000.0),
        ("2026-05-28T22:26:40+02:00", 1_780_000_000.0),
        ("2026-05-28T20:26:40", 1_780_000_000.0),
    ],
)
def test_times_are_epoch_or_iso(raw, expected):
    assert parse_time("since", raw) == expected


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "nan"}, "until"),
        ({"since": "-5"}, "since"),
        ({"since": "200", "until": "100"}, "since"),
        ({"group_by": "user"}, "group_by"),
        ({"group_by": "caller,caller"}, "group_by"),
    ],
)
def test_bad_parameters_are_named(args, parameter):
    with pytest.raises(QueryError) as caught:
        parse_query(args, T0)
    assert caught.value.parameter == parameter


def test_defaults_are_the_last_day_by_caller():
    query = parse_query({}, T0)
    assert (query.since, query.until, query.group_by) == (T0 - 86400, T0, ("caller",))
    assert parse_query({"group_by": "caller, task"}, T0).group_by == ("caller", "task")


def test_recording_is_cheap():
    """The request path only adds to a dict: well under 50 µs a line on this machine."""
    rec = UsageRecorder(UsageStore.__new__(UsageStore), model_label=lambda m: m, clock=time.time)
    lines = [_line(caller=f"c{i % 20}", model_key=f"m{i % 3}") for i in range(20000)]
    started = time.perf_counter()
    for line in lines:
        rec.on_request_done(line)
    per_line = (time.perf_counter() - started) / len(lines)
    print(f"usage: {per_line * 1e6:.2f} µs per recorded line")
    assert per_line < 50e-6


def test_callers_table_windows_and_wait_p95(tmp_path):
    from management_api.usage.callers import RecentWaits, callers_table

    clock = Clock()
    rec = _recorder(tmp_path, clock)
    waits = RecentWaits(clock=clock)
    path = {"path": "/api/generate"}
    clock.now = T0 - 5 * HOUR  # an earlier hour of the day: counted in "day" only
    for observer in (rec, waits):
        observer.on_request_done({**_line(caller="a"), **path})
    clock.now = T0
    for wait_ms in range(1, 21):  # 20 waits of 1..20 ms: nearest-rank p95 is 19 ms
        for observer in (rec, waits):
            observer.on_request_done({**_line(caller="a", queue_wait_ms=wait_ms), **path})
    for observer in (rec, waits):
        observer.on_request_done({**_line(caller="b", priority="batch", queue_wait_ms=500), **path})
    table = callers_table(rec, waits, now=T0)
    rows = {row["caller"]: row for row in table["rows"]}
    assert [row["caller"] for row in table["rows"]] == ["a", "b"]
    assert (rows["a"]["hour"]["requests"], rows["a"]["day"]["requests"]) == (20, 21)
    assert rows["a"]["day"]["tokens"] == 21 * 30
    assert rows["a"]["hour"]["gpu_seconds"] == pytest.approx(16.0)
    assert rows["a"]["hour"]["wait_p95_seconds"] == {
        "interactive": None,
        "standard": 0.019,
        "batch": None,
    }
    assert rows["a"]["day"]["wait_p95_seconds"]["standard"] == 0.02  # 20th of 21: 0.25 s is 21st
    assert rows["b"]["hour"]["wait_p95_seconds"]["batch"] == 0.5
