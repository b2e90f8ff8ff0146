"""The background sampler: cadence, bounded history, non-blocking reads, clean stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from management_api.telemetry.host import HostSource
from management_api.telemetry.reading import GpuReading, HostReading
from management_api.telemetry.sampler import Sampler

INTERVAL = 0.05


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


class CountingSource:
    name = "counting"

    def __init__(self, shared: bool = False) -> None:
        self.reads = 0
        self.closed = False
        self.shared = shared

    def available(self) -> bool:
        return True

    def read(self) -> GpuReading:
        self.reads += 1
        return GpuReading(utilization_percent=float(self.reads), memory_shared=self.shared)

    def close(self) -> None:
        self.closed = True


class GatedSource(CountingSource):
    """Blocks inside read() once `gate` is cleared, until the test sets it again."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()

    def read(self) -> GpuReading:
        self.inside.set()
        self.gate.wait(30)
        return super().read()


@pytest.fixture
def stopped() -> Iterator[list[Sampler]]:
    """Samplers registered here are stopped even when a test fails."""
    samplers: list[Sampler] = []
    yield samplers
    for sampler in samplers:
        for source in getattr(sampler, "_test_sources", ()):
            if isinstance(source, GatedSource):
                source.gate.set()
        sampler.stop(timeout=5)


def make(stopped: list[Sampler], *sources, **kwargs) -> Sampler:
    kwargs.setdefault("interval", INTERVAL)
    sampler = Sampler(sources, **kwargs)
    sampler._test_sources = sources  # type: ignore[attr-defined]
    stopped.append(sampler)
    return sampler


def test_publishes_at_the_interval(stopped: list[Sampler]) -> None:
    source = CountingSource()
    sampler = make(stopped, source)
    assert sampler.latest() is None
    sampler.start()
    wait_for(lambda: sampler.samples_taken >= 6)
    snapshot = sampler.latest()
    assert snapshot is not None
    assert snapshot.gpu_source == "counting" and sampler.gpu_source == "counting"
    assert snapshot.interval_seconds == INTERVAL
    points = sampler.history()
    times = [p["t"] for p in points]
    assert times == sorted(times)
    # Fixed rate: samples can run late, never early, so the average spacing is >= interval.
    assert (times[-1] - times[0]) / (len(times) - 1) >= INTERVAL * 0.8
    assert [p["gpu_utilization_percent"] for p in points] == [
        float(i + 1) for i in range(len(points))
    ]


def test_history_is_bounded(stopped: list[Sampler]) -> None:
    sampler = make(stopped, CountingSource(), history_seconds=0.25)
    assert sampler.history_limit == 5  # 0.25 s of 0.05 s samples
    sampler.start()
    wait_for(lambda: sampler.samples_taken >= 12)
    points = sampler.history()
    assert len(points) == 5
    assert points[-1]["gpu_utilization_percent"] >= 12
    assert set(points[0]) == {
        "t",
        "cpu_percent",
        "memory_used_bytes",
        "gpu_utilization_percent",
        "gpu_memory_used_bytes",
        "gpu_temperature_c",
        "gpu_power_w",
        # For the status page's charts:
        "cpu_per_core_percent",
        "memory_total_bytes",
        "memory_cached_bytes",
        "memory_unified",
        "gpu_frequency_mhz",
        "thermal_c",
        "power_rails_w",
    }
    assert sampler.history(seconds=-1.0) == []  # a window entirely in the future
    assert len(sampler.history(seconds=3600)) == 5


def test_default_history_is_one_hour_of_samples() -> None:
    assert Sampler((), interval=5).history_limit == 720
    with pytest.raises(ValueError):
        Sampler((), interval=0)


def test_latest_never_waits_for_a_slow_sample(stopped: list[Sampler]) -> None:
    source = GatedSource()
    sampler = make(stopped, source)
    sampler.start()
    wait_for(lambda: sampler.samples_taken >= 1)
    before = sampler.latest()
    source.inside.clear()
    source.gate.clear()
    source.inside.wait(10)  # the sampler thread is now stuck inside read()
    assert source.inside.is_set()

    durations = []
    for _ in range(200):
        started = time.perf_counter()
        snapshot = sampler.latest()
        durations.append(time.perf_counter() - started)
        assert snapshot is before
    durations.sort()
    # Blocking would mean waiting for the gate (30 s); the median shows the real cost, the
    # maximum only that no call waited (a loaded CI machine may deschedule us for a while).
    assert durations[len(durations) // 2] < 0.005
    assert durations[-1] < 0.5

    source.gate.set()
    wait_for(lambda: sampler.latest() is not before)


def test_stop_joins_and_closes_sources(stopped: list[Sampler]) -> None:
    source = CountingSource()
    sampler = make(stopped, source)
    sampler.start()
    wait_for(lambda: sampler.samples_taken >= 1)
    assert sampler.running
    assert sampler.stop(timeout=5) is True
    assert not sampler.running and source.closed
    taken = sampler.samples_taken
    time.sleep(INTERVAL * 3)
    assert sampler.samples_taken == taken


def test_stop_reports_a_sample_that_does_not_finish(stopped: list[Sampler]) -> None:
    source = GatedSource()
    sampler = make(stopped, source)
    sampler.start()
    wait_for(lambda: sampler.samples_taken >= 1)
    source.inside.clear()
    source.gate.clear()
    source.inside.wait(10)
    assert sampler.stop(timeout=0.05) is False
    assert not source.closed  # never closed under a running sample
    source.gate.set()
    assert sampler.stop(timeout=5) is True and source.closed


def test_stop_before_the_first_sample_is_prompt(stopped: list[Sampler]) -> None:
    sampler = make(stopped, CountingSource(), interval=30)
    sampler.start()
    started = time.monotonic()
    assert sampler.stop(timeout=5)
    assert time.monotonic() - started < 5


def test_extra_info_is_published_and_its_failures_do_not_stop_sampling(
    stopped: list[Sampler],
) -> None:
    calls = [0]

    def extra() -> dict:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("limiter busy")
        return {"llama3.2:latest": {"in_flight": 1, "queued": calls[0]}}

    sampler = make(stopped, CountingSource(), extra_info=extra)
    snapshots = [sampler.sample_once() for _ in range(3)]
    assert dict(snapshots[0].extra) == {"llama3.2:latest": {"in_flight": 1, "queued": 1}}
    assert dict(snapshots[1].extra) == {}
    assert snapshots[2].extra["llama3.2:latest"]["queued"] == 3
    with pytest.raises(TypeError):
        snapshots[0].extra["x"] = 1  # type: ignore[index]


def test_host_failure_gives_unknown_host_values(stopped: list[Sampler]) -> None:
    class BrokenHost(HostSource):
        def read(self) -> HostReading:
            raise OSError("psutil could not read /proc")

    sampler = make(stopped, CountingSource(), host=BrokenHost())
    snapshot = sampler.sample_once()
    assert snapshot.host == HostReading()
    assert snapshot.gpu.utilization_percent == 1.0


def test_first_published_cpu_value_is_real(stopped: list[Sampler], tmp_path) -> None:
    sampler = make(stopped, CountingSource(shared=True), host=HostSource(tmp_path))
    sampler.start()
    wait_for(lambda: sampler.latest() is not None)
    snapshot = sampler.latest()
    assert snapshot is not None and snapshot.sequence == 1
    assert snapshot.host.cpu.percent is not None  # primed in the thread before sampling
    assert snapshot.host.memory.unified is True  # the GPU source reported shared memory


def test_cpu_cost_is_measured(stopped: list[Sampler]) -> None:
    sampler = make(stopped, CountingSource(), interval=5.0)
    assert sampler.cpu_seconds_per_sample is None
    for _ in range(3):
        sampler.sample_once()
    per_sample = sampler.cpu_seconds_per_sample
    assert per_sample is not None and per_sample >= 0.0
    assert sampler.cpu_percent_of_core == pytest.approx(per_sample / 5.0 * 100)
    assert sampler.latest() is not None and sampler.latest().sampler_cpu_percent is not None
