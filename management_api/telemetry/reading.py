"""Typed, immutable readings produced by the telemetry sources.

Every numeric field may be None, meaning "unknown": a source that cannot measure something
(nvidia-smi's ``[N/A]``, NVML's NotSupported, an offline thermal zone) says so instead of
reporting zero. Units are part of the field names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class ThermalZone:
    """One temperature sensor; `name` is the short lower-case form (``cpu``, ``gpu``, ``tj``)."""

    name: str
    temperature_c: float


@dataclass(frozen=True)
class PowerRail:
    name: str
    power_mw: float | None
    voltage_mv: float | None = None
    current_ma: float | None = None
    average_mw: float | None = None


@dataclass(frozen=True)
class PowerReading:
    """Board power rails. `total_source` names the rail used as the total, or "sum of rails"."""

    rails: tuple[PowerRail, ...] = ()
    total_mw: float | None = None
    total_source: str | None = None


@dataclass(frozen=True)
class GpuReading:
    """What one GPU source knows.

    On unified-memory Jetsons `memory_shared` is True, `memory_total_bytes` is the shared pool,
    `memory_used_bytes` the GPU's share (nvmap) when known, and `memory_free_bytes` what a new
    GPU allocation could still get (MemAvailable).
    """

    name: str | None = None
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_shared: bool | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    frequency_mhz: float | None = None
    device_count: int | None = None
    thermal_zones: tuple[ThermalZone, ...] = ()
    power: PowerReading | None = None


@dataclass(frozen=True)
class CpuReading:
    percent: float | None = None
    per_core_percent: tuple[float, ...] | None = None
    count: int | None = None
    load_average: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class MemoryReading:
    """Host RAM; `used_bytes` = total - available (psutil >= 7.1, same as `free`);
    `cached_bytes` = page cache + buffers (reclaimable, so not part of `used_bytes`)."""

    total_bytes: int | None = None
    available_bytes: int | None = None
    used_bytes: int | None = None
    percent: float | None = None
    unified: bool = False
    cached_bytes: int | None = None


@dataclass(frozen=True)
class SwapReading:
    total_bytes: int | None = None
    used_bytes: int | None = None
    free_bytes: int | None = None
    percent: float | None = None


@dataclass(frozen=True)
class DiskReading:
    path: str
    total_bytes: int | None = None
    used_bytes: int | None = None
    free_bytes: int | None = None
    percent: float | None = None


@dataclass(frozen=True)
class ProcessReading:
    """A process tree (e.g. ``ollama serve`` plus its runners), summed. `cpu_percent` is in
    percent of one core, so it exceeds 100 when several cores are busy."""

    pid: int
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    process_count: int = 1


@dataclass(frozen=True)
class HostReading:
    cpu: CpuReading = field(default_factory=CpuReading)
    memory: MemoryReading = field(default_factory=MemoryReading)
    swap: SwapReading = field(default_factory=SwapReading)
    disk: DiskReading | None = None
    ollama: ProcessReading | None = None
    own_rss_bytes: int | None = None


@dataclass(frozen=True)
class PlatformInfo:
    jetson: bool = False
    model: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    jetpack_major: int | None = None
    board: str | None = None
    kernel: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """One published sample. Readers share it; nothing mutates it after publication."""

    sequence: int
    sampled_at: float
    interval_seconds: float
    gpu_source: str
    gpu: GpuReading
    host: HostReading
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sample_seconds: float | None = None
    sampler_cpu_percent: float | None = None


def aggregate_gpus(readings: Sequence[GpuReading]) -> GpuReading:
    """Fold several devices into one view: mean load, summed memory and power, hottest device."""
    if not readings:
        return GpuReading(device_count=0)
    if len(readings) == 1:
        return readings[0]

    def values(attr: str) -> list[Any]:
        return [getattr(r, attr) for r in readings if getattr(r, attr) is not None]

    def total(attr: str) -> Any:
        found = values(attr)
        return sum(found) if found else None

    loads = values("utilization_percent")
    temps = values("temperature_c")
    clocks = values("frequency_mhz")
    shared = values("memory_shared")
    return GpuReading(
        name=", ".join(values("name")) or None,
        utilization_percent=sum(loads) / len(loads) if loads else None,
        memory_used_bytes=total("memory_used_bytes"),
        memory_total_bytes=total("memory_total_bytes"),
        memory_free_bytes=total("memory_free_bytes"),
        memory_shared=all(shared) if shared else None,
        temperature_c=max(temps) if temps else None,
        power_w=total("power_w"),
        frequency_mhz=max(clocks) if clocks else None,
        device_count=len(readings),
    )
