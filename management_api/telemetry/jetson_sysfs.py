"""Jetson GPU, thermal and power readings straight from sysfs/procfs.

Everything here is readable from an unprivileged container (``/sys`` is mounted read-only), so
this source needs neither jtop's host daemon nor a bind-mounted tegrastats. Every path is
resolved under `root`, so tests point the reader at a fixture tree.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from management_api.telemetry.reading import (
    KIB,
    GpuReading,
    PowerRail,
    PowerReading,
    ThermalZone,
)

# Per-mille load files, in the order other projects found them: Orin JP6 (glances, autoware),
# Orin Nano JP6 (nv-monitor), JP5 Orin, Nano/TX2/Xavier.
GPU_LOAD_PATHS = (
    "sys/devices/platform/gpu.0/load",
    "sys/devices/platform/bus@0/17000000.gpu/load",
    "sys/devices/platform/17000000.gpu/load",
    "sys/devices/platform/17000000.ga10b/load",
    "sys/devices/gpu.0/load",
    "sys/devices/17000000.gv11b/load",
    "sys/devices/57000000.gpu/load",
)
GPU_LOAD_GLOBS = ("sys/devices/platform/bus@*/*.gpu/load",)
DEVFREQ_CLASS = "sys/class/devfreq"
# Device-tree node names of Tegra iGPUs (jtop's find_igpu); anything containing "gpu" also counts.
GPU_NODE_NAMES = frozenset({"gv11b", "gp10b", "ga10b", "gb10b", "gpu"})

THERMAL_CLASS = "sys/class/thermal"
# AGX Orin disables gpu-thermal in its device tree; the junction maximum is the honest fallback.
GPU_TEMPERATURE_ZONES = ("gpu", "tj")
OFFLINE_BELOW_C = -200.0

INA3221_HWMON_GLOBS = (
    "sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*",
    "sys/bus/i2c/devices/*/hwmon/hwmon*",
    "sys/class/hwmon/hwmon*",
)
SKIPPED_RAIL_LABELS = ("nc",)
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
SUM_OF_RAILS = "sum of rails"


@dataclass(frozen=True)
class GpuPaths:
    name: str | None
    load: Path | None
    devfreq: Path | None


class JetsonSysfsSource:
    """Reads the Tegra iGPU from sysfs; `root` is "/" in production, a fixture tree in tests."""

    name = "jetson_sysfs"

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self._root = Path(root)
        self._paths: GpuPaths | None = None

    def available(self) -> bool:
        if self._paths is None:
            paths = find_gpu_paths(self._root)
            if paths.load is None and paths.devfreq is None:
                return False
            self._paths = paths
        return True

    def read(self) -> GpuReading:
        paths = self._paths or find_gpu_paths(self._root)
        load = read_int(paths.load) if paths.load else None
        hz = read_int(paths.devfreq / "cur_freq") if paths.devfreq else None
        zones = read_thermal_zones(self._root)
        power = read_ina3221(self._root)
        meminfo = read_meminfo(self._root / "proc/meminfo")
        return GpuReading(
            name=paths.name,
            utilization_percent=load / 10 if load is not None else None,
            memory_used_bytes=_kib(meminfo.get("NvMapMemUsed")),
            memory_total_bytes=_kib(meminfo.get("MemTotal")),
            memory_free_bytes=_kib(meminfo.get("MemAvailable")),
            memory_shared=True,
            temperature_c=pick_gpu_temperature(zones),
            power_w=gpu_rail_watts(power),
            frequency_mhz=hz / 1_000_000 if hz is not None else None,
            device_count=1,
            thermal_zones=zones,
            power=power,
        )

    def close(self) -> None:
        self._paths = None


def find_gpu_paths(root: Path) -> GpuPaths:
    """Locate the iGPU's load file and devfreq directory (either may be missing)."""
    load = next((root / p for p in GPU_LOAD_PATHS if (root / p).is_file()), None)
    if load is None:
        load = next(_globbed(root, GPU_LOAD_GLOBS), None)
    name, devfreq = _find_gpu_devfreq(root)
    if load is None and devfreq is not None and (devfreq / "device/load").is_file():
        load = devfreq / "device/load"
    if devfreq is None and load is not None:
        devfreq = next((p.parent for p in sorted(load.parent.glob("devfreq/*/cur_freq"))), None)
        name = devfreq.name if devfreq else load.parent.name
    return GpuPaths(name=name, load=load, devfreq=devfreq)


def _find_gpu_devfreq(root: Path) -> tuple[str | None, Path | None]:
    base = root / DEVFREQ_CLASS
    if not base.is_dir():
        return None, None
    for entry in sorted(base.iterdir()):
        node = read_text(entry / "device/of_node/name") or entry.name.rsplit(".", 1)[-1]
        node = node.strip("\0").strip()
        if node in GPU_NODE_NAMES or "gpu" in node:
            return entry.name, entry
    return None, None


def _globbed(root: Path, patterns: tuple[str, ...]):
    for pattern in patterns:
        # glob.escape keeps a root containing "[" or "*" from being read as a pattern.
        for match in sorted(glob.glob(os.path.join(glob.escape(str(root)), pattern))):
            yield Path(match)


def read_text(path: Path) -> str | None:
    """File contents, or None when the file is missing or unreadable (EAGAIN, EACCES, ...)."""
    try:
        return path.read_text(errors="replace")
    except (OSError, ValueError):
        return None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    try:
        return int(text.strip().strip("\0")) if text is not None else None
    except ValueError:
        return None


def zone_key(zone_type: str) -> str:
    """``cpu-thermal`` -> ``cpu``, ``CPU-therm`` -> ``cpu``, ``Tboard_tegra`` -> ``tboard``."""
    cut = "-" if "-" in zone_type else "_"
    return zone_type.split(cut, 1)[0].strip().lower()


def read_thermal_zones(root: Path) -> tuple[ThermalZone, ...]:
    """Thermal zones by name (never by index: numbering differs by board and release)."""
    base = root / THERMAL_CLASS
    if not base.is_dir():
        return ()
    zones: dict[str, ThermalZone] = {}
    for entry in sorted(base.glob("thermal_zone*"), key=_zone_number):
        zone_type = (read_text(entry / "type") or "").strip()
        millic = read_int(entry / "temp")
        if not zone_type or millic is None:
            continue
        celsius = millic / 1000
        if celsius <= OFFLINE_BELOW_C:
            continue
        zones.setdefault(zone_key(zone_type), ThermalZone(zone_key(zone_type), celsius))
    return tuple(zones.values())


def _zone_number(path: Path) -> int:
    digits = re.sub(r"\D", "", path.name)
    return int(digits) if digits else 0


def pick_gpu_temperature(zones: tuple[ThermalZone, ...]) -> float | None:
    by_name = {zone.name: zone.temperature_c for zone in zones}
    return next((by_name[n] for n in GPU_TEMPERATURE_ZONES if n in by_name), None)


def read_ina3221(root: Path) -> PowerReading | None:
    """INA3221 rails (mV x mA); the hwmon index changes between boots, so search by name."""
    rails: list[PowerRail] = []
    seen: set[str] = set()
    for hwmon in _globbed(root, INA3221_HWMON_GLOBS):
        real = os.path.realpath(hwmon)
        chip = (read_text(hwmon / "name") or "").strip()
        if real in seen or not chip.startswith("ina3221"):
            continue
        seen.add(real)
        rails.extend(_hwmon_rails(hwmon))
    return power_from_rails(rails) if rails else None


def _hwmon_rails(hwmon: Path) -> list[PowerRail]:
    rails = []
    for label_file in sorted(hwmon.glob("in*_label"), key=_zone_number):
        label = (read_text(label_file) or "").strip()
        channel = label_file.name[2:].split("_", 1)[0]
        if not label or label.lower() in SKIPPED_RAIL_LABELS or label.lower().startswith("sum of"):
            continue
        millivolts = read_int(hwmon / f"in{channel}_input")
        milliamps = read_int(hwmon / f"curr{channel}_input")
        milliwatts = (
            millivolts * milliamps / 1000
            if millivolts is not None and milliamps is not None
            else None
        )
        rails.append(PowerRail(label, milliwatts, millivolts, milliamps))
    return rails


def power_from_rails(rails: list[PowerRail]) -> PowerReading:
    """Total = the module-input rail where one exists, else the sum (AGX Orin has no VDD_IN)."""
    for rail in rails:
        if rail.name in TOTAL_RAILS and rail.power_mw is not None:
            return PowerReading(tuple(rails), rail.power_mw, rail.name)
    known = [r.power_mw for r in rails if r.power_mw is not None]
    return PowerReading(tuple(rails), sum(known) if known else None, SUM_OF_RAILS)


def gpu_rail_watts(power: PowerReading | None) -> float | None:
    """The rail that feeds the GPU (VDD_GPU_SOC, VDD_CPU_GPU_CV, GPU, POM_5V_GPU, ...)."""
    if power is None:
        return None
    rail = next((r for r in power.rails if "GPU" in r.name.upper()), None)
    return rail.power_mw / 1000 if rail and rail.power_mw is not None else None


def read_meminfo(path: Path) -> dict[str, int]:
    """`/proc/meminfo` as {field: kB}."""
    values: dict[str, int] = {}
    for line in (read_text(path) or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    return values


def _kib(value: int | None) -> int | None:
    return value * KIB if value is not None else None
