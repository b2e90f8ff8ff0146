"""`/api/stats` rendering: legacy keys with the callers' types, numeric sections, /health GPU."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from management_api.telemetry.defaults import create_sampler
from management_api.telemetry.host import HostSource
from management_api.telemetry.jetson_sysfs import JetsonSysfsSource
from management_api.telemetry.nvidia_smi import gpu_reading_from_rows, parse_query_gpu
from management_api.telemetry.reading import MIB, GpuReading, HostReading, Snapshot
from management_api.telemetry.sampler import Sampler
from management_api.telemetry.snapshot import gpu_status, health_gpu_memory, render_stats

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry"
KIB = 1024


def assert_legacy_types(body: dict[str, Any]) -> None:
    """What Arasul's callers read from GET /api/stats (arasul-callers §3 H2/H4, §4.2)."""
    for key in ("gpu_utilization", "gpu_memory", "gpu_temperature"):
        assert isinstance(body[key], str), key
    assert isinstance(body["process_memory_mb"], float)
    assert isinstance(body["cpu_percent"], float)
    assert isinstance(body["timestamp"], str) and body["timestamp"].endswith("Z")
    datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    json.dumps(body)  # serialisable as it is


def jetson_snapshot(tree: str, tmp_path: Path) -> Snapshot:
    host = HostSource(tmp_path)
    host.prime()
    time.sleep(0.1)
    sampler = Sampler(
        (JetsonSysfsSource(FIXTURES / "sysfs" / tree),),
        host,
        interval=5,
        extra_info=lambda: {"models": {"llama3.2:latest": {"in_flight": 2, "queued": 1}}},
    )
    return sampler.sample_once()


def test_agx_orin_fixture_tree(tmp_path: Path) -> None:
    snapshot = jetson_snapshot("agx_orin_jp6", tmp_path)
    body = render_stats(snapshot, now=snapshot.sampled_at + 1.5)
    assert_legacy_types(body)
    assert body["gpu_utilization"] == "77%"
    assert body["gpu_memory"] == "12288MB / 62841MB"  # NvMapMemUsed of the shared 62841 MB
    assert body["gpu_temperature"] == "51°C"
    assert body["gpu"] == {
        "source": "jetson_sysfs",
        "name": "17000000.gpu",
        "device_count": 1,
        "utilization_percent": 77.4,
        "memory_used_bytes": 12582912 * KIB,
        "memory_total_bytes": 64349184 * KIB,
        "memory_free_bytes": 45998452 * KIB,
        "memory_shared": True,
        "temperature_c": 51.312,
        "power_w": 2.412,
        "frequency_mhz": 306.0,
    }
    assert body["memory"]["unified"] is True
    assert body["thermal"] == {"cpu": 53.968, "gpu": 51.312, "soc0": 54.812, "tj": 55.125}
    assert body["power"]["total_source"] == "sum of rails"
    assert body["power"]["total_w"] == 9.024  # 9023.6 mW, rendered to the milliwatt
    assert body["power"]["rails"]["VDD_GPU_SOC"] == {
        "power_w": 2.412,
        "voltage_mv": 5025,
        "current_ma": 480,
    }
    assert body["proxy"] == {"models": {"llama3.2:latest": {"in_flight": 2, "queued": 1}}}
    assert body["interval_seconds"] == 5
    assert body["age_seconds"] == pytest.approx(1.5)
    assert body["disk"]["path"] == str(tmp_path)
    assert body["process_memory_mb"] == round(body["process"]["rss_bytes"] / MIB, 1)

    memory = health_gpu_memory(snapshot)
    assert memory == {
        "free_mb": 45998452 // KIB,
        "total_mb": 62841,
        "used_mb": (64349184 - 45998452) // KIB,
        "source": "system_ram",
    }
    assert gpu_status(memory) == "ok"


def test_orin_nano_fixture_tree(tmp_path: Path) -> None:
    body = render_stats(jetson_snapshot("orin_nano_jp6", tmp_path))
    assert_legacy_types(body)
    assert body["gpu_utilization"] == "5%"  # 4.8 %
    assert body["gpu_memory"] == "36MB / 3602MB"
    assert body["gpu_temperature"] == "46°C"
    assert body["gpu"]["utilization_percent"] == 4.8
    assert body["power"]["total_source"] == "VDD_IN"
    assert body["power"]["total_w"] == pytest.approx(5.133)


def snapshot_of(gpu: GpuReading, source: str = "test", host: HostReading | None = None) -> Snapshot:
    return Snapshot(
        sequence=1,
        sampled_at=1_790_000_000.25,
        interval_seconds=5.0,
        gpu_source=source,
        gpu=gpu,
        host=host or HostReading(),
    )


def test_jetson_with_unknown_values_keeps_the_old_jetson_strings() -> None:
    body = render_stats(snapshot_of(GpuReading(memory_shared=True)))
    assert body["gpu_utilization"] == "Integrated GPU"  # the old callers' "Integrated" marker
    assert body["gpu_memory"] == "Shared (Jetson)"
    assert body["gpu_temperature"] == "N/A (Jetson)"
    assert body["timestamp"] == "2026-09-21T14:13:20.250000Z"


def test_discrete_gpu_from_nvidia_smi() -> None:
    fields = ("index", "name", "utilization.gpu", "memory.used", "memory.total", "temperature.gpu")
    rows = parse_query_gpu((FIXTURES / "nvidia_smi/n8_discrete_t4.txt").read_text(), fields)
    snapshot = snapshot_of(gpu_reading_from_rows(rows), "nvidia_smi")
    body = render_stats(snapshot)
    assert (body["gpu_utilization"], body["gpu_memory"], body["gpu_temperature"]) == (
        "98%",
        "7234MB / 15360MB",
        "72°C",
    )
    assert body["gpu"]["source"] == "nvidia_smi" and body["gpu"]["memory_shared"] is False
    memory = health_gpu_memory(snapshot)
    assert memory == {"free_mb": 8126, "total_mb": 15360, "used_mb": 7234, "source": "nvidia_gpu"}
    assert gpu_status(memory) == "ok"


def test_gpu_status_critical_below_512_mb_free() -> None:
    gpu = GpuReading(memory_total_bytes=16 * 1024 * MIB, memory_free_bytes=511 * MIB)
    memory = health_gpu_memory(snapshot_of(gpu))
    assert memory is not None and memory["free_mb"] == 511
    assert gpu_status(memory) == "critical"
    gpu = GpuReading(memory_total_bytes=16 * 1024 * MIB, memory_free_bytes=512 * MIB)
    assert gpu_status(health_gpu_memory(snapshot_of(gpu))) == "ok"


def test_no_gpu_and_no_snapshot() -> None:
    body = render_stats(snapshot_of(GpuReading(), "none"))
    assert body["gpu"]["source"] == "none"
    assert all(v is None for k, v in body["gpu"].items() if k != "source")
    assert (body["gpu_utilization"], body["gpu_memory"], body["gpu_temperature"]) == ("N/A",) * 3
    assert health_gpu_memory(snapshot_of(GpuReading(), "none")) is None
    assert gpu_status(None) == "unknown"

    empty = render_stats(None, interval_seconds=5.0)
    assert empty["gpu"]["source"] == "none" and empty["gpu_utilization"] == "N/A"
    assert (empty["cpu_percent"], empty["timestamp"], empty["sampled_at"]) == (None, None, None)
    assert empty["interval_seconds"] == 5.0
    assert health_gpu_memory(None) is None


def test_this_machine_end_to_end(tmp_path: Path) -> None:
    sampler = create_sampler(interval=0.05, models_dir=tmp_path / "models")
    sampler.start()
    try:
        deadline = time.monotonic() + 15
        while sampler.latest() is None:
            assert time.monotonic() < deadline, "no snapshot published"
            time.sleep(0.01)
        snapshot = sampler.latest()
    finally:
        assert sampler.stop(timeout=10)
    body = render_stats(snapshot)
    assert_legacy_types(body)
    assert body["gpu"]["source"] == sampler.gpu_source
    if body["gpu"]["source"] == "none":  # CI: no GPU, no driver
        assert (body["gpu_utilization"], body["gpu_memory"], body["gpu_temperature"]) == (
            "N/A",
        ) * 3
        assert health_gpu_memory(snapshot) is None
    assert body["memory"]["total_bytes"] > 0
    assert body["cpu"]["count"] >= 1
    assert body["ollama"]["running"] in (True, False)
