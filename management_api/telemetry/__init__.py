"""Telemetry: GPU/CPU/memory/temperature/power sources and the background sampler.

Nothing here touches Flask, and nothing starts at import. May import the standard library,
psutil and jetson-stats only (no other part); imported by `health/`, `routes/` and the wiring.
The product wires it once::

    sampler = create_sampler(interval=settings.stats_interval, models_dir=settings.models_dir,
                             extra_info=<per-model limiter counters>)
    services.on_start(sampler.start, sampler.stop)        # after the worker forks

and reads it without ever sampling inline: ``render_stats(sampler.latest(), now=time.time(),
interval_seconds=sampler.interval)`` for ``/api/stats``, ``sampler.history(seconds)`` for
``/api/stats/history``, ``health_gpu_memory`` / ``gpu_status`` for ``/health``, and
``read_platform()`` plus ``sampler.gpu_source`` for ``/api/info``.
"""

from management_api.telemetry.defaults import create_sampler, default_gpu_sources
from management_api.telemetry.host import HostSource
from management_api.telemetry.jetson_sysfs import JetsonSysfsSource
from management_api.telemetry.jtop_source import JtopSource
from management_api.telemetry.nvidia_smi import NvidiaSmiSource
from management_api.telemetry.nvml_source import NvmlSource
from management_api.telemetry.platform import read_platform
from management_api.telemetry.reading import (
    GpuReading,
    HostReading,
    PlatformInfo,
    Snapshot,
)
from management_api.telemetry.sampler import Sampler
from management_api.telemetry.selector import GpuSourceSelector
from management_api.telemetry.snapshot import gpu_status, health_gpu_memory, render_stats
from management_api.telemetry.source import NO_GPU_SOURCE, GpuSource
from management_api.telemetry.tegrastats import TegrastatsSource

__all__ = [
    "NO_GPU_SOURCE",
    "GpuReading",
    "GpuSource",
    "GpuSourceSelector",
    "HostReading",
    "HostSource",
    "JetsonSysfsSource",
    "JtopSource",
    "NvidiaSmiSource",
    "NvmlSource",
    "PlatformInfo",
    "Sampler",
    "Snapshot",
    "TegrastatsSource",
    "create_sampler",
    "default_gpu_sources",
    "gpu_status",
    "health_gpu_memory",
    "read_platform",
    "render_stats",
]
