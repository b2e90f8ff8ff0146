"""The one interface every GPU telemetry source implements."""

from __future__ import annotations

from typing import Protocol

from management_api.telemetry.reading import GpuReading


class GpuSource(Protocol):
    """A way of reading the GPU.

    `available()` is a cheap probe that never raises; `read()` may raise, which tells the
    selector to fall back to the next source; `close()` releases what `available()` acquired.
    """

    name: str

    def available(self) -> bool: ...

    def read(self) -> GpuReading: ...

    def close(self) -> None: ...


class TelemetryError(RuntimeError):
    """A source was expected to work but produced nothing usable this time."""


NO_GPU_SOURCE = "none"
