"""The background sampler: one daemon thread, an immutable latest snapshot, a bounded history.

Requests never sample. `latest()` returns the last published snapshot, a plain attribute read
(replacing a reference is atomic in CPython), so it never waits for a sample in progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from management_api.telemetry.host import HostSource
from management_api.telemetry.reading import GpuReading, HostReading, Snapshot
from management_api.telemetry.selector import GpuSourceSelector
from management_api.telemetry.source import GpuSource

log = logging.getLogger(__name__)

HISTORY_SECONDS = 3600.0
# psutil's CPU percentages need some time between the baseline call and the first real one.
FIRST_SAMPLE_DELAY = 1.0


class Sampler:
    def __init__(
        self,
        gpu_sources: Sequence[GpuSource] | GpuSourceSelector = (),
        host: HostSource | None = None,
        *,
        interval: float = 5.0,
        history_seconds: float = HISTORY_SECONDS,
        extra_info: Callable[[], Mapping[str, Any]] | None = None,
        reprobe_seconds: float = 60.0,
    ) -> None:
        """`interval` is LLM_STATS_INTERVAL; `extra_info` (e.g. the limiter's per-model
        counters) is called once per sample and published as the snapshot's `extra`."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._selector = (
            gpu_sources
            if isinstance(gpu_sources, GpuSourceSelector)
            else GpuSourceSelector(gpu_sources, reprobe_seconds=reprobe_seconds)
        )
        self._host = host
        self._interval = float(interval)
        self._extra_info = extra_info
        self._history: deque[dict[str, Any]] = deque(
            # history_seconds // interval, minus float noise (0.25 // 0.05 == 4.0).
            maxlen=max(1, int(history_seconds / self._interval + 1e-9))
        )
        self._history_lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._cpu_seconds = 0.0
        self._warned: set[str] = set()

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def gpu_source(self) -> str | None:
        """Name of the GPU source in use ("none" when none works); None before the first probe."""
        return self._selector.current

    @property
    def history_limit(self) -> int:
        return self._history.maxlen or 0

    @property
    def samples_taken(self) -> int:
        return self._sequence

    @property
    def cpu_seconds_per_sample(self) -> float | None:
        """Average thread CPU time of one sample (child processes such as nvidia-smi excluded)."""
        return self._cpu_seconds / self._sequence if self._sequence else None

    @property
    def cpu_percent_of_core(self) -> float | None:
        """What sampling costs at the configured interval, in percent of one CPU core."""
        per_sample = self.cpu_seconds_per_sample
        return per_sample / self._interval * 100 if per_sample is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def latest(self) -> Snapshot | None:
        return self._latest

    def history(self, seconds: float | None = None) -> list[dict[str, Any]]:
        """Compact points for plots, oldest first; only the last `seconds` when given."""
        with self._history_lock:
            points = list(self._history)
        if seconds is not None:
            cutoff = time.time() - seconds
            points = [p for p in points if p["t"] >= cutoff]
        return [dict(p) for p in points]

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join the thread; True when it ended within `timeout`. Sources are closed
        only then, so a sample still running never sees a closed source."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("telemetry sampler did not stop within %.1f s", timeout)
                return False
        self._thread = None
        self._selector.close()
        return True

    def read_gpu(self) -> tuple[str, GpuReading]:
        """A GPU reading taken now in the calling thread and not published: for before/after
        figures around an action (GPU recover), where a sample up to `interval` old won't do."""
        return self._selector.read()

    def sample_once(self) -> Snapshot:
        """Take one sample in the calling thread and publish it. The sampler thread calls this;
        request handlers must use `latest()`."""
        cpu_start = time.thread_time()
        wall_start = time.monotonic()
        source, gpu = self._selector.read()
        host = self._read_host()
        if gpu.memory_shared:
            host = replace(host, memory=replace(host.memory, unified=True))
        snapshot = Snapshot(
            sequence=self._sequence + 1,
            sampled_at=time.time(),
            interval_seconds=self._interval,
            gpu_source=source,
            gpu=gpu,
            host=host,
            extra=MappingProxyType(dict(self._read_extra())),
            sample_seconds=time.monotonic() - wall_start,
            sampler_cpu_percent=self.cpu_percent_of_core,
        )
        self._latest = snapshot
        with self._history_lock:
            self._history.append(history_point(snapshot))
        self._cpu_seconds += time.thread_time() - cpu_start
        self._sequence = snapshot.sequence
        return snapshot

    def _run(self) -> None:
        try:
            if self._host is not None:
                self._host.prime()
            self._selector.select()
        except Exception:
            log.exception("telemetry start-up failed; sampling anyway")
        if self._stop.wait(min(self._interval, FIRST_SAMPLE_DELAY)):
            return
        due = time.monotonic()
        while True:
            try:
                self.sample_once()
            except Exception:
                log.exception("telemetry sample failed")
            # Fixed rate; after an overrun, start again from now instead of catching up.
            due = max(due + self._interval, time.monotonic())
            if self._stop.wait(due - time.monotonic()):
                return

    def _read_host(self) -> HostReading:
        if self._host is None:
            return HostReading()
        try:
            return self._host.read()
        except Exception as exc:
            self._warn_once("host", exc)
            return HostReading()

    def _read_extra(self) -> Mapping[str, Any]:
        if self._extra_info is None:
            return {}
        try:
            return self._extra_info() or {}
        except Exception as exc:
            self._warn_once("extra_info", exc)
            return {}

    def _warn_once(self, what: str, exc: Exception) -> None:
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        log.log(level, "telemetry %s reading failed: %s", what, exc, exc_info=True)


def history_point(snapshot: Snapshot) -> dict[str, Any]:
    """One compact point for plots. The first seven keys are the original ones; the rest feed
    the status page's charts (per-core CPU, the memory split, GPU clock, zones, rails)."""
    host, gpu = snapshot.host, snapshot.gpu
    power = gpu.power
    return {
        "t": round(snapshot.sampled_at, 3),
        "cpu_percent": host.cpu.percent,
        "memory_used_bytes": host.memory.used_bytes,
        "gpu_utilization_percent": gpu.utilization_percent,
        "gpu_memory_used_bytes": gpu.memory_used_bytes,
        "gpu_temperature_c": gpu.temperature_c,
        "gpu_power_w": gpu.power_w,
        "cpu_per_core_percent": list(host.cpu.per_core_percent or []) or None,
        "memory_total_bytes": host.memory.total_bytes,
        "memory_cached_bytes": host.memory.cached_bytes,
        "memory_unified": bool(host.memory.unified or gpu.memory_shared),
        "gpu_frequency_mhz": gpu.frequency_mhz,
        "thermal_c": {zone.name: zone.temperature_c for zone in gpu.thermal_zones} or None,
        "power_rails_w": (
            {
                rail.name: round(rail.power_mw / 1000, 3)
                for rail in power.rails
                if rail.power_mw is not None
            }
            or None
            if power is not None
            else None
        ),
    }
