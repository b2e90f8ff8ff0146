"""Render a snapshot for ``GET /api/stats`` and the GPU part of ``GET /health``.

The legacy keys keep the exact names and types Arasul's callers read (`gpu_utilization`,
`gpu_memory`, `gpu_temperature` display strings; `process_memory_mb` and `cpu_percent` numbers;
`timestamp` ISO 8601 with ``Z``). Beside them sit numeric sections with units in their names.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from management_api.telemetry.reading import (
    MIB,
    GpuReading,
    HostReading,
    PowerReading,
    ProcessReading,
    Snapshot,
)
from management_api.telemetry.source import NO_GPU_SOURCE

GPU_CRITICAL_FREE_MB = 512
NOT_AVAILABLE = "N/A"


def render_stats(
    snapshot: Snapshot | None,
    *,
    now: float | None = None,
    interval_seconds: float | None = None,
) -> dict[str, Any]:
    """The `/api/stats` body. Before the first sample every value is unknown (null / "N/A")."""
    if snapshot is None:
        return _render(None, GpuReading(), HostReading(), NO_GPU_SOURCE, interval_seconds, now)
    return _render(
        snapshot, snapshot.gpu, snapshot.host, snapshot.gpu_source, snapshot.interval_seconds, now
    )


def _render(
    snapshot: Snapshot | None,
    gpu: GpuReading,
    host: HostReading,
    source: str,
    interval: float | None,
    now: float | None,
) -> dict[str, Any]:
    sampled_at = snapshot.sampled_at if snapshot else None
    own_rss = host.own_rss_bytes
    body: dict[str, Any] = {
        "gpu_utilization": legacy_gpu_utilization(gpu),
        "gpu_memory": legacy_gpu_memory(gpu),
        "gpu_temperature": legacy_gpu_temperature(gpu),
        "process_memory_mb": round(own_rss / MIB, 1) if own_rss is not None else None,
        "cpu_percent": host.cpu.percent,
        "timestamp": iso_utc(sampled_at) if sampled_at is not None else None,
        "sampled_at": sampled_at,
        "age_seconds": (
            round(now - sampled_at, 3) if now is not None and sampled_at is not None else None
        ),
        "interval_seconds": interval,
        "cpu": {
            "percent": host.cpu.percent,
            "per_core_percent": list(host.cpu.per_core_percent or []) or None,
            "count": host.cpu.count,
            "load_average": list(host.cpu.load_average) if host.cpu.load_average else None,
        },
        "memory": {
            "total_bytes": host.memory.total_bytes,
            "used_bytes": host.memory.used_bytes,
            "available_bytes": host.memory.available_bytes,
            "percent": host.memory.percent,
            "unified": host.memory.unified,
            "cached_bytes": host.memory.cached_bytes,
        },
        "swap": {
            "total_bytes": host.swap.total_bytes,
            "used_bytes": host.swap.used_bytes,
            "free_bytes": host.swap.free_bytes,
            "percent": host.swap.percent,
        },
        "disk": _disk(host),
        "gpu": render_gpu(gpu, source),
        "thermal": {zone.name: zone.temperature_c for zone in gpu.thermal_zones},
        "power": render_power(gpu.power),
        "ollama": render_process(host.ollama),
        "proxy": dict(snapshot.extra) if snapshot else {},
        "process": {"rss_bytes": own_rss},
        "sampler": {
            "sequence": snapshot.sequence if snapshot else 0,
            "sample_seconds": snapshot.sample_seconds if snapshot else None,
            "cpu_percent_of_core": snapshot.sampler_cpu_percent if snapshot else None,
        },
    }
    return body


def render_gpu(gpu: GpuReading, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "name": gpu.name,
        "device_count": gpu.device_count,
        "utilization_percent": gpu.utilization_percent,
        "memory_used_bytes": gpu.memory_used_bytes,
        "memory_total_bytes": gpu.memory_total_bytes,
        "memory_free_bytes": gpu.memory_free_bytes,
        "memory_shared": gpu.memory_shared,
        "temperature_c": gpu.temperature_c,
        "power_w": _round(gpu.power_w, 3),
        "frequency_mhz": gpu.frequency_mhz,
    }


def render_power(power: PowerReading | None) -> dict[str, Any] | None:
    if power is None:
        return None
    return {
        "total_w": _round(power.total_mw / 1000, 3) if power.total_mw is not None else None,
        "total_source": power.total_source,
        "rails": {
            rail.name: {
                "power_w": _round(rail.power_mw / 1000, 3) if rail.power_mw is not None else None,
                "voltage_mv": rail.voltage_mv,
                "current_ma": rail.current_ma,
            }
            for rail in power.rails
        },
    }


def render_process(process: ProcessReading | None) -> dict[str, Any]:
    if process is None:
        return {
            "running": False,
            "pid": None,
            "rss_bytes": None,
            "cpu_percent": None,
            "process_count": 0,
        }
    return {
        "running": True,
        "pid": process.pid,
        "rss_bytes": process.rss_bytes,
        "cpu_percent": process.cpu_percent,
        "process_count": process.process_count,
    }


def _disk(host: HostReading) -> dict[str, Any] | None:
    disk = host.disk
    if disk is None:
        return None
    return {
        "path": disk.path,
        "total_bytes": disk.total_bytes,
        "used_bytes": disk.used_bytes,
        "free_bytes": disk.free_bytes,
        "percent": disk.percent,
    }


def legacy_gpu_utilization(gpu: GpuReading) -> str:
    """``"NN%"``; on a Jetson whose load is unknown the old ``"Integrated GPU"``; else N/A."""
    if gpu.utilization_percent is not None:
        return f"{round(gpu.utilization_percent)}%"
    return "Integrated GPU" if gpu.memory_shared else NOT_AVAILABLE


def legacy_gpu_memory(gpu: GpuReading) -> str:
    """``"<used>MB / <total>MB"``; on Jetson the used part is the GPU's share of shared RAM."""
    if gpu.memory_used_bytes is not None and gpu.memory_total_bytes is not None:
        return f"{gpu.memory_used_bytes // MIB}MB / {gpu.memory_total_bytes // MIB}MB"
    return "Shared (Jetson)" if gpu.memory_shared else NOT_AVAILABLE


def legacy_gpu_temperature(gpu: GpuReading) -> str:
    if gpu.temperature_c is not None:
        return f"{round(gpu.temperature_c)}°C"
    return "N/A (Jetson)" if gpu.memory_shared else NOT_AVAILABLE


def health_gpu_memory(snapshot: Snapshot | None) -> dict[str, Any] | None:
    """The legacy `/health` `gpu_memory` object, or None when no GPU memory figure exists.

    Unified memory (Jetson) reports the shared pool: free = what a new allocation could get.
    `source` keeps the old values: "nvidia_gpu" for dedicated memory, "system_ram" for shared.
    """
    if snapshot is None:
        return None
    gpu = snapshot.gpu
    total, free = gpu.memory_total_bytes, gpu.memory_free_bytes
    if total is None:
        return None
    if free is None and gpu.memory_used_bytes is not None:
        free = total - gpu.memory_used_bytes
    if free is None:
        return None
    return {
        "free_mb": free // MIB,
        "total_mb": total // MIB,
        "used_mb": (total - free) // MIB,
        "source": "system_ram" if gpu.memory_shared else "nvidia_gpu",
    }


def gpu_status(gpu_memory: dict[str, Any] | None) -> str:
    """ "ok" | "critical" (less than 512 MB free) | "unknown" (no figure)."""
    if gpu_memory is None:
        return "unknown"
    return "critical" if gpu_memory["free_mb"] < GPU_CRITICAL_FREE_MB else "ok"


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None
