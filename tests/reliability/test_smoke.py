"""A short chaos run and a short soak, with the same accounting as `make chaos` / `make soak`.

Each starts the real process tree (supervisord, the emulator as Ollama, gunicorn) and passes
only if every request was accounted for exactly once, no model ever ran over its limit, no slot
leaked, and every cancelled request's upstream connection was closed.
"""

from __future__ import annotations

import csv
import json

import pytest

from bench.reliability.chaos import run_chaos
from bench.reliability.soak import run_soak


def _assert_accounted(summary: dict) -> None:
    assert summary["failures"] == []
    assert summary["unaccounted"] == 0
    assert summary["leaked_slots"] == 0
    assert sum(summary["outcomes"].values()) == summary["requests"] > 0
    for model, limit in summary["limit"].items():
        assert 0 < summary["max_in_flight"][model] <= limit
    assert summary["access_log"]["missing"] == summary["access_log"]["duplicated"] == 0
    assert summary["upstream"]["duplicates"] == 0
    assert summary["cancelled"]["upstream_left_open"] == 0
    assert summary["outcomes"].get("completed", 0) > 0
    assert summary["duration_s"]["max"] <= summary["duration_s"]["client_bound"]


@pytest.mark.timeout(150)
def test_chaos_smoke(tmp_path):
    summary = run_chaos(
        16, tmp_path, concurrency=8, seed=3, kill_every_s=7, cancel_pulls_at_end=True
    )

    _assert_accounted(summary)
    assert json.loads((tmp_path / "chaos-summary.json").read_text())["passed"] is True
    # Ollama was crashed at least once, /health said so, and came back by itself.
    crashes = summary["health"]["crashes"]
    assert crashes
    assert all(c["recovered_after_s"] > 0 for c in crashes)
    assert summary["health"]["statuses"].get("503", 0) > 0
    assert summary["faults_injected_total"] >= len(crashes) + 1
    # Every pull job ended, with attempts matching its failures (checked in `failures`).
    assert sum(summary["pulls"]["states"].values()) == summary["pulls"]["jobs"]
    # Durable jobs were accepted during the crashes; every one ended and was accounted for
    # (a lost or unended job, or one cancelled by nobody, is in `failures`).
    assert summary["jobs"]["jobs"] > 0
    assert sum(summary["jobs"]["states"].values()) == summary["jobs"]["jobs"]
    assert set(summary["jobs"]["states"]) <= {"succeeded", "failed", "cancelled"}
    # The liveness probe answered within a second all along (issue 29), and a client that
    # stopped reading was dropped (its slot back) while the faults ran.
    assert summary["liveness"]["probes"] > 50 and summary["liveness"]["missed"] == 0
    assert summary["liveness"]["p99_ms"] < 1000
    assert summary["stalled_clients"]["opened"] >= 1
    assert summary["stalled_clients"]["dropped"] >= 1


@pytest.mark.timeout(150)
def test_soak_smoke(tmp_path):
    summary = run_soak(12, tmp_path, concurrency=6, seed=4, sample_s=1, warmup_s=3)

    _assert_accounted(summary)
    assert set(summary["outcomes"]) <= {"completed", "rejected_429", "client_cancelled"}
    for key in ("rss_mb_start", "rss_mb_end", "rss_slope_mb_per_hour", "fds_start", "fds_end"):
        assert isinstance(summary[key], (int, float))
    assert summary["rss_growth_mb"] <= 10
    with (tmp_path / "soak-samples.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 8
    assert all(float(row["rss_mb"]) > 0 and int(row["fds"]) > 0 for row in rows)
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
