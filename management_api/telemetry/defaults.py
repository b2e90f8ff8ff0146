"""The production wiring: GPU sources in their order of preference, and a ready sampler."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from management_api.telemetry.host import HostSource
from management_api.telemetry.jetson_sysfs import JetsonSysfsSource
from management_api.telemetry.jtop_source import DEFAULT_SOCKET, JtopSource
from management_api.telemetry.nvidia_smi import NvidiaSmiSource
from management_api.telemetry.nvml_source import NvmlSource
from management_api.telemetry.sampler import Sampler
from management_api.telemetry.source import GpuSource
from management_api.telemetry.tegrastats import DEFAULT_BINARY as TEGRASTATS_BINARY
from management_api.telemetry.tegrastats import TegrastatsSource

COMMAND_TIMEOUT_SECONDS = 2.0


def default_gpu_sources(
    root: str | os.PathLike[str] = "/",
    *,
    interval: float = 5.0,
    command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    jtop_socket: str = DEFAULT_SOCKET,
    tegrastats_binary: str = TEGRASTATS_BINARY,
    nvidia_smi_binary: str = "nvidia-smi",
) -> tuple[GpuSource, ...]:
    """Jetson sysfs -> jtop -> tegrastats -> NVML -> nvidia-smi (then "none").

    Jetson first: there NVML and nvidia-smi enumerate the iGPU but answer N/A for everything.
    NVML before nvidia-smi: NVIDIA documents NVML as stable and nvidia-smi's output as not.
    """
    return (
        JetsonSysfsSource(root),
        JtopSource(jtop_socket, interval=interval),
        TegrastatsSource(tegrastats_binary, timeout=command_timeout),
        NvmlSource(),
        NvidiaSmiSource(nvidia_smi_binary, timeout=command_timeout),
    )


def create_sampler(
    *,
    interval: float = 5.0,
    models_dir: str | os.PathLike[str] | None = None,
    extra_info: Callable[[], Mapping[str, Any]] | None = None,
    ollama_pid: int | None = None,
) -> Sampler:
    """A sampler over the real machine; nothing runs until `start()`."""
    return Sampler(
        default_gpu_sources(interval=interval),
        HostSource(models_dir, ollama_pid=ollama_pid),
        interval=interval,
        extra_info=extra_info,
    )
