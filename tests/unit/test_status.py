"""The status part without a server: the snapshot builder over real limiter and healing log,
rejections in a window, history downsampling, the page's files and their weight."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from management_api import names
from management_api.health.checks import Probe
from management_api.health.healing import HealingLog
from management_api.ollama import OllamaUnreachable
from management_api.proxy.limiter import Limiter
from management_api.status import RecentRejections, StatusBuilder, asset, render
from management_api.status.assets import CONTENT_TYPES, STATIC_DIR, page_weight
from management_api.telemetry.history import downsample
from management_api.telemetry.reading import (
    GpuReading,
    HostReading,
    MemoryReading,
    Snapshot,
    ThermalZone,
)

GIB = 1024**3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- rejections in the last five minutes


def test_rejections_count_refusals_in_the_window_only():
    clock = Clock()
    window = RecentRejections(window_seconds=300, clock=clock)
    window.on_reject("a", "queue_full")
    window.on_reject("a", "queue_timeout")
    window.on_reject("a", "cancelled")  # the client left: not a refusal
    clock.now += 200
    window.on_reject("b", "queue_full")
    assert window.counts() == {"a": 2, "b": 1}
    clock.now += 150  # a's are now 350 s old
    assert window.counts() == {"b": 1}


def test_rejections_keep_a_bounded_number_of_events():
    window = RecentRejections(max_events=10, clock=Clock())
    for _ in range(25):
        window.on_reject("a", "queue_full")
    assert window.counts() == {"a": 10}


# --- the healing log


def test_healing_log_keeps_the_last_50_newest_first():
    log = HealingLog(wall_clock=lambda: 1_800_000_000.0)
    for i in range(60):
        log.record("cache_clear", who="ops" if i % 2 else None, ok=True, result=f"run {i}")
    entries = log.recent()
    assert len(entries) == 50
    assert entries[0]["result"] == "run 59" and entries[-1]["result"] == "run 10"
    assert entries[0]["id"] == 60 and entries[0]["who"] == "ops" and entries[1]["who"] is None
    entries[0]["result"] = "changed by a reader"
    assert log.recent()[0]["result"] == "run 59"


# --- downsampling


def _point(t: float, **values: Any) -> dict[str, Any]:
    return {"t": t, "cpu_percent": None, "gpu_temperature_c": None, **values}


def test_downsample_leaves_short_series_alone_and_refuses_zero():
    points = [_point(i, cpu_percent=float(i)) for i in range(5)]
    assert downsample(points, 5) == points
    assert downsample(points, 5) is not points
    with pytest.raises(ValueError):
        downsample(points, 0)


def test_downsample_averages_but_keeps_temperature_peaks():
    points = [
        _point(
            float(i),
            cpu_percent=float(i),
            gpu_temperature_c=60.0 + (30 if i == 3 else 0),
            memory_used_bytes=1000 + i,
            cpu_per_core_percent=[i, 2 * i],
            thermal_c={"cpu": 50.0 + i},
            power_rails_w={"VDD_IN": 1.0 * i},
            memory_unified=True,
        )
        for i in range(10)
    ]
    out = downsample(points, 3)  # buckets of 4, 4, 2
    assert len(out) == 3
    assert [p["t"] for p in out] == [3.0, 7.0, 9.0]  # each bucket's last time
    assert out[0]["cpu_percent"] == 1.5
    assert out[0]["gpu_temperature_c"] == 90.0  # the spike survives
    assert out[1]["gpu_temperature_c"] == 60.0
    assert out[0]["memory_used_bytes"] == 1002 and isinstance(out[0]["memory_used_bytes"], int)
    assert out[0]["cpu_per_core_percent"] == [2, 3]
    assert out[0]["thermal_c"] == {"cpu": 53.0}  # zones keep their maximum too
    assert out[2]["power_rails_w"] == {"VDD_IN": 8.5}
    assert out[2]["memory_unified"] is True
    assert downsample(points, 720) == points


def test_downsample_keeps_unknown_as_unknown():
    points = [_point(float(i)) for i in range(8)]
    points[5]["cpu_percent"] = 40.0
    out = downsample(points, 2)
    assert out[0]["cpu_percent"] is None and out[1]["cpu_percent"] == 40.0


# --- the snapshot builder


class FakeHealth:
    def __init__(self, status: str = "healthy", loaded: tuple[dict[str, Any], ...] = ()) -> None:
        self.status = status
        self.probe = SimpleNamespace(last=Probe(True, 0.0, loaded=loaded))
        self.calls = 0

    def evaluate(self) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        body = {
            "status": self.status,
            "checks": {
                "ollama_api": {"status": "ok", "latency_ms": 1.0 + self.calls},
                "gpu": {"status": "ok"},
                "model_loaded": {"status": "ok"},
                "error_log": {"status": "ok", "window_seconds": 300, "errors": []},
            },
        }
        return (503 if self.status == "unhealthy" else 200), body


class FakeCatalog:
    def __init__(self, entries: list[dict[str, Any]] | None) -> None:
        self.entries = entries

    def view(self) -> Any:
        if self.entries is None:
            raise OllamaUnreachable("down")
        return SimpleNamespace(entries=tuple(self.entries), stale=False)


def _snapshot(gpu: GpuReading, source: str = "jetson_sysfs") -> Snapshot:
    memory = MemoryReading(total_bytes=64 * GIB, used_bytes=20 * GIB, available_bytes=44 * GIB,
                           percent=31.0, unified=True, cached_bytes=8 * GIB)  # fmt: skip
    return Snapshot(1, 1_800_000_000.0, 5.0, source, gpu, HostReading(memory=memory))


def builder(
    *,
    gpu: GpuReading | None = None,
    source: str = "jetson_sysfs",
    limiter: Limiter | None = None,
    health: FakeHealth | None = None,
    entries: list[dict[str, Any]] | None = None,
    clock: Clock | None = None,
) -> StatusBuilder:
    gpu = gpu or GpuReading(memory_shared=True, memory_used_bytes=6 * GIB, temperature_c=50.0)
    snapshot = _snapshot(gpu, source)
    return StatusBuilder(
        limiter=limiter or Limiter(normalize=names.normalize),
        catalog=FakeCatalog(
            [{"name": "llama3.2:1b", "size": 1_300_000_000}] if entries is None else entries
        ),
        pulls=SimpleNamespace(jobs=lambda: []),
        sampler=SimpleNamespace(latest=lambda: snapshot, interval=5.0),
        health=health or FakeHealth(),
        healing_log=HealingLog(),
        rejections=RecentRejections(clock=clock or Clock()),
        service_info=lambda: {
            "name": "llm-service",
            "version": "0.1.0",
            "started_at": 1.0,
            "ollama_version": "0.9",
            "platform": {},
            "telemetry_source": source,
        },
        clock=clock or Clock(),
    )


def test_unified_memory_is_reported_as_shared_never_as_vram():
    body = builder().snapshot()
    memory = body["telemetry"]["memory"]
    assert memory["unified"] is True and memory["gpu_shared_bytes"] == 6 * GIB
    assert memory["cached_bytes"] == 8 * GIB
    assert "vram" not in json.dumps(body["telemetry"]).lower()
    assert body["telemetry"]["gpu_reading"] is True
    assert body["verdict"] == "healthy" and body["reasons"] == []


def test_no_gpu_source_is_said_plainly():
    body = builder(gpu=GpuReading(), source="none").snapshot()
    assert body["telemetry"]["gpu_reading"] is False
    assert body["telemetry"]["source"] == "none"


@pytest.mark.parametrize(
    ("temperature", "verdict", "words"),
    [
        (83.9, "healthy", None),
        (88.0, "degraded", "tj 88 °C (warning at 84 °C)"),
        (101.0, "unhealthy", "tj 101 °C (critical at 100 °C)"),
    ],
)
def test_temperatures_against_jtops_lines(temperature, verdict, words):
    zones = (ThermalZone("cpu", 60.0), ThermalZone("tj", temperature))
    gpu = GpuReading(memory_shared=True, temperature_c=50.0, thermal_zones=zones)
    body = builder(gpu=gpu).snapshot()
    assert body["verdict"] == verdict
    texts = [r["text"] for r in body["reasons"]]
    assert (words in texts) if words else texts == []


def test_models_join_limits_installed_and_loaded():
    limiter = Limiter(normalize=names.normalize)
    slot = limiter.acquire("llama3.2:1b")
    loaded = ({"name": "gemma3:4b", "size": 4_000_000_000, "size_vram": 4_000_000_000,
               "expires_at": "2026-12-03T10:00:00Z", "context_length": 8192},)  # fmt: skip
    try:
        body = builder(limiter=limiter, health=FakeHealth(loaded=loaded)).snapshot()
    finally:
        slot.release()
    rows = {row["model"]: row for row in body["models"]}
    assert set(rows) == {"llama3.2:1b", "gemma3:4b"}
    assert rows["llama3.2:1b"]["running"] == 1 and rows["llama3.2:1b"]["installed"] is True
    assert rows["llama3.2:1b"]["loaded"] is None
    assert rows["gemma3:4b"]["installed"] is False and rows["gemma3:4b"]["limit"] == 1
    assert rows["gemma3:4b"]["loaded"] == {"size_bytes": 4_000_000_000,
                                           "size_vram_bytes": 4_000_000_000,
                                           "context_length": 8192,
                                           "expires_at": "2026-12-03T10:00:00Z"}  # fmt: skip
    assert rows["llama3.2:1b"]["held"] is False  # fifo: nothing is ever held


def test_held_is_shown_with_its_reason_when_the_scheduler_holds_a_model():
    limiter = Limiter(normalize=names.normalize)
    real = limiter.snapshot_with_scheduler

    def with_held() -> dict[str, Any]:
        snap = real()
        for view in snap["models"]:
            view["held"] = True
            view["held_reason"] = {"reason": "needs_swap", "waiting_for": ["gemma3:4b"]}
        return snap

    slot = limiter.acquire("llama3.2:1b")
    try:
        limiter.snapshot_with_scheduler = with_held  # type: ignore[method-assign]
        body = builder(limiter=limiter).snapshot()
    finally:
        slot.release()
    row = next(r for r in body["models"] if r["model"] == "llama3.2:1b")
    assert row["held"] is True and row["held_reason"] == "needs_swap"


def test_ollama_down_is_unhealthy_with_the_reason_and_no_model_list():
    status = builder(health=FakeHealth(status="unhealthy"))
    status.catalog = FakeCatalog(None)  # type: ignore[assignment]
    snap = status.snapshot()
    assert snap["verdict"] == "unhealthy"
    assert snap["reasons"][0]["level"] == "critical"
    assert snap["installed_error"].startswith("Ollama is not reachable")


def test_the_snapshot_is_shared_for_a_second_and_the_etag_is_stable():
    clock = Clock()
    health = FakeHealth()
    status = builder(health=health, clock=clock)
    first = status.snapshot()
    assert status.snapshot() is first and health.calls == 1
    clock.now += 1.5
    second = status.snapshot()
    assert health.calls == 2 and second is not first
    # Nothing clock-derived in the body (the probe's latency changed): same bytes, same tag.
    access = {"mode": "off", "key": None, "role": None, "can_act": True}
    assert render(first, access) == render(second, access)
    body, etag = render(second, {**access, "key": "ops"})
    assert etag != render(second, access)[1]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag) and json.loads(body)["access"]["key"] == "ops"


# --- the page's files


def test_only_listed_files_are_served():
    assert asset("app.js") is not None and asset("app.js").content_type.startswith(
        "text/javascript"
    )
    for name in ("VENDORED.md", "uPlot.LICENSE", "../snapshot.py", "..", "", "app.js/"):
        assert asset(name) is None, name


def test_the_page_weighs_at_most_150_kb():
    assert page_weight() <= 150_000
    for name in CONTENT_TYPES:
        assert (STATIC_DIR / name).is_file(), name


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script():
    html = (STATIC_DIR / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/ui/"), url
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert " style=" not in html and "<style" not in html
    js = (STATIC_DIR / "app.js").read_text()
    assert "http://" not in js and "https://" not in js
    assert "innerHTML" not in js  # every value is written as text


def test_the_vendored_chart_library_is_the_pinned_one():
    vendored = (STATIC_DIR / "VENDORED.md").read_text()
    version = re.search(r"uplot@(\d+\.\d+\.\d+)", vendored).group(1)
    head = (STATIC_DIR / "uPlot.iife.min.js").read_text()[:200]
    assert f"(v{version})" in head
    assert "MIT License" in (STATIC_DIR / "uPlot.LICENSE").read_text()
    assert Path(STATIC_DIR / "uPlot.min.css").stat().st_size > 0
