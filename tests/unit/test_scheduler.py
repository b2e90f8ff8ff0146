"""Affinity scheduling across models: holds, the fairness bound, swaps, the loaded set.

Driven through the limiter with a fake clock (``submit`` + ``recheck``), like test_limiter.py.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from management_api.proxy.limiter import Limiter, QueueFull, Slot, Ticket
from management_api.proxy.limits_config import parse_limits
from management_api.proxy.scheduler import (
    DRAINING,
    DRAINING_FOR_SWAP,
    NEEDS_SWAP,
    ModelScheduler,
)

A, B, C = "a:latest", "b:latest", "c:latest"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Events:
    def __init__(self) -> None:
        self.held: list[tuple[str, float]] = []
        self.swaps: list[tuple[str, tuple[str, ...]]] = []

    def on_held(self, model: str, held_s: float) -> None:
        self.held.append((model, held_s))

    def on_swap(self, model: str, evicted: tuple[str, ...]) -> None:
        self.swaps.append((model, evicted))


def make(
    policy: str = "affinity",
    *,
    max_loaded: int = 1,
    hold: float = 20,
    extra: str = "",
    scheduler: ModelScheduler | None = None,
) -> tuple[Limiter, FakeClock, Events]:
    clock = FakeClock()
    events = Events()
    text = (
        "[defaults]\nmax_concurrency = 1\nmax_queue = 50\nmax_wait_seconds = 600\n"
        f'[scheduler]\npolicy = "{policy}"\nmax_loaded_models = {max_loaded}\n'
        f"max_hold_seconds = {hold}\n{extra}"
    )
    limiter = Limiter(
        parse_limits(text, "test.toml"), clock=clock, observer=events, scheduler=scheduler
    )
    return limiter, clock, events


def slot_of(ticket: Ticket) -> Slot:
    assert ticket.slot is not None, "expected an admitted ticket"
    return ticket.slot


def loaded(limiter: Limiter) -> list[str]:
    return [row["model"] for row in limiter.scheduler.snapshot()["loaded"]]


def test_models_that_fit_together_are_admitted_as_under_fifo():
    limiter, _, events = make(max_loaded=2)
    assert limiter.submit(A).slot is not None
    assert limiter.submit(B).slot is not None
    assert loaded(limiter) == [A, B]
    assert events.swaps == []


def test_a_swap_waits_until_the_loaded_model_has_no_work():
    limiter, clock, events = make()
    a1 = slot_of(limiter.submit(A))
    b1 = limiter.submit(B)  # A runs: B would evict it
    a2 = limiter.submit(A)  # queued behind A's own limit
    assert b1.slot is None and a2.slot is None
    view = {m["model"]: m for m in limiter.snapshot_with_scheduler()["models"]}
    assert view[B]["held"] is True
    assert view[B]["held_reason"] == {"reason": NEEDS_SWAP, "blocked_by": [A]}
    assert view[A]["held"] is False
    clock.advance(1)
    a1.release()
    # B is older than A2, but A still has work: A2 goes first, no swap.
    assert a2.slot is not None and b1.slot is None
    clock.advance(1)
    a2.slot.release()
    assert b1.slot is not None and b1.slot.swap
    assert b1.slot.held_seconds == pytest.approx(2.0)
    assert loaded(limiter) == [B]
    assert events.swaps == [(B, (A,))]
    assert events.held == [(B, pytest.approx(2.0))]
    assert limiter.scheduler.snapshot()["swaps"] == 1


def test_the_hold_yields_at_once_to_an_interactive_request_for_another_model():
    limiter, _clock, events = make()
    a1 = slot_of(limiter.submit(A))
    limiter.submit(A)  # A has work queued: a standard request for B is held
    held = limiter.submit(B)
    assert held.slot is None
    # A person waiting: the hold that keeps A loaded gives way now, not when A drains.
    asked = limiter.submit(B, priority="interactive", caller="dashboard")
    assert asked.slot is not None and asked.slot.swap
    assert events.swaps == [(B, (A,))]
    asked.slot.release()
    a1.release()


def test_fifo_admits_every_model_at_once_and_never_holds():
    limiter, _, events = make("fifo")
    assert limiter.submit(A).slot is not None
    assert limiter.submit(B).slot is not None  # Ollama will have to swap: fifo does not care
    snapshot = limiter.snapshot_with_scheduler()
    assert snapshot["scheduler"]["policy"] == "fifo"
    assert all(m["held"] is False for m in snapshot["models"])
    assert events.held == []


def test_fairness_bound_drains_a_busy_model_for_a_held_one():
    """A steady stream for A never leaves A idle; B still gets in after max_hold + the drain."""
    limiter, clock, _ = make(hold=5)
    running = slot_of(limiter.submit(A))
    b = limiter.submit(B)
    waiting: list[Ticket] = []
    for _ in range(4):  # A's queue never empties: a request arrives every second
        waiting.append(limiter.submit(A))
        clock.advance(1)
        running.release()
        running = slot_of(waiting.pop(0))
        assert b.slot is None
    clock.advance(1.5)  # B has waited 5.5 s > max_hold
    waiting.append(limiter.submit(A))
    limiter.recheck()
    hold = {m["model"]: m for m in limiter.snapshot_with_scheduler()["models"]}
    assert hold[B]["held_reason"] == {"reason": DRAINING_FOR_SWAP, "blocked_by": [A]}
    assert hold[A]["held_reason"] == {"reason": DRAINING, "blocked_by": [B]}
    assert b.slot is None
    clock.advance(0.5)
    running.release()  # the drain: A's running request ends, A's queue stays
    assert b.slot is not None and b.slot.swap
    assert b.slot.queue_wait_seconds == pytest.approx(6.0)  # max_hold + the drain
    assert all(t.slot is None for t in waiting)
    assert loaded(limiter) == [B]
    # A's waiters now wait for B in turn; A's oldest already waited past the hold.
    b.slot.release()
    assert waiting[0].slot is not None and waiting[0].slot.swap
    assert loaded(limiter) == [A]


def test_a_held_model_admits_its_whole_queue_up_to_its_limit():
    limiter, clock, _ = make(extra='[[models]]\nmatch = "b"\nmax_concurrency = 2\n')
    a = slot_of(limiter.submit(A))
    bs = [limiter.submit(B) for _ in range(3)]
    clock.advance(1)
    a.release()
    assert [t.slot is not None for t in bs] == [True, True, False]
    assert [t.slot.swap for t in bs[:2] if t.slot] == [True, False]


def test_limits_queue_caps_and_waits_still_hold_for_held_models():
    limiter, clock, _ = make(extra='[[models]]\nmatch = "b"\nmax_queue = 1\n')
    slot_of(limiter.submit(A))
    limiter.submit(B)
    with pytest.raises(QueueFull) as info:
        limiter.submit(B)
    # The hold's remaining time is part of Retry-After (20 s hold, nothing measured yet).
    assert info.value.rejection.retry_after_seconds >= 19
    clock.advance(601)
    assert limiter.expire_waiters() == 1


def test_retry_after_includes_the_measured_swap_time():
    limiter, clock, _ = make(hold=1)
    a = slot_of(limiter.submit(A))
    clock.advance(1)
    a.release()
    b = slot_of(limiter.submit(B))  # A idle: swap at once
    assert b.swap
    clock.advance(3)  # the swapped-in request took 3 s (load included)
    b.release()
    a = slot_of(limiter.submit(A))  # swap back
    clock.advance(1)
    a.release()
    assert limiter.scheduler.swap_estimate(B, lambda _key: (0, 0)) == pytest.approx(3.0)
    held_view = limiter.snapshot()  # B is not loaded: its Retry-After carries the swap
    b_view = next(m for m in held_view["models"] if m["model"] == B)
    assert b_view["retry_after_seconds"] >= 3


def test_ps_refresh_replaces_the_belief_but_keeps_fresh_admissions():
    answers = [[(A, 100), (C, 50)]]
    scheduler = ModelScheduler(fetch_loaded=lambda: answers[0], fetch_sizes=lambda: {B: 70})
    limiter, _, _ = make(max_loaded=3, scheduler=scheduler)
    assert scheduler.refresh()
    assert loaded(limiter) == [A, C]
    slot_of(limiter.submit(B))
    assert loaded(limiter) == [A, C, B]
    answers[0] = [(C, 50)]  # A expired in Ollama; B is admitted but not listed yet
    scheduler._last_admit[B] = scheduler._clock()  # just now
    scheduler._last_admit[A] = scheduler._clock() - 60  # long ago
    assert scheduler.refresh()
    assert loaded(limiter) == [C, B]
    snapshot = json.loads(json.dumps(limiter.snapshot_with_scheduler()))
    assert snapshot["scheduler"]["loaded"] == [
        {"model": C, "size": 50},
        {"model": B, "size": 70},
    ]


def test_a_failing_ps_read_keeps_the_belief():
    def down() -> list[tuple[str, int | None]]:
        raise ConnectionError("refused")

    scheduler = ModelScheduler(fetch_loaded=down)
    limiter, _, _ = make(scheduler=scheduler)
    slot_of(limiter.submit(A))
    assert scheduler.refresh() is False
    assert loaded(limiter) == [A]


def test_memory_budget_decides_what_fits_when_no_count_is_given():
    scheduler = ModelScheduler(
        fetch_loaded=lambda: [],
        fetch_sizes=lambda: {A: 6, B: 6, C: 3},
        memory_bytes=lambda: 10,
    )
    limiter, _, _ = make(max_loaded=0, scheduler=scheduler)
    scheduler.refresh()
    slot_of(limiter.submit(A))
    assert limiter.submit(C).slot is not None  # 6 + 3 fit in 10
    assert limiter.submit(B).slot is None  # 6 + 3 + 6 do not, and A and C are busy
    assert scheduler.snapshot()["memory_budget_bytes"] == 10


def test_ollama_max_loaded_models_and_memory_both_apply_unless_the_file_gives_a_count():
    def build(max_loaded: int) -> tuple[Limiter, ModelScheduler]:
        scheduler = ModelScheduler(
            fetch_loaded=lambda: [],
            fetch_sizes=lambda: {A: 6, B: 6, C: 3},
            env_max_loaded=2,
            memory_bytes=lambda: 10,
        )
        limiter, _, _ = make(max_loaded=max_loaded, scheduler=scheduler)
        scheduler.refresh()
        return limiter, scheduler

    limiter, scheduler = build(0)
    slot_of(limiter.submit(A))
    assert limiter.submit(B).slot is None  # count 2 would allow it; 6 + 6 > 10 does not
    assert limiter.submit(C).slot is not None  # 6 + 3 fit, and 2 models <= 2
    assert scheduler.max_loaded() == 2
    limiter, scheduler = build(2)  # the file's count wins: memory is not consulted
    slot_of(limiter.submit(A))
    assert limiter.submit(B).slot is not None


def test_switching_to_fifo_releases_every_hold():
    limiter, _, _ = make()
    slot_of(limiter.submit(A))
    b = limiter.submit(B)
    assert b.slot is None
    limiter.update_config(parse_limits('[scheduler]\npolicy = "fifo"', "test.toml"))
    assert b.slot is not None


def test_a_drain_is_called_off_when_the_held_requests_leave():
    limiter, clock, _ = make(hold=1)
    a = slot_of(limiter.submit(A))
    b = limiter.submit(B)
    clock.advance(1.5)
    a_next = limiter.submit(A)
    limiter.recheck()  # B's hold ran out: A drains
    assert limiter.scheduler.snapshot()["draining"] == {A: B}
    assert b.cancel()  # B's client goes away
    clock.advance(0.1)
    a.release()
    assert a_next.slot is not None  # A takes requests again
    assert limiter.scheduler.snapshot()["draining"] == {}
    assert loaded(limiter) == [A]


def test_blocking_waiters_see_the_hold_run_out_by_themselves():
    """Real clock and threads: nobody calls recheck; the held waiter's own polling does."""
    limiter = Limiter(
        parse_limits(
            "[defaults]\nmax_concurrency = 1\nmax_wait_seconds = 10\n"
            '[scheduler]\npolicy = "affinity"\nmax_loaded_models = 1\nmax_hold_seconds = 0.3'
        )
    )
    running = limiter.acquire(A)
    got: dict[str, Slot] = {}

    def take(model: str) -> None:
        got[model] = limiter.acquire(model, is_cancelled=lambda: False)

    threads = [threading.Thread(target=take, args=(m,)) for m in (B, A)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while limiter.scheduler.snapshot()["draining"] != {A: B} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert limiter.scheduler.snapshot()["draining"] == {A: B}
    assert got == {}
    running.release()  # the drain ends: B goes before the queued A
    threads[0].join(5)
    assert B in got and A not in got
    got[B].release()
    threads[1].join(5)
    assert A in got and got[A].swap
    got[A].release()


def test_a_model_never_swapped_in_gets_a_swap_estimate_scaled_by_its_size():
    scheduler = ModelScheduler(fetch_loaded=lambda: [], fetch_sizes=lambda: {A: 2, B: 4, C: 8})
    limiter, clock, _ = make(scheduler=scheduler)
    scheduler.refresh()
    a = slot_of(limiter.submit(A))
    clock.advance(1)
    a.release()
    b = slot_of(limiter.submit(B))
    clock.advance(2)  # B's first request: 2 s more than nothing, for 4 bytes
    b.release()
    idle = lambda _key: (0, 0)  # noqa: E731
    assert scheduler.swap_estimate(B, idle) == 0.0  # loaded: no swap ahead
    assert scheduler.swap_estimate(A, idle) == pytest.approx(1.0)  # A: 2 bytes x 0.5 s/byte
    assert scheduler.swap_estimate(C, idle) == pytest.approx(4.0)


def test_a_refresh_racing_an_admission_never_leaves_more_loaded_than_fit():
    """/api/ps read just before B was admitted still lists A: the belief must not hold both."""
    answers = [[(A, 100)]]
    scheduler = ModelScheduler(fetch_loaded=lambda: answers[0])
    limiter, clock, _ = make(scheduler=scheduler)
    scheduler.refresh()
    a = slot_of(limiter.submit(A))
    clock.advance(1)
    a.release()
    slot_of(limiter.submit(B))  # A idle: swapped out for B
    scheduler._last_admit[B] = scheduler._clock()  # admitted as the read ran
    assert scheduler.refresh()  # Ollama still listed A when it answered
    assert loaded(limiter) == [B]
    assert limiter.submit(A).slot is None  # B runs: A is held again, not taken for loaded
