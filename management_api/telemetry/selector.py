"""Choosing the GPU source: the first available in a fixed order, with fallback and recovery.

1. At start every source is probed in order; the first available one is used.
2. A source that raises while reading is skipped, and the next usable one answers the same
   sample; the sampler never sees the exception.
3. A skipped or unavailable source is probed again after `reprobe_seconds`, so a source that
   comes back (jtop service restarted, driver loaded) is used again, in its original rank.
4. When nothing answers, the reading is empty and the source is "none".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from management_api.telemetry.reading import GpuReading
from management_api.telemetry.source import NO_GPU_SOURCE, GpuSource

log = logging.getLogger(__name__)


class GpuSourceSelector:
    def __init__(
        self,
        sources: Sequence[GpuSource],
        reprobe_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = tuple(sources)
        self._reprobe_seconds = reprobe_seconds
        self._clock = clock
        self._usable = [False] * len(self._sources)
        self._retry_at = [float("-inf")] * len(self._sources)
        self._failing = [False] * len(self._sources)
        self._current: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(source.name for source in self._sources)

    @property
    def current(self) -> str | None:
        """The source that answered last ("none" if none did); None before the first probe."""
        return self._current

    def select(self) -> str:
        """Probe every source now and return the name of the one that will be used."""
        now = self._clock()
        for index in range(len(self._sources)):
            self._probe(index, now)
        usable = [s.name for s, ok in zip(self._sources, self._usable, strict=True) if ok]
        self._current = usable[0] if usable else NO_GPU_SOURCE
        log.info("GPU telemetry source: %s", self._current)
        return self._current

    def read(self) -> tuple[str, GpuReading]:
        now = self._clock()
        for index, source in enumerate(self._sources):
            if not self._usable[index] and now >= self._retry_at[index]:
                self._probe(index, now)
            if not self._usable[index]:
                continue
            try:
                reading = source.read()
            except Exception as exc:
                self._mark_failed(index, now, exc)
                continue
            self._failing[index] = False
            self._switch_to(source.name)
            return source.name, reading
        self._switch_to(NO_GPU_SOURCE)
        return NO_GPU_SOURCE, GpuReading()

    def close(self) -> None:
        for source in self._sources:
            try:
                source.close()
            except Exception:
                log.debug("closing telemetry source %s failed", source.name, exc_info=True)

    def _probe(self, index: int, now: float) -> None:
        source = self._sources[index]
        try:
            usable = bool(source.available())
        except Exception:
            log.debug("probing telemetry source %s failed", source.name, exc_info=True)
            usable = False
        self._usable[index] = usable
        if not usable:
            self._retry_at[index] = now + self._reprobe_seconds

    def _mark_failed(self, index: int, now: float, exc: Exception) -> None:
        source = self._sources[index]
        # One warning per failure streak; the rest of the streak is debug noise.
        level = logging.DEBUG if self._failing[index] else logging.WARNING
        log.log(level, "telemetry source %s failed, falling back: %s", source.name, exc)
        self._failing[index] = True
        self._usable[index] = False
        self._retry_at[index] = now + self._reprobe_seconds

    def _switch_to(self, name: str) -> None:
        if name != self._current:
            if self._current is not None:
                log.info("GPU telemetry source: %s (was %s)", name, self._current)
            self._current = name
