"""jtop (jetson-stats): optional, only when the host's ``/run/jtop.sock`` is mounted.

jtop is AGPL-3.0 and needs a version-matched host service, so it is imported lazily and only
when the socket exists; any exception from it (JtopException, ImportError, a lost connection)
means "unavailable" and is logged once.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from management_api.telemetry.jetson_sysfs import (
    OFFLINE_BELOW_C,
    SUM_OF_RAILS,
    gpu_rail_watts,
    pick_gpu_temperature,
)
from management_api.telemetry.reading import KIB, GpuReading, PowerRail, PowerReading, ThermalZone
from management_api.telemetry.source import TelemetryError

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/jtop.sock"
JTOP_TOTAL = "jtop total"


def reading_from_jtop(
    gpu: Mapping[str, Any],
    memory: Mapping[str, Any],
    power: Mapping[str, Any],
    temperature: Mapping[str, Any],
) -> GpuReading:
    """Build a reading from jtop's `gpu`, `memory`, `power` and `temperature` properties.

    Units there: load in %, clocks in kHz, memory in kB (`shared` = NvMapMemUsed), power in mW,
    temperatures in degC with -256 (and ``online: False``) for offline sensors.
    """
    name, device = next(iter(gpu.items()), (None, {}))
    status = device.get("status", {})
    freq_khz = device.get("freq", {}).get("cur")
    ram = memory.get("RAM", {})
    zones = tuple(
        ThermalZone(key.lower(), float(value["temp"]))
        for key, value in temperature.items()
        if value.get("online", True) and _is_online(value.get("temp"))
    )
    power_reading = _power(power)
    return GpuReading(
        name=name,
        utilization_percent=_float(status.get("load")),
        memory_used_bytes=_kib(ram.get("shared")),
        memory_total_bytes=_kib(ram.get("tot")),
        memory_free_bytes=_kib(ram["tot"] - ram["used"]) if {"tot", "used"} <= ram.keys() else None,
        memory_shared=device.get("type", "integrated") == "integrated",
        temperature_c=pick_gpu_temperature(zones),
        power_w=gpu_rail_watts(power_reading),
        frequency_mhz=freq_khz / 1000 if isinstance(freq_khz, (int, float)) else None,
        device_count=len(gpu) or None,
        thermal_zones=zones,
        power=power_reading,
    )


def reading_from_jtop_stats(stats: Mapping[str, Any]) -> GpuReading:
    """Fallback for the flat `jetson.stats` dict (also the 2.x format: ``power cur``)."""
    zones = tuple(
        ThermalZone(key[len("Temp ") :].lower(), float(value))
        for key, value in stats.items()
        if key.startswith("Temp ") and _is_online(value)
    )
    rails = tuple(
        PowerRail(key[len("Power ") :], float(value))
        for key, value in stats.items()
        if key.startswith("Power ") and key != "Power TOT" and isinstance(value, (int, float))
    )
    # "Power TOT" is jtop's own total (VDD_IN where the board has it); 2.x called it "power cur".
    total = stats.get("Power TOT", stats.get("power cur"))
    power = PowerReading(rails, _float(total), JTOP_TOTAL) if total is not None or rails else None
    return GpuReading(
        utilization_percent=_float(stats.get("GPU", stats.get("GPU1"))),
        memory_shared=True,
        temperature_c=pick_gpu_temperature(zones),
        power_w=gpu_rail_watts(power),
        device_count=1,
        thermal_zones=zones,
        power=power,
    )


def _power(power: Mapping[str, Any]) -> PowerReading | None:
    rails = tuple(
        PowerRail(
            name,
            _float(rail.get("power")),
            _float(rail.get("volt")),
            _float(rail.get("curr")),
            _float(rail.get("avg")),
        )
        for name, rail in power.get("rail", {}).items()
        if rail.get("online", True)
    )
    tot = power.get("tot", {})
    if not rails and not tot:
        return None
    return PowerReading(rails, _float(tot.get("power")), tot.get("name", SUM_OF_RAILS))


def _is_online(value: Any) -> bool:
    return isinstance(value, (int, float)) and value > OFFLINE_BELOW_C


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _kib(value: Any) -> int | None:
    return int(value) * KIB if isinstance(value, (int, float)) else None


def _default_client(interval: float) -> Any:
    from jtop import jtop  # AGPL, and 150 ms to import: only when a socket is there

    return jtop(interval=interval)


class JtopSource:
    """Reads through one long-lived jtop client, as jtop's own Flask example does."""

    name = "jtop"

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        interval: float = 5.0,
        client_factory: Callable[[float], Any] = _default_client,
    ) -> None:
        self._socket_path = socket_path
        self._interval = interval
        self._factory = client_factory
        self._client: Any = None
        self._warned = False

    def available(self) -> bool:
        if self._client is not None:
            return True
        if not _is_socket(self._socket_path):
            return False
        try:
            client = self._factory(self._interval)
            client.start()
        except Exception as exc:  # jtop raises JtopException, but also OSError/ValueError
            self._warn_once(exc)
            return False
        self._client = client
        return True

    def read(self) -> GpuReading:
        client = self._client
        if client is None:
            raise TelemetryError("jtop is not connected")
        try:
            if not client.ok(spin=True):
                raise TelemetryError("jtop client stopped")
            gpu = dict(client.gpu)
            if not gpu:
                return reading_from_jtop_stats(dict(client.stats))
            return reading_from_jtop(
                gpu, dict(client.memory), dict(client.power), dict(client.temperature)
            )
        except Exception as exc:
            self._warn_once(exc)
            self.close()
            raise

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the jtop client failed", exc_info=True)

    def _warn_once(self, exc: BaseException) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "jtop unavailable: %s", str(exc).replace("\n", " "))


def _is_socket(path: str) -> bool:
    # A bind mount of a missing socket creates a directory in its place: check the file type.
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
