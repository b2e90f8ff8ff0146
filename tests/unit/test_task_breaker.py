"""The per-model breaker: closed -> open -> half-open with one probe, and what never counts."""

from __future__ import annotations

from management_api.tasks.breaker import (
    CLOSED,
    FAILURE,
    HALF_OPEN,
    NEUTRAL,
    OPEN,
    SUCCESS,
    BreakerBoard,
)
from management_api.tasks.config import BreakerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def board(**overrides) -> tuple[BreakerBoard, Clock]:
    clock = Clock()
    settings = BreakerSettings(**{"window": 4, "min_calls": 2, "failure_rate": 0.5,
                                  "open_seconds": 10, **overrides})  # fmt: skip
    return BreakerBoard(settings, clock=clock), clock


def call(b: BreakerBoard, verdict: str, model: str = "m:latest") -> bool:
    allowed = b.begin(model)
    if allowed:
        b.end(model, verdict)
    return allowed


def test_opens_at_the_failure_rate_once_min_calls_are_in():
    b, _ = board()
    assert call(b, FAILURE)
    assert b.state("m:latest") == CLOSED  # one call < min_calls
    assert call(b, SUCCESS)
    assert b.state("m:latest") == OPEN  # 1 of 2 failed = 0.5
    assert not b.available("m:latest")
    assert not call(b, SUCCESS)


def test_neutral_endings_never_count():
    b, _ = board()
    for _ in range(10):
        call(b, NEUTRAL)  # cancellations, hedge losers, 4xx, our own 429s
    assert b.state("m:latest") == CLOSED
    assert b.snapshot()["m:latest"]["calls"] == 0


def test_half_open_lets_exactly_one_probe_through():
    b, clock = board()
    call(b, FAILURE)
    call(b, FAILURE)
    assert b.state("m:latest") == OPEN
    clock.now += 10
    assert b.state("m:latest") == HALF_OPEN and b.available("m:latest")
    assert b.begin("m:latest")  # the probe
    assert not b.begin("m:latest") and not b.available("m:latest")
    b.end("m:latest", SUCCESS)
    assert b.state("m:latest") == CLOSED
    assert b.snapshot()["m:latest"]["calls"] == 0  # a fresh window


def test_failed_probe_opens_again_and_a_cancelled_probe_gives_its_turn_back():
    b, clock = board()
    call(b, FAILURE)
    call(b, FAILURE)
    clock.now += 10
    assert b.begin("m:latest")
    b.end("m:latest", NEUTRAL)  # the probe was cancelled: no verdict
    assert b.state("m:latest") == HALF_OPEN and b.available("m:latest")
    assert b.begin("m:latest")
    b.end("m:latest", FAILURE)
    assert b.state("m:latest") == OPEN
    clock.now += 9.9
    assert not b.available("m:latest")


def test_models_are_independent_and_window_shrinks_on_reconfigure():
    b, _ = board(window=10, min_calls=3)
    for _ in range(3):
        call(b, FAILURE, "a:latest")
    assert b.state("a:latest") == OPEN and b.state("b:latest") == CLOSED
    for _ in range(5):
        call(b, SUCCESS, "b:latest")
    b.configure(BreakerSettings(window=2, min_calls=2, failure_rate=0.5, open_seconds=10))
    assert b.snapshot()["b:latest"]["calls"] == 2
