"""NVML: absent driver (this machine), Jetson's NotSupported everywhere, a discrete GPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from management_api.telemetry.nvml_source import NvmlSource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry" / "nvml"


def nvml_library_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(nvml_library_present(), reason="this machine has an NVIDIA driver")
def test_e1_no_driver_means_unavailable() -> None:
    # The real pynvml, as installed: the error is the one recorded in E1.
    recorded = (FIXTURES / "e1_library_not_found.txt").read_text()
    with pytest.raises(pynvml.NVMLError_LibraryNotFound) as info:
        pynvml.nvmlInit()
    assert str(info.value) in recorded and info.value.value == 12
    source = NvmlSource()
    assert not source.available()
    assert not source.available()  # probing again is harmless
    source.close()


class FakeNvml(SimpleNamespace):
    """pynvml's names, with device calls answered from `devices` (a value or an exception)."""

    def __init__(self, devices: list[dict[str, Any]]) -> None:
        super().__init__(
            NVMLError=pynvml.NVMLError,
            NVML_TEMPERATURE_GPU=pynvml.NVML_TEMPERATURE_GPU,
            NVML_CLOCK_SM=pynvml.NVML_CLOCK_SM,
        )
        self.devices = devices
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def _answer(self, handle: int, key: str) -> Any:
        value = self.devices[handle][key]
        if isinstance(value, BaseException):
            raise value
        return value

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self._answer(h, "name")

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return self._answer(h, "memory")

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return self._answer(h, "rates")

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> Any:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._answer(h, "temperature")

    def nvmlDeviceGetPowerUsage(self, h: int) -> Any:
        return self._answer(h, "power_mw")

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> Any:
        assert clock == pynvml.NVML_CLOCK_SM
        return self._answer(h, "clock")


def not_supported() -> pynvml.NVMLError:
    return pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def test_jetson_orin_everything_not_supported_is_unknown() -> None:
    orin = {
        "name": "Orin (nvgpu)",
        **{k: not_supported() for k in ("memory", "rates", "temperature", "power_mw", "clock")},
    }
    fake = FakeNvml([orin])
    source = NvmlSource(fake)
    assert source.available()
    reading = source.read()
    assert reading.name == "Orin (nvgpu)"
    assert reading.memory_shared is True
    assert (
        reading.utilization_percent,
        reading.memory_used_bytes,
        reading.temperature_c,
        reading.power_w,
        reading.frequency_mhz,
    ) == (None, None, None, None, None)
    source.close()
    assert (fake.inits, fake.shutdowns) == (1, 1)


def test_discrete_gpu_units() -> None:
    gib = 1024**3
    device = {
        "name": "NVIDIA H100 80GB HBM3",
        "memory": SimpleNamespace(total=80 * gib, used=20 * gib, free=60 * gib),
        "rates": SimpleNamespace(gpu=87, memory=40),
        "temperature": 61,
        "power_mw": 412345,
        "clock": 1755,
    }
    source = NvmlSource(FakeNvml([device]))
    assert source.available()
    reading = source.read()
    assert reading.memory_shared is False
    assert (reading.memory_total_bytes, reading.memory_used_bytes, reading.memory_free_bytes) == (
        80 * gib,
        20 * gib,
        60 * gib,
    )
    assert (reading.utilization_percent, reading.temperature_c) == (87.0, 61.0)
    assert reading.power_w == pytest.approx(412.345)  # NVML reports milliwatts
    assert reading.frequency_mhz == 1755.0


def test_lost_gpu_propagates_so_the_selector_falls_back() -> None:
    device = {"name": "NVIDIA A2", "memory": pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)}
    source = NvmlSource(FakeNvml([device]))
    assert source.available()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        source.read()


def test_no_devices_is_unavailable_and_shuts_nvml_down() -> None:
    fake = FakeNvml([])
    assert not NvmlSource(fake).available()
    assert (fake.inits, fake.shutdowns) == (1, 1)
