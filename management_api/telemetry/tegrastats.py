"""tegrastats: a host binary, only present when bind-mounted; its line format varies.

The parser accepts every variant we have seen: with or without the leading timestamp; root
(``GR3D_FREQ 0%@[0,0]``) and non-root (``GR3D_FREQ 0%``) forms; single values, per-GPC arrays
and the Thor array without a percentage; ``-256C`` offline sensors; JP7's ``a/b`` temperatures;
and power as ``mW/mW``, ``mW/mW/mW`` or unit-less ``cur/avg``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from management_api.telemetry.commands import read_first_line
from management_api.telemetry.jetson_sysfs import (
    OFFLINE_BELOW_C,
    gpu_rail_watts,
    pick_gpu_temperature,
    power_from_rails,
)
from management_api.telemetry.reading import MIB, GpuReading, PowerRail, ThermalZone
from management_api.telemetry.source import TelemetryError

DEFAULT_BINARY = "/usr/bin/tegrastats"
_UNIT_BYTES = {"k": 1024, "M": MIB, "G": 1024 * MIB}

_DATE = re.compile(r"^\s*\d{1,2}-\d{1,2}-\d{4} \d{1,2}:\d{2}:\d{2}\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)([kMG])B\s*\(lfb (\d+)x(\d+)([kMG])B\)")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)([kMG])B\s*\(cached (\d+)([kMG])B\)")
_IRAM = re.compile(r"\bIRAM (\d+)/(\d+)([kMG])B\s*\(lfb (\d+)([kMG])B\)")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_CORE = re.compile(r"^(\d+)%(?:@(\d+))?$")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@(?:\[([\d,]+)\]|(\d+)))?")
_TEMP = re.compile(r"(?<![\w%@])([A-Za-z]\w*)@(-?\d+(?:\.\d+)?)C(?:/-?\d+(?:\.\d+)?C)*(?=\s|$)")
_POWER = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")
_ENGINE = re.compile(r"\b([A-Z][A-Z0-9_]*) (off|(\d+)%@(\d+)|(\d+))(?=\s|$)")
_NOT_ENGINES = frozenset({"RAM", "SWAP", "IRAM", "CPU", "EMC_FREQ", "GR3D_FREQ"})
_NOT_RAILS = frozenset({"RAM", "SWAP", "IRAM"})


@dataclass(frozen=True)
class CoreLoad:
    """One CPU core; `percent` None means the core is off."""

    percent: float | None
    mhz: float | None


@dataclass(frozen=True)
class EngineState:
    """An accelerator (VIC, NVENC, APE, ...): off, a clock, or a load at a clock."""

    online: bool
    percent: float | None = None
    mhz: float | None = None


@dataclass(frozen=True)
class TegrastatsSample:
    timestamp: str | None = None
    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    lfb_blocks: int | None = None
    lfb_block_bytes: int | None = None
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_cached_bytes: int | None = None
    iram_used_bytes: int | None = None
    iram_total_bytes: int | None = None
    cpu_cores: tuple[CoreLoad, ...] = ()
    emc_percent: float | None = None
    emc_mhz: float | None = None
    gpu_percent: float | None = None
    gpu_mhz: float | None = None
    gpu_gpc_mhz: tuple[float, ...] = ()
    engines: Mapping[str, EngineState] = field(default_factory=lambda: MappingProxyType({}))
    temperatures: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    offline_sensors: tuple[str, ...] = ()
    rails: tuple[PowerRail, ...] = ()


def parse_tegrastats(line: str) -> TegrastatsSample:
    """Parse one tegrastats line; fields the line lacks stay None/empty."""
    date = _DATE.match(line)
    values: dict = {"timestamp": date.group(0).strip() if date else None}
    if m := _RAM.search(line):
        unit, block_unit = _UNIT_BYTES[m.group(3)], _UNIT_BYTES[m.group(6)]
        values.update(
            ram_used_bytes=int(m.group(1)) * unit,
            ram_total_bytes=int(m.group(2)) * unit,
            lfb_blocks=int(m.group(4)),
            lfb_block_bytes=int(m.group(5)) * block_unit,
        )
    if m := _SWAP.search(line):
        values.update(
            swap_used_bytes=int(m.group(1)) * _UNIT_BYTES[m.group(3)],
            swap_total_bytes=int(m.group(2)) * _UNIT_BYTES[m.group(3)],
            swap_cached_bytes=int(m.group(4)) * _UNIT_BYTES[m.group(5)],
        )
    if m := _IRAM.search(line):
        values.update(
            iram_used_bytes=int(m.group(1)) * _UNIT_BYTES[m.group(3)],
            iram_total_bytes=int(m.group(2)) * _UNIT_BYTES[m.group(3)],
        )
    if m := _CPU.search(line):
        values["cpu_cores"] = _parse_cores(m.group(1), m.group(2))
    if m := _EMC.search(line):
        values["emc_percent"] = float(m.group(1))
        values["emc_mhz"] = float(m.group(2)) if m.group(2) else None
    values.update(_parse_gr3d(line))
    values.update(_parse_temperatures(line))
    values["rails"] = tuple(
        PowerRail(m.group(1), float(m.group(2)), average_mw=float(m.group(3)))
        for m in _POWER.finditer(line)
        if m.group(1) not in _NOT_RAILS and m.group(1) != "NC"
    )
    values["engines"] = MappingProxyType(_parse_engines(line))
    return TegrastatsSample(**values)


def _parse_cores(body: str, shared_mhz: str | None) -> tuple[CoreLoad, ...]:
    cores = []
    for item in body.split(","):
        item = item.strip()
        match = _CORE.match(item)
        if match:
            mhz = match.group(2) or shared_mhz
            cores.append(CoreLoad(float(match.group(1)), float(mhz) if mhz else None))
        elif item:
            cores.append(CoreLoad(None, None))
    return tuple(cores)


def _parse_gr3d(line: str) -> dict:
    match = _GR3D.search(line)
    if not match or not any(match.groups()):
        return {}
    percent, gpcs, single = match.groups()
    clocks = tuple(float(c) for c in gpcs.split(",") if c) if gpcs else ()
    if single:
        clocks = (float(single),)
    return {
        "gpu_percent": float(percent) if percent is not None else None,
        # Per-GPC clocks: the GPU runs at the fastest one (jtop reports the maximum too).
        "gpu_mhz": max(clocks) if clocks else None,
        "gpu_gpc_mhz": clocks,
    }


def _parse_temperatures(line: str) -> dict:
    temperatures: dict[str, float] = {}
    offline: list[str] = []
    for match in _TEMP.finditer(line):
        name, celsius = match.group(1), float(match.group(2))
        if celsius <= OFFLINE_BELOW_C:
            offline.append(name)
        else:
            temperatures.setdefault(name, celsius)
    return {"temperatures": MappingProxyType(temperatures), "offline_sensors": tuple(offline)}


def _parse_engines(line: str) -> dict[str, EngineState]:
    engines: dict[str, EngineState] = {}
    for match in _ENGINE.finditer(line):
        raw, state, percent, load_mhz, mhz = match.groups()
        if raw in _NOT_ENGINES:
            continue
        name = raw.removesuffix("_FREQ")
        if state == "off":
            engines[name] = EngineState(online=False)
        elif percent is not None:
            engines[name] = EngineState(True, float(percent), float(load_mhz))
        else:
            engines[name] = EngineState(True, mhz=float(mhz))
    return engines


def gpu_reading_from_tegrastats(sample: TegrastatsSample) -> GpuReading:
    """GPU view of a sample. tegrastats does not show the GPU's share of the unified RAM."""
    zones = tuple(ThermalZone(name.lower(), c) for name, c in sample.temperatures.items())
    power = power_from_rails(list(sample.rails)) if sample.rails else None
    free = (
        sample.ram_total_bytes - sample.ram_used_bytes
        if sample.ram_total_bytes is not None and sample.ram_used_bytes is not None
        else None
    )
    return GpuReading(
        utilization_percent=sample.gpu_percent,
        memory_total_bytes=sample.ram_total_bytes,
        memory_free_bytes=free,
        memory_shared=True,
        temperature_c=pick_gpu_temperature(zones),
        power_w=gpu_rail_watts(power),
        frequency_mhz=sample.gpu_mhz,
        device_count=1,
        thermal_zones=zones,
        power=power,
    )


class TegrastatsSource:
    """Runs the (bind-mounted) tegrastats binary for one line per sample."""

    name = "tegrastats"

    def __init__(self, binary: str = DEFAULT_BINARY, timeout: float = 2.0) -> None:
        self._binary = binary
        self._timeout = timeout

    def available(self) -> bool:
        return os.path.isfile(self._binary) and os.access(self._binary, os.X_OK)

    def read(self) -> GpuReading:
        line = read_first_line([self._binary, "--interval", "100"], self._timeout)
        sample = parse_tegrastats(line)
        if sample.ram_total_bytes is None and sample.gpu_percent is None:
            raise TelemetryError("tegrastats printed a line without RAM or GR3D fields")
        return gpu_reading_from_tegrastats(sample)

    def close(self) -> None:
        """Nothing is kept between samples."""
