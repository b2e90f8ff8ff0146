"""NVML through nvidia-ml-py (module `pynvml`): the first choice on discrete NVIDIA GPUs.

Without a driver `nvmlInit` raises LibraryNotFound: the source is unavailable. A metric the
device does not support (every one on Jetson's "Orin (nvgpu)") is unknown, not an error; an
error that means the GPU itself is gone propagates so the selector falls back.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from management_api.telemetry.reading import GpuReading, aggregate_gpus

log = logging.getLogger(__name__)

# Errors that mean "this metric is unknown on this device", by pynvml class name.
_UNKNOWN_METRIC_ERRORS = (
    "NVMLError_NotSupported",
    "NVMLError_NoPermission",
    "NVMLError_FunctionNotFound",
    "NVMLError_NoData",
    "NVMLError_NotReady",
    "NVMLError_InvalidArgument",
)


def _import_pynvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlSource:
    name = "nvml"

    def __init__(self, nvml: Any = None) -> None:
        """`nvml` is the pynvml module; tests pass a stand-in with the same names."""
        self._nvml = nvml
        self._initialised = False
        self._warned = False

    def available(self) -> bool:
        nvml = self._nvml = self._nvml or _import_pynvml()
        if nvml is None:
            return False
        if self._initialised:
            return True
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._log_unavailable(exc)
            return False
        self._initialised = True
        try:
            if nvml.nvmlDeviceGetCount() > 0:
                return True
        except nvml.NVMLError as exc:
            self._log_unavailable(exc)
        self.close()
        return False

    def read(self) -> GpuReading:
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        return aggregate_gpus(
            [self._read_device(nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        )

    def _read_device(self, handle: Any) -> GpuReading:
        nvml = self._nvml
        name = self._metric(nvml.nvmlDeviceGetName, handle)
        if isinstance(name, bytes):  # nvidia-ml-py < 11 returned bytes
            name = name.decode(errors="replace")
        memory = self._metric(nvml.nvmlDeviceGetMemoryInfo, handle)
        rates = self._metric(nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = self._metric(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        milliwatts = self._metric(nvml.nvmlDeviceGetPowerUsage, handle)
        clock = self._metric(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        return GpuReading(
            name=name,
            utilization_percent=float(rates.gpu) if rates is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            memory_free_bytes=int(memory.free) if memory is not None else None,
            # Tegra iGPUs enumerate as "Orin (nvgpu)": their memory is the system RAM.
            memory_shared=bool(name and "nvgpu" in name),
            temperature_c=float(temperature) if temperature is not None else None,
            power_w=milliwatts / 1000 if milliwatts is not None else None,
            frequency_mhz=float(clock) if clock is not None else None,
            device_count=1,
        )

    def _metric(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except self._nvml.NVMLError as exc:
            if type(exc).__name__ in _UNKNOWN_METRIC_ERRORS:
                return None
            raise

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                log.debug("nvmlShutdown failed", exc_info=True)

    def _log_unavailable(self, exc: Exception) -> None:
        # LibraryNotFound is the normal answer on machines without an NVIDIA driver.
        level = logging.DEBUG if self._warned else logging.INFO
        self._warned = True
        log.log(level, "NVML unavailable: %s", exc)
