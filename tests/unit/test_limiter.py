"""Admission limiter: driven synchronously via ``submit``; threads only where blocking matters."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable

import pytest

from management_api.proxy.limiter import (
    RETRY_AFTER_MAX_SECONDS,
    AdmissionCancelled,
    AdmissionRejected,
    Limiter,
    QueueFull,
    QueueTimeout,
    Slot,
    Ticket,
)
from management_api.proxy.limits_config import (
    LimitsConfig,
    LimitsConfigError,
    ModelLimits,
    parse_limits,
    simple_normalize,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()

    def on_admit(self, model: str, wait_s: float) -> None:
        with self.lock:
            self.calls.append(("admit", model, wait_s))

    def on_reject(self, model: str, reason: str) -> None:
        with self.lock:
            self.calls.append(("reject", model, reason))

    def on_release(self, model: str, service_s: float) -> None:
        with self.lock:
            self.calls.append(("release", model, service_s))


def config(text: str = "", **defaults: object) -> LimitsConfig:
    lines = "".join(f"{key} = {value}\n" for key, value in defaults.items())
    return parse_limits(f"[defaults]\n{lines}\n{text}", "test.toml")


def make(text: str = "", clock: FakeClock | None = None, **defaults: object) -> Limiter:
    return Limiter(config(text, **defaults), clock=clock or FakeClock())


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class Acquirer(threading.Thread):
    """Runs one blocking acquire and records its outcome."""

    def __init__(self, limiter: Limiter, model: str, **kwargs: object) -> None:
        super().__init__(daemon=True)
        self.limiter, self.model, self.kwargs = limiter, model, kwargs
        self.slot: Slot | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.slot = self.limiter.acquire(self.model, **self.kwargs)
        except BaseException as exc:
            self.error = exc


def admitted(tickets: list[Ticket]) -> list[bool]:
    return [t.slot is not None for t in tickets]


# --- per-model FIFO and the queue bound ----------------------------------------------------------


def test_fifo_order_within_a_model():
    limiter = make(max_concurrency=1, max_queue=10)
    first = limiter.submit("m")
    waiting = [limiter.submit("m") for _ in range(4)]

    assert first.slot is not None and first.slot.queue_wait_seconds == 0
    assert admitted(waiting) == [False] * 4
    assert limiter.queued_for("m") == 4

    order = []
    slot = first.slot
    for _ in range(4):
        slot.release()
        now_admitted = [i for i, t in enumerate(waiting) if t.slot and i not in order]
        assert len(now_admitted) == 1
        order.append(now_admitted[0])
        slot = waiting[now_admitted[0]].slot
    assert order == [0, 1, 2, 3]
    slot.release()
    assert limiter.in_flight_for("m") == 0 and limiter.queued_for("m") == 0


def test_resume_admits_the_queue_before_newcomers():
    limiter = make(max_concurrency=1)
    with limiter.paused("m"):
        queued = limiter.submit("m")
    newcomer = limiter.submit("m")
    assert queued.slot is not None and newcomer.slot is None


def test_queue_full_at_max_queue_carries_a_rejection():
    limiter = make(max_concurrency=1, max_queue=2)
    running = limiter.submit("m")
    limiter.submit("m")
    limiter.submit("m")

    with pytest.raises(QueueFull) as info:
        limiter.submit("m")
    rejection = info.value.rejection
    assert isinstance(info.value, AdmissionRejected)
    assert (rejection.model, rejection.reason) == ("m:latest", "queue_full")
    assert (rejection.limit, rejection.in_flight, rejection.queued) == (1, 1, 2)
    assert rejection.retry_after_seconds >= 1
    assert limiter.queued_for("m") == 2
    assert limiter.snapshot()["totals"]["rejected"]["queue_full"] == 1
    assert running.slot is not None


def test_max_queue_zero_never_waits():
    limiter = make(max_concurrency=1, max_queue=0)
    limiter.submit("m")
    with pytest.raises(QueueFull):
        limiter.submit("m")


def test_names_are_normalised_into_one_model():
    limiter = make(max_concurrency=1)
    slot = limiter.acquire("Llama3.2")
    assert limiter.in_flight_for("llama3.2:latest") == 1
    assert limiter.submit("LLAMA3.2:latest").slot is None
    assert slot.model == "llama3.2:latest"


# --- queue timeout and cancellation --------------------------------------------------------------


def test_queue_timeout_with_a_fake_clock():
    clock = FakeClock()
    observer = RecordingObserver()
    limiter = Limiter(
        config(max_concurrency=1, max_wait_seconds=10), clock=clock, observer=observer
    )
    limiter.submit("m")
    early = limiter.submit("m")
    clock.advance(4)
    late = limiter.submit("m")

    clock.advance(5.9)
    assert limiter.expire_waiters() == 0
    clock.advance(0.1)
    assert limiter.expire_waiters() == 1

    assert early.rejection is not None and early.rejection.reason == "queue_timeout"
    assert early.rejection.waited_seconds == pytest.approx(10)
    assert late.rejection is None and limiter.queued_for("m") == 1
    assert early.cancel() is False
    assert ("reject", "m:latest", "queue_timeout") in observer.calls
    clock.advance(4)
    assert limiter.expire_waiters() == 1
    assert limiter.snapshot()["totals"]["rejected"]["queue_timeout"] == 2


def test_blocking_acquire_times_out_with_a_small_max_wait():
    limiter = Limiter(config(max_concurrency=1, max_wait_seconds=0.05))
    held = limiter.acquire("m")
    started = time.monotonic()
    with pytest.raises(QueueTimeout) as info:
        limiter.acquire("m")
    assert time.monotonic() - started >= 0.05
    assert info.value.rejection.reason == "queue_timeout"
    assert limiter.queued_for("m") == 0
    assert held.release() is True


def test_blocked_waiter_wakes_when_the_fake_clock_expires_it():
    clock = FakeClock()
    limiter = Limiter(config(max_concurrency=1, max_wait_seconds=30), clock=clock)
    limiter.acquire("m")
    waiter = Acquirer(limiter, "m")
    waiter.start()
    assert wait_until(lambda: limiter.queued_for("m") == 1)
    clock.advance(30)
    limiter.expire_waiters()
    waiter.join(5)
    assert isinstance(waiter.error, QueueTimeout)


def test_cancel_while_queued_frees_the_place_and_counts():
    limiter = make(max_concurrency=1, max_queue=1)
    running = limiter.submit("m")
    queued = limiter.submit("m")
    with pytest.raises(QueueFull):
        limiter.submit("m")

    assert queued.cancel() is True
    assert queued.cancel() is False
    assert queued.rejection.reason == "cancelled"
    replacement = limiter.submit("m")  # the place is free again

    running.slot.release()
    assert queued.slot is None and replacement.slot is not None
    counts = limiter.snapshot()["totals"]
    assert counts["rejected"] == {"queue_full": 1, "queue_timeout": 0, "cancelled": 1, "shed": 0}
    assert counts["admitted"] == 2


def test_blocking_acquire_drops_a_waiter_whose_client_left():
    limiter = Limiter(config(max_concurrency=1, max_wait_seconds=60))
    held = limiter.acquire("m")
    gone = threading.Event()
    waiter = Acquirer(limiter, "m", is_cancelled=gone.is_set, poll_seconds=0.01)
    waiter.start()
    assert wait_until(lambda: limiter.queued_for("m") == 1)

    gone.set()
    waiter.join(5)
    assert isinstance(waiter.error, AdmissionCancelled)
    assert waiter.error.rejection.reason == "cancelled"
    assert limiter.queued_for("m") == 0
    held.release()
    assert limiter.in_flight_for("m") == 0  # nobody was admitted in its place


def test_an_exception_from_is_cancelled_leaves_nothing_behind():
    limiter = Limiter(config(max_concurrency=1, max_wait_seconds=60))
    held = limiter.acquire("m")

    def broken() -> bool:
        raise OSError("socket gone")

    with pytest.raises(OSError):
        limiter.acquire("m", is_cancelled=broken, poll_seconds=0.01)
    assert limiter.queued_for("m") == 0
    held.release()
    assert limiter.in_flight_for("m") == 0


def test_blocking_waiter_is_admitted_on_release():
    limiter = Limiter(config(max_concurrency=1))
    held = limiter.acquire("m")
    waiter = Acquirer(limiter, "m", is_cancelled=lambda: False, poll_seconds=0.01)
    waiter.start()
    assert wait_until(lambda: limiter.queued_for("m") == 1)
    held.release()
    waiter.join(5)
    assert waiter.error is None and waiter.slot is not None
    assert waiter.slot.queue_wait_seconds > 0
    assert waiter.slot.release() is True


# --- release -------------------------------------------------------------------------------------


def test_double_release_returns_false_and_counts_once():
    clock = FakeClock()
    observer = RecordingObserver()
    limiter = Limiter(config(max_concurrency=2), clock=clock, observer=observer)
    slot = limiter.acquire("m")
    other = limiter.acquire("m")
    clock.advance(3)

    assert slot.release() is True
    assert slot.released
    assert slot.release() is False
    with slot:
        pass  # the context manager's release is another no-op
    assert limiter.in_flight_for("m") == 1
    totals = limiter.snapshot()["totals"]
    assert (totals["in_flight"], totals["completed"]) == (1, 1)
    assert [c for c in observer.calls if c[0] == "release"] == [("release", "m:latest", 3.0)]
    other.release()
    assert limiter.snapshot()["totals"]["in_flight"] == 0


def test_slot_knows_model_times_and_limits():
    clock = FakeClock()
    limiter = Limiter(
        config('[[models]]\nmatch = "m"\nfirst_byte_timeout_seconds = 42', max_concurrency=1),
        clock=clock,
    )
    first = limiter.acquire("m")
    ticket = limiter.submit("m")
    clock.advance(2.5)
    first.release()
    slot = ticket.slot
    assert slot.model == "m:latest"
    assert slot.admitted_at == clock.now
    assert slot.queue_wait_seconds == 2.5
    assert slot.limits.first_byte_timeout_seconds == 42


# --- global cap and fairness ---------------------------------------------------------------------

GLOBAL_FAIRNESS = """
[global]
max_concurrency = 2
[[models]]
match = "a"
max_concurrency = 1
[[models]]
match = "b"
max_concurrency = 2
[[models]]
match = "c"
max_concurrency = 1
"""


def test_global_cap_goes_to_the_oldest_eligible_waiter():
    limiter = make(GLOBAL_FAIRNESS)
    a1, b1 = limiter.submit("a"), limiter.submit("b")
    assert admitted([a1, b1]) == [True, True]

    # Arrival order: a2, a3, b2, c1, b3. The global cap (2) is full.
    a2, a3, b2, c1, b3 = (limiter.submit(m) for m in ("a", "a", "b", "c", "b"))
    assert admitted([a2, a3, b2, c1, b3]) == [False] * 5

    # A global slot frees and model a has room again: a2 is the oldest of all.
    a1.slot.release()
    assert admitted([a2, a3, b2, c1, b3]) == [True, False, False, False, False]

    # Another frees. a3 is older but a is saturated: it must not block b2, the oldest eligible.
    b1.slot.release()
    assert admitted([a3, b2, c1, b3]) == [False, True, False, False]

    # Next: b has room (1 of 2) and c has room; c1 arrived before b3.
    b2.slot.release()
    assert admitted([a3, c1, b3]) == [False, True, False]

    # a2 frees a and a global slot: a3 (oldest overall) now qualifies and wins over b3.
    a2.slot.release()
    assert admitted([a3, b3]) == [True, False]

    snapshot = limiter.snapshot()
    assert snapshot["global"] == {"max_concurrency": 2, "in_flight": 2, "queued": 1}
    c1.slot.release()
    assert b3.slot is not None


def test_saturated_model_never_blocks_a_model_with_room():
    limiter = make("[global]\nmax_concurrency = 3", max_concurrency=1)
    a = limiter.submit("a")
    waiting_a = [limiter.submit("a") for _ in range(5)]
    b = limiter.submit("b")  # global has room and b's own queue is empty
    assert a.slot is not None and b.slot is not None
    assert admitted(waiting_a) == [False] * 5


def test_without_global_cap_models_are_independent():
    limiter = make(max_concurrency=1)
    slots = [limiter.acquire(f"model-{i}") for i in range(20)]
    assert limiter.snapshot()["global"]["in_flight"] == 20
    assert all(slot.release() for slot in slots)


# --- pause / resume ------------------------------------------------------------------------------


def test_pause_queues_new_requests_and_resume_admits_them():
    limiter = make(max_concurrency=2)
    running = limiter.submit("m")
    limiter.pause("m")
    assert limiter.is_paused("m")
    queued = [limiter.submit("m"), limiter.submit("m")]
    assert admitted(queued) == [False, False]

    # A running request finishes while paused: nothing is admitted.
    running.slot.release()
    assert admitted(queued) == [False, False]
    other = limiter.submit("other")  # other models are untouched
    assert other.slot is not None

    assert limiter.resume("m") is True
    assert admitted(queued) == [True, True]
    assert not limiter.is_paused("m")
    assert limiter.resume("m") is False


def test_pauses_nest_and_pause_of_an_unseen_model_applies():
    limiter = make()
    limiter.pause("fresh")
    limiter.pause("fresh")
    ticket = limiter.submit("fresh")
    assert limiter.resume("fresh") is False  # still paused once
    assert ticket.slot is None
    assert limiter.resume("fresh") is True
    assert ticket.slot is not None
    assert limiter.resume("never-seen") is False


def test_paused_model_still_bounds_and_times_out_its_queue():
    clock = FakeClock()
    limiter = Limiter(config(max_queue=1, max_wait_seconds=5), clock=clock)
    with limiter.paused("m"):
        waiter = limiter.submit("m")
        with pytest.raises(QueueFull):
            limiter.submit("m")
        clock.advance(5)
        limiter.expire_waiters()
    assert waiter.rejection.reason == "queue_timeout"
    assert limiter.in_flight_for("m") == 0


# --- live config updates -------------------------------------------------------------------------


def test_lowered_limit_lets_running_finish_and_admits_below_it():
    limiter = make(max_concurrency=3)
    running = [limiter.submit("m") for _ in range(3)]
    waiting = [limiter.submit("m") for _ in range(2)]

    limiter.update_config(config(max_concurrency=1))
    assert limiter.in_flight_for("m") == 3
    assert limiter.limits_for("m").max_concurrency == 1

    running[0].slot.release()
    running[1].slot.release()
    assert admitted(waiting) == [False, False]  # in_flight 1 is not below the new limit 1
    running[2].slot.release()
    assert admitted(waiting) == [True, False]
    assert limiter.in_flight_for("m") == 1


def test_raised_limit_admits_waiters_at_once_in_order():
    limiter = make(max_concurrency=1)
    running = limiter.submit("m")
    waiting = [limiter.submit("m") for _ in range(3)]
    limiter.update_config(config(max_concurrency=3))
    assert admitted(waiting) == [True, True, False]
    running.slot.release()
    assert admitted(waiting) == [True, True, True]


def test_raised_global_cap_admits_waiters():
    limiter = make("[global]\nmax_concurrency = 1", max_concurrency=4)
    limiter.submit("a")
    waiting = [limiter.submit("b"), limiter.submit("a")]
    assert admitted(waiting) == [False, False]
    limiter.update_config(config("[global]\nmax_concurrency = 0", max_concurrency=4))
    assert admitted(waiting) == [True, True]


def test_lowered_max_queue_keeps_waiters_and_refuses_until_drained():
    limiter = make(max_concurrency=1, max_queue=5)
    running = limiter.submit("m")
    waiting = [limiter.submit("m") for _ in range(4)]
    limiter.update_config(config(max_concurrency=1, max_queue=2))
    assert limiter.queued_for("m") == 4
    with pytest.raises(QueueFull):
        limiter.submit("m")

    slot = running.slot
    for ticket in waiting[:2]:
        slot.release()
        slot = ticket.slot
    assert limiter.queued_for("m") == 2
    with pytest.raises(QueueFull):
        limiter.submit("m")
    slot.release()
    assert limiter.queued_for("m") == 1
    assert limiter.submit("m").slot is None  # 1 < 2: accepted into the queue
    assert admitted(waiting) == [True, True, True, False]


def test_update_config_changes_which_rule_a_model_follows():
    limiter = make(max_concurrency=1)
    limiter.submit("embed")
    assert limiter.snapshot()["models"][0]["rule"] is None
    limiter.update_config(config('[[models]]\nmatch = "emb*"\nmax_concurrency = 8'))
    view = limiter.snapshot()["models"][0]
    assert view["rule"] == "emb*"
    assert view["limits"]["max_concurrency"] == 8


def test_shortened_max_wait_applies_to_blocked_waiters():
    limiter = Limiter(config(max_concurrency=1, max_wait_seconds=60))
    limiter.acquire("m")
    waiter = Acquirer(limiter, "m")  # no is_cancelled: sleeps until its deadline or a wake-up
    waiter.start()
    assert wait_until(lambda: limiter.queued_for("m") == 1)
    limiter.update_config(config(max_concurrency=1, max_wait_seconds=0.01))
    waiter.join(5)
    assert isinstance(waiter.error, QueueTimeout)


def test_waiter_woken_by_an_update_goes_back_to_sleep():
    calls = 0

    def counting_clock() -> float:
        nonlocal calls
        calls += 1
        return time.monotonic()

    limiter = Limiter(config(max_concurrency=1, max_wait_seconds=60), clock=counting_clock)
    held = limiter.acquire("m")
    waiter = Acquirer(limiter, "m", is_cancelled=lambda: False, poll_seconds=0.05)
    waiter.start()
    assert wait_until(lambda: limiter.queued_for("m") == 1)
    limiter.update_config(config(max_concurrency=1, max_wait_seconds=60))
    before = calls
    time.sleep(0.3)
    # About one clock read per 50 ms poll; a spinning waiter would read it thousands of times.
    assert calls - before < 30
    held.release()
    waiter.join(5)
    assert waiter.slot is not None


def test_rejected_update_leaves_the_limiter_unchanged():
    def strict(name: str) -> str:
        if "!" in name:
            raise ValueError("bad character")
        return simple_normalize(name)

    limiter = Limiter(config(max_concurrency=2), normalize=strict, clock=FakeClock())
    with pytest.raises(LimitsConfigError, match=r"models\[0\]\.match"):
        limiter.update_config(config('[[models]]\nmatch = "bad!"', max_concurrency=9))
    assert limiter.limits_for("m").max_concurrency == 2
    assert limiter.config.defaults.max_concurrency == 2


# --- retry-after, observer, snapshot, bounds -----------------------------------------------------


def test_retry_after_estimates_from_observed_service_time():
    clock = FakeClock()
    limiter = Limiter(config(max_concurrency=2, max_queue=10), clock=clock)
    assert limiter.retry_after_seconds("m") == 1  # nothing observed, not even seen

    slot = limiter.acquire("m")
    assert limiter.retry_after_seconds("m") == 1  # nothing released yet
    clock.advance(10)
    slot.release()  # service EWMA = 10 s

    limiter.submit("m")
    limiter.submit("m")
    for _ in range(3):
        limiter.submit("m")
    # ceil(10 * (3 queued + 1) / 2) = 20
    assert limiter.retry_after_seconds("m") == 20
    for _ in range(7):
        limiter.submit("m")
    with pytest.raises(QueueFull) as info:
        limiter.submit("m")
    # ceil(10 * 11 / 2) = 55; one more waiter would pass the 60 s clamp
    assert info.value.rejection.retry_after_seconds == 55


def test_retry_after_is_clamped_to_one_to_sixty():
    clock = FakeClock()
    limiter = Limiter(config(max_concurrency=1), clock=clock)
    quick = limiter.acquire("fast")
    clock.advance(0.001)
    quick.release()
    assert limiter.retry_after_seconds("fast") == 1

    slow = limiter.acquire("slow")
    clock.advance(500)
    slow.release()
    assert limiter.retry_after_seconds("slow") == RETRY_AFTER_MAX_SECONDS


def test_service_time_is_an_ewma():
    clock = FakeClock()
    limiter = Limiter(config(max_concurrency=1), clock=clock)
    for seconds in (10, 20):
        slot = limiter.acquire("m")
        clock.advance(seconds)
        slot.release()
    view = limiter.snapshot()["models"][0]
    assert view["service_seconds_ewma"] == pytest.approx(12.0)  # 10 + 0.2 * (20 - 10)


def test_observer_sees_admit_reject_release_and_its_errors_are_contained():
    clock = FakeClock()

    class Flaky(RecordingObserver):
        def on_admit(self, model: str, wait_s: float) -> None:
            super().on_admit(model, wait_s)
            raise RuntimeError("metrics broke")

    observer = Flaky()
    limiter = Limiter(config(max_concurrency=1, max_queue=1), clock=clock, observer=observer)
    first = limiter.acquire("m")
    queued = limiter.submit("m")
    with pytest.raises(QueueFull):
        limiter.submit("m")
    clock.advance(2)
    first.release()
    assert queued.slot is not None
    assert observer.calls == [
        ("admit", "m:latest", 0.0),
        ("reject", "m:latest", "queue_full"),
        ("release", "m:latest", 2.0),
        ("admit", "m:latest", 2.0),
    ]


def test_observer_may_implement_only_some_hooks():
    class OnlyReleases:
        def __init__(self) -> None:
            self.released: list[str] = []

        def on_release(self, model: str, service_s: float) -> None:
            self.released.append(model)

    observer = OnlyReleases()
    limiter = Limiter(config(), observer=observer)  # type: ignore[arg-type]
    limiter.acquire("m").release()
    assert observer.released == ["m:latest"]


def test_snapshot_shape_is_stable_and_json_ready():
    clock = FakeClock()
    limiter = Limiter(
        config(
            '[global]\nmax_concurrency = 8\n[[models]]\nmatch = "qwen3:14b"\nmax_concurrency = 2'
            '\n[[models]]\nmatch = "nomic*"\nmax_queue = 9',
            max_concurrency=1,
        ),
        clock=clock,
    )
    slot = limiter.acquire("llama3")
    limiter.submit("llama3")
    clock.advance(1)
    slot.release()
    limiter.pause("nomic-embed")

    snapshot = json.loads(json.dumps(limiter.snapshot()))
    assert set(snapshot) == {"config", "global", "totals", "models"}
    assert snapshot["config"]["source"] == "test.toml"
    assert snapshot["config"]["global"] == {"max_concurrency": 8}
    assert [r["match"] for r in snapshot["config"]["models"]] == ["qwen3:14b", "nomic*"]
    assert snapshot["totals"] == {
        "in_flight": 1,
        "queued": 0,
        "coalesced_waiting": 0,
        "admitted": 2,
        "completed": 1,
        "rejected": {"queue_full": 0, "queue_timeout": 0, "cancelled": 0, "shed": 0},
    }

    by_model = {view["model"]: view for view in snapshot["models"]}
    # Seen models plus exact-configured ones, sorted by name; globs appear only as rules.
    assert list(by_model) == ["llama3:latest", "nomic-embed:latest", "qwen3:14b"]
    llama = by_model["llama3:latest"]
    assert set(llama) == {
        "model", "rule", "limits", "paused", "in_flight", "queued", "coalesced_waiting",
        "queued_by_priority", "callers_queued", "callers_in_flight", "admitted", "completed",
        "rejected", "wait_seconds", "service_seconds_ewma", "retry_after_seconds",
    }  # fmt: skip
    assert llama["limits"] == ModelLimits(max_concurrency=1).to_dict()
    assert (llama["in_flight"], llama["admitted"], llama["completed"]) == (1, 2, 1)
    assert llama["queued_by_priority"] == {"interactive": 0, "standard": 0, "batch": 0}
    assert (llama["callers_queued"], llama["callers_in_flight"]) == ({}, {"anonymous": 1})
    assert llama["wait_seconds"]["count"] == 2 and llama["wait_seconds"]["max"] == 1.0
    assert set(llama["wait_seconds"]) == {"count", "sum", "max", "p50", "p95"}
    assert by_model["nomic-embed:latest"]["paused"] is True
    assert by_model["nomic-embed:latest"]["limits"]["max_queue"] == 9
    assert by_model["nomic-embed:latest"]["rule"] == "nomic*"
    qwen = by_model["qwen3:14b"]
    assert (qwen["rule"], qwen["limits"]["max_concurrency"], qwen["in_flight"]) == (
        "qwen3:14b",
        2,
        0,
    )
    assert qwen["wait_seconds"]["p50"] is None
    assert "qwen3:14b" not in limiter.tracked_models()  # shown, not tracked


def test_wait_percentiles_come_from_the_histogram():
    clock = FakeClock()
    limiter = Limiter(config(max_concurrency=1, max_queue=100), clock=clock)
    slot = limiter.acquire("m")  # wait 0
    tickets = [limiter.submit("m") for _ in range(19)]
    for _ in tickets:
        clock.advance(3)
        slot.release()
        slot = next(t.slot for t in tickets if t.slot and not t.slot.released)
    waits = limiter.snapshot()["models"][0]["wait_seconds"]
    assert waits["count"] == 20
    assert waits["max"] == 57.0
    assert waits["sum"] == pytest.approx(sum(3 * i for i in range(20)))
    # True p50 is 28.5, p95 about 55: estimates land in the right buckets.
    assert 10 <= waits["p50"] <= 30
    assert 30 <= waits["p95"] <= 57


def test_model_table_is_bounded_and_keeps_busy_and_configured_models():
    limiter = Limiter(
        config('[[models]]\nmatch = "kept"\nmax_concurrency = 2'),
        clock=FakeClock(),
        max_tracked_models=3,
    )
    limiter.acquire("kept").release()
    busy = limiter.acquire("busy")
    for i in range(10):
        limiter.acquire(f"passing-{i}").release()
    tracked = limiter.tracked_models()
    assert len(tracked) == 3
    assert {"kept:latest", "busy:latest", "passing-9:latest"} == set(tracked)
    busy.release()
    assert limiter.snapshot()["totals"]["completed"] == 12


def test_table_may_exceed_the_cap_only_by_busy_models():
    limiter = Limiter(config(), clock=FakeClock(), max_tracked_models=2)
    slots = [limiter.acquire(f"m{i}") for i in range(4)]
    assert len(limiter.tracked_models()) == 4  # all busy: none can be dropped
    for slot in slots:
        slot.release()
    limiter.acquire("new").release()
    assert len(limiter.tracked_models()) == 4  # one idle model made room for "new"


def test_invalid_arguments():
    with pytest.raises(ValueError):
        Limiter(max_tracked_models=0)
    with pytest.raises(ValueError):
        Limiter().acquire("m", poll_seconds=0)


# --- many threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("global_cap", [0, 4])
def test_many_threads_never_exceed_limits_and_counters_return_to_zero(global_cap):
    limits = {"one": 1, "two": 2, "four": 4}
    text = f"[global]\nmax_concurrency = {global_cap}\n" + "".join(
        f'[[models]]\nmatch = "{name}"\nmax_concurrency = {n}\n' for name, n in limits.items()
    )
    limiter = Limiter(config(text, max_queue=200, max_wait_seconds=60))
    lock = threading.Lock()
    running = dict.fromkeys(limits, 0)
    peak = dict.fromkeys(limits, 0)
    peak_total = 0
    errors: list[BaseException] = []
    start = threading.Barrier(200)

    def worker(index: int) -> None:
        nonlocal peak_total
        model = list(limits)[index % 3]
        try:
            start.wait(10)
            with limiter.acquire(model, is_cancelled=lambda: False, poll_seconds=0.05):
                with lock:
                    running[model] += 1
                    peak[model] = max(peak[model], running[model])
                    peak_total = max(peak_total, sum(running.values()))
                time.sleep(random.uniform(0, 0.002))
                with lock:
                    running[model] -= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    assert all(peak[m] <= limits[m] for m in limits), peak
    if global_cap:
        assert peak_total <= global_cap
    snapshot = limiter.snapshot()
    assert snapshot["totals"]["admitted"] == snapshot["totals"]["completed"] == 200
    assert snapshot["global"]["in_flight"] == snapshot["global"]["queued"] == 0
    for view in snapshot["models"]:
        assert (view["in_flight"], view["queued"]) == (0, 0)
        assert view["admitted"] == view["completed"]


# --- requests waiting for an identical request's answer (issue 29)


def test_followers_take_queue_places_and_time_out_like_waiters():
    from management_api.proxy.limiter import QueueTimeout

    clock = FakeClock()
    limiter = Limiter(config(max_concurrency=1, max_queue=2, max_wait_seconds=5), clock=clock)
    slot = limiter.acquire("m")
    place = limiter.follow("m")
    limiter.submit("m")  # a queued one: together with the follower the queue is full
    with pytest.raises(QueueFull):
        limiter.follow("m")
    with pytest.raises(QueueFull):
        limiter.submit("m")
    assert limiter.snapshot()["totals"]["coalesced_waiting"] == 1
    assert place.deadline == clock() + 5
    clock.advance(5)
    timeout = place.timed_out()
    assert isinstance(timeout, QueueTimeout) and timeout.rejection.waited_seconds == 5
    place.release()  # only the first give-back counts
    totals = limiter.snapshot()["totals"]
    assert totals["coalesced_waiting"] == 0
    assert totals["rejected"] == {"queue_full": 2, "queue_timeout": 1, "cancelled": 0, "shed": 0}
    limiter.follow("m").release()  # the place is free again
    slot.release()


def test_followers_count_against_what_the_worker_holds():
    limiter = Limiter(config(max_concurrency=1, max_queue=4), worker_threads=8)  # holds 6
    slot = limiter.acquire("a")
    places = [limiter.follow("a") for _ in range(4)]
    other = limiter.acquire("b")
    with pytest.raises(QueueFull):
        limiter.follow("c")  # room of its own, but the worker holds 6 already
    places[0].release()
    limiter.follow("c").release()
    slot.release()
    other.release()
