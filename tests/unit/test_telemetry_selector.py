"""Source selection: order, fallback when a source raises mid-run, bounded re-probing."""

from __future__ import annotations

import logging

import pytest

from management_api.telemetry.defaults import default_gpu_sources
from management_api.telemetry.reading import GpuReading
from management_api.telemetry.selector import GpuSourceSelector


class FakeSource:
    """A GPU source whose availability and failures the test sets."""

    def __init__(self, name: str, available: bool = True, load: float = 1.0) -> None:
        self.name = name
        self.is_available = available
        self.load = load
        self.failing = False
        self.probes = 0
        self.reads = 0
        self.closed = 0

    def available(self) -> bool:
        self.probes += 1
        return self.is_available

    def read(self) -> GpuReading:
        self.reads += 1
        if self.failing:
            raise OSError(f"{self.name} broke")
        return GpuReading(utilization_percent=self.load)

    def close(self) -> None:
        self.closed += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_production_order_is_a_tuple() -> None:
    sources = default_gpu_sources()
    assert isinstance(sources, tuple)
    assert [s.name for s in sources] == ["jetson_sysfs", "jtop", "tegrastats", "nvml", "nvidia_smi"]


def test_first_available_source_is_chosen() -> None:
    a, b, c = FakeSource("a", available=False), FakeSource("b", load=2.0), FakeSource("c")
    selector = GpuSourceSelector((a, b, c), clock=Clock())
    assert selector.current is None
    assert selector.select() == "b"
    assert selector.read() == ("b", GpuReading(utilization_percent=2.0))
    assert c.reads == 0


def test_nothing_available_is_none() -> None:
    selector = GpuSourceSelector((FakeSource("a", available=False),), clock=Clock())
    assert selector.select() == "none"
    assert selector.read() == ("none", GpuReading())


def test_raising_source_falls_back_within_the_same_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    a, b = FakeSource("a", load=10.0), FakeSource("b", load=20.0)
    selector = GpuSourceSelector((a, b), reprobe_seconds=60, clock=clock)
    selector.select()
    a.failing = True
    with caplog.at_level(logging.DEBUG, logger="management_api.telemetry.selector"):
        assert selector.read() == ("b", GpuReading(utilization_percent=20.0))
        clock.now += 5
        assert selector.read()[0] == "b"
    assert a.reads == 1  # skipped on the next sample, not retried every time
    assert selector.current == "b"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "a broke" in warnings[0].getMessage()


def test_recovered_source_comes_back_after_the_reprobe_interval() -> None:
    clock = Clock()
    a, b = FakeSource("a", load=10.0), FakeSource("b", load=20.0)
    selector = GpuSourceSelector((a, b), reprobe_seconds=60, clock=clock)
    selector.select()
    a.failing = True
    assert selector.read()[0] == "b"
    a.failing = False
    clock.now += 59
    assert selector.read()[0] == "b"
    clock.now += 2
    assert selector.read() == ("a", GpuReading(utilization_percent=10.0))


def test_source_unavailable_at_start_is_probed_again_but_bounded() -> None:
    clock = Clock()
    a, b = FakeSource("a", available=False), FakeSource("b")
    selector = GpuSourceSelector((a, b), reprobe_seconds=60, clock=clock)
    selector.select()
    for _ in range(10):
        clock.now += 5
        selector.read()
    assert a.probes == 1  # 50 s: not yet due
    a.is_available = True
    clock.now += 15
    assert selector.read()[0] == "a"
    assert a.probes == 2


def test_every_source_failing_gives_none_and_never_raises() -> None:
    a, b = FakeSource("a"), FakeSource("b")
    a.failing = b.failing = True
    selector = GpuSourceSelector((a, b), clock=Clock())
    assert selector.read() == ("none", GpuReading())
    assert selector.current == "none"


def test_probe_that_raises_counts_as_unavailable() -> None:
    class Exploding(FakeSource):
        def available(self) -> bool:
            raise PermissionError("EACCES")

    selector = GpuSourceSelector((Exploding("x"), FakeSource("y")), clock=Clock())
    assert selector.select() == "y"


def test_close_closes_every_source() -> None:
    a, b = FakeSource("a"), FakeSource("b")
    GpuSourceSelector((a, b)).close()
    assert (a.closed, b.closed) == (1, 1)
