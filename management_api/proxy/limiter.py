"""Admission control for inference requests: per-model slots, a global cap, bounded FIFO queues.

Pure like a scheduler should be: no Flask, no sockets, no threads of its own, an injected clock,
one lock. The proxy calls ``acquire`` from its request thread and releases the returned ``Slot``
exactly once when the response is finished. ``submit`` is the same admission without blocking,
which is what the unit tests drive.

Exceptions::

    AdmissionError            .rejection: Rejection (model, reason, limit, in_flight, queued, ...)
    ├── AdmissionRejected     answer 429 with Retry-After
    │   ├── QueueFull         the model's queue held max_queue waiters on arrival
    │   ├── QueueTimeout      waited max_wait_seconds without a slot
    │   └── Shed              a higher class arrived at a full queue and took this place
    └── AdmissionCancelled    is_cancelled() said the client is gone while queued
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

from management_api.proxy.limits_config import (
    LimitsConfig,
    LimitsResolver,
    ModelLimits,
    ModelRule,
    Normalizer,
    check_capacity,
    request_capacity,
    simple_normalize,
)
from management_api.proxy.scheduler import Hold, ModelScheduler
from management_api.proxy.wait_queue import INTERACTIVE, RANK, STANDARD, WaitQueue

log = logging.getLogger(__name__)

QUEUE_FULL = "queue_full"
QUEUE_TIMEOUT = "queue_timeout"
CANCELLED = "cancelled"
SHED = "shed"
REJECT_REASONS: tuple[str, ...] = (QUEUE_FULL, QUEUE_TIMEOUT, CANCELLED, SHED)
ANONYMOUS = "anonymous"
# How often a held waiter re-checks its hold (it may end by time, not only by a release).
SCHEDULER_RECHECK_SECONDS = 0.25

# OpenAI/Anthropic SDKs give up retrying when Retry-After exceeds 60 s.
RETRY_AFTER_MAX_SECONDS = 60
SERVICE_EWMA_ALPHA = 0.2
DEFAULT_MAX_TRACKED_MODELS = 1024
# Upper bounds (seconds) of the queue-wait histogram; the last bucket is open-ended.
WAIT_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


@dataclass(frozen=True)
class Rejection:
    """What a refused request is told: enough for a typed 429 body and its Retry-After."""

    model: str
    reason: str
    limit: int
    in_flight: int
    queued: int
    retry_after_seconds: int
    waited_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AdmissionError(Exception):
    """Base of every admission outcome other than a slot."""

    reason: ClassVar[str] = ""

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection
        super().__init__(
            f"model {rejection.model!r} {rejection.reason}: "
            f"{rejection.in_flight}/{rejection.limit} running, {rejection.queued} queued"
        )


class AdmissionRejected(AdmissionError):
    """The limiter refused the request: the caller answers 429 with Retry-After."""


class QueueFull(AdmissionRejected):
    reason = QUEUE_FULL


class Shed(AdmissionRejected):
    reason = SHED


class QueueTimeout(AdmissionRejected):
    reason = QUEUE_TIMEOUT


class AdmissionCancelled(AdmissionError):
    """The caller went away while queued; there is nobody left to answer."""

    reason = CANCELLED


_ERROR_FOR_REASON: dict[str, type[AdmissionError]] = {
    cls.reason: cls for cls in (QueueFull, QueueTimeout, AdmissionCancelled, Shed)
}


class LimiterObserver(Protocol):
    """Metrics hook (e.g. Prometheus). Called outside the lock; a missing method is skipped."""

    def on_admit(self, model: str, wait_s: float) -> None: ...

    def on_reject(self, model: str, reason: str) -> None: ...

    def on_release(self, model: str, service_s: float) -> None: ...

    def on_held(self, model: str, held_s: float) -> None: ...

    def on_swap(self, model: str, evicted: tuple[str, ...]) -> None: ...


class WaitStats:
    """Queue waits of admitted requests: count, sum, max and a fixed-bucket histogram."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.buckets = [0] * (len(WAIT_BUCKETS) + 1)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)
        self.buckets[bisect.bisect_left(WAIT_BUCKETS, seconds)] += 1

    def quantile(self, q: float) -> float | None:
        """Estimate by linear interpolation inside the bucket, capped at the observed max."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for index, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                bound = WAIT_BUCKETS[index] if index < len(WAIT_BUCKETS) else self.max
                upper = min(bound, self.max)
                lower = min(WAIT_BUCKETS[index - 1] if index else 0.0, upper)
                return lower + (upper - lower) * max(rank - seen, 0.0) / n
            seen += n
        return self.max

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.total,
            "max": self.max,
            "p50": self.quantile(0.5),
            "p95": self.quantile(0.95),
        }


class _ModelState:
    __slots__ = (
        "admitted",
        "completed",
        "followers",
        "held_since",
        "hold",
        "hold_ended",
        "in_flight",
        "key",
        "limits",
        "pauses",
        "queue",
        "rejected",
        "rule",
        "running",
        "service_ewma",
        "waits",
    )

    def __init__(self, key: str, rule: ModelRule | None, limits: ModelLimits) -> None:
        self.key = key
        self.rule = rule
        self.limits = limits
        self.in_flight = 0
        self.queue = WaitQueue()
        self.running: dict[str, int] = {}  # caller -> requests holding a slot
        self.followers = 0  # requests waiting for an identical one's answer (the cache)
        self.pauses = 0
        self.admitted = 0
        self.completed = 0
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.waits = WaitStats()
        self.service_ewma: float | None = None
        # Scheduler holds (affinity): why, since when, and when the last one ended.
        self.hold: Hold | None = None
        self.held_since: float | None = None
        self.hold_ended: float | None = None

    @property
    def idle(self) -> bool:
        return not (self.in_flight or self.queue or self.pauses or self.followers)


class Slot:
    """A granted place to run one request. ``release()`` frees it; only the first call counts."""

    __slots__ = (
        "_limiter",
        "_released",
        "_state",
        "admitted_at",
        "caller",
        "charge_seconds",
        "held_seconds",
        "limits",
        "priority",
        "queue_wait_seconds",
        "swap",
        "weight",
    )

    def __init__(
        self,
        limiter: Limiter,
        state: _ModelState,
        admitted_at: float,
        queue_wait_seconds: float,
        held_seconds: float = 0.0,
        swap: bool = False,
        *,
        priority: str = STANDARD,
        caller: str = ANONYMOUS,
        weight: float = 1.0,
    ) -> None:
        self._limiter = limiter
        self._state = state
        self._released = False
        # Snapshot at admission: the proxy's timeouts for this request don't move under it.
        self.limits = state.limits
        self.admitted_at = admitted_at
        self.queue_wait_seconds = queue_wait_seconds
        # The part of the queue wait the scheduler held it back, and whether its model swapped in.
        self.held_seconds = held_seconds
        self.swap = swap
        self.priority = priority
        self.caller = caller
        self.weight = weight
        # What to charge the caller's fair share at release: the GPU time Ollama reported;
        # None charges the time the slot was held.
        self.charge_seconds: float | None = None

    @property
    def model(self) -> str:
        return self._state.key

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> bool:
        """Free the slot and admit the next waiter; True the first time, False afterwards."""
        return self._limiter._release(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Slot {self.model} {state}>"


class Ticket:
    """One request's passage through admission: queued, then a ``slot`` or a ``rejection``."""

    __slots__ = (
        "_event", "_limiter", "_state", "arrived_at", "caller", "priority", "rejection", "seq",
        "slot", "weight",
    )  # fmt: skip

    def __init__(
        self,
        limiter: Limiter,
        state: _ModelState,
        seq: int,
        arrived_at: float,
        priority: str = STANDARD,
        caller: str = ANONYMOUS,
        weight: float = 1.0,
    ) -> None:
        self._limiter = limiter
        self._state = state
        self._event = threading.Event()
        self.seq = seq
        self.arrived_at = arrived_at
        self.priority = priority
        self.caller = caller
        self.weight = weight
        self.slot: Slot | None = None
        self.rejection: Rejection | None = None

    @property
    def model(self) -> str:
        return self._state.key

    @property
    def done(self) -> bool:
        return self.slot is not None or self.rejection is not None

    def cancel(self) -> bool:
        """Leave the queue (counted as ``cancelled``); False if already admitted or rejected."""
        return self._limiter._cancel(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until something happened to this ticket; True if woken before the timeout."""
        return self._event.wait(timeout)

    def position(self) -> int | None:
        """How many waiters of its model are ahead of it now; None once it left the queue."""
        return self._limiter._position(self)


class FollowerPlace:
    """A place in a model's queue held by a request that waits for an identical request's answer
    (the response cache's coalescing) instead of for a slot.

    It counts against the model's ``max_queue`` and the worker's capacity like a queued request
    and its wait is bounded by ``max_wait_seconds``, but it is never admitted: the answer comes
    from the other request. ``release()`` gives the place back; only the first call counts.
    """

    def __init__(self, limiter: Limiter, state: _ModelState, arrived_at: float) -> None:
        self._limiter = limiter
        self._state = state
        self.arrived_at = arrived_at
        self._released = False

    @property
    def deadline(self) -> float:
        """When the wait ends with ``queue_timeout`` (the model's current max_wait_seconds)."""
        return self.arrived_at + self._state.limits.max_wait_seconds

    def timed_out(self) -> QueueTimeout:
        """Give the place back as a ``queue_timeout`` rejection (counted), to be raised."""
        return self._limiter._follower_timed_out(self)

    def release(self) -> None:
        self._limiter._follower_left(self)


class Limiter:
    """Per-model concurrency limits with bounded FIFO queues and an optional global cap."""

    def __init__(
        self,
        config: LimitsConfig | None = None,
        *,
        normalize: Normalizer = simple_normalize,
        clock: Callable[[], float] = time.monotonic,
        observer: LimiterObserver | None = None,
        max_tracked_models: int = DEFAULT_MAX_TRACKED_MODELS,
        scheduler: ModelScheduler | None = None,
        worker_threads: int | None = None,
    ) -> None:
        if max_tracked_models < 1:
            raise ValueError("max_tracked_models must be >= 1")
        self._normalize = normalize
        self._clock = clock
        self._observer = observer
        self._max_models = max_tracked_models
        # Requests held at once (running + queued, all models): each holds a worker thread, so
        # past this an arrival is refused like a full queue instead of waiting for a thread.
        self._worker_threads = worker_threads
        self._capacity = request_capacity(worker_threads) if worker_threads else None
        if config is not None and worker_threads:
            check_capacity(config, worker_threads)
        self._resolver = LimitsResolver(config if config is not None else LimitsConfig(), normalize)
        self._scheduler = scheduler if scheduler is not None else ModelScheduler(clock=clock)
        self._scheduler.configure(self._resolver.config.scheduler)
        self._lock = threading.Lock()
        # Least recently used first, so eviction finds the stalest idle model quickly.
        self._states: OrderedDict[str, _ModelState] = OrderedDict()
        self._waiting: set[_ModelState] = set()  # states whose queue is not empty
        self._seq = itertools.count()
        self._global_in_flight = 0
        self._queued = 0
        self._followers = 0
        self._admitted = 0
        self._completed = 0
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)

    @property
    def config(self) -> LimitsConfig:
        return self._resolver.config

    def configured_models(self) -> tuple[str, ...]:
        """Normalised names the limits file names exactly (globs are not names)."""
        return self._resolver.exact_models

    @property
    def scheduler(self) -> ModelScheduler:
        return self._scheduler

    # --- admission -------------------------------------------------------------------------------

    def acquire(
        self,
        model_key: str,
        *,
        is_cancelled: Callable[[], bool] | None = None,
        poll_seconds: float = 0.25,
        watch_queued: Callable[[Callable[[], bool]], Callable[[], None]] | None = None,
        priority: str = STANDARD,
        caller: str = ANONYMOUS,
        weight: float = 1.0,
        on_queued: Callable[[Ticket], None] | None = None,
    ) -> Slot:
        """Block until the request may run and return its slot.

        Admission cases:

        1. The model is not paused, nobody is queued for it, it runs fewer than max_concurrency
           requests and the global cap (if any) has room: admitted at once, queue wait 0.
        2. Otherwise, if the model's queue already holds max_queue waiters: ``QueueFull``
           (max_queue 0 means never wait). A lowered max_queue keeps existing waiters and
           refuses arrivals until the queue drains below it.
        3. Otherwise the request joins the tail of the model's FIFO queue. A paused model queues
           every arrival (cases 2 and 5 still apply) and admits them on ``resume``.
        4. Whenever room appears (a release, a resume, a raised limit), the oldest waiter by
           arrival among the models that are not paused and have per-model room is admitted,
           while the global cap has room. A saturated model never blocks another model, and
           within a model order is strictly FIFO.
        5. A waiter that has waited max_wait_seconds (of the current config) gets
           ``QueueTimeout`` and leaves the queue.
        6. ``is_cancelled`` is polled every ``poll_seconds`` while queued; True removes the
           waiter and raises ``AdmissionCancelled``. If a slot was granted in the same instant
           the slot is returned instead; the caller's next disconnect check releases it.
           ``watch_queued``, when given, is called once if the request has to queue, with a
           function that cancels the wait (as a True ``is_cancelled`` would, but at once, from
           any thread); it returns the function that stops its watch, called when the wait ends.
        7. A lowered max_concurrency never pre-empts: running requests finish, and new ones are
           admitted only while in_flight is below the new limit.

        Any other exception while waiting (including one from ``is_cancelled``) gives the place
        or slot back before it propagates, so nothing leaks.
        """
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be positive")
        ticket = self.submit(model_key, priority=priority, caller=caller, weight=weight)
        unwatch: Callable[[], None] | None = None
        try:
            if watch_queued is not None and not ticket.done:
                unwatch = watch_queued(ticket.cancel)
            if on_queued is not None and not ticket.done:
                on_queued(ticket)
            return self._await(ticket, is_cancelled, poll_seconds)
        except AdmissionError:
            raise
        except BaseException:
            if not ticket.cancel() and ticket.slot is not None:
                ticket.slot.release()
            raise
        finally:
            if unwatch is not None:
                unwatch()

    def submit(
        self,
        model_key: str,
        *,
        priority: str = STANDARD,
        caller: str = ANONYMOUS,
        weight: float = 1.0,
    ) -> Ticket:
        """Arrive without blocking (cases 1-3 of ``acquire``); raises ``QueueFull``."""
        key = self._normalize(model_key)
        events: list[tuple[str, str, Any]] = []
        self._scheduler.maybe_refresh()
        with self._lock:
            state = self._state_locked(key)
            now = self._clock()
            ticket = Ticket(self, state, next(self._seq), now, priority, caller, weight)
            admit = not state.queue and self._has_room_locked(state) and not self._full_locked()
            if admit and (priority == INTERACTIVE or self._may_run_locked(state, now)):
                self._admit_locked(ticket, now, events)
            elif (
                len(state.queue) + state.followers >= state.limits.max_queue or self._full_locked()
            ):
                sheds = state.queue and state.limits.queue_order != "fifo"
                victim = state.queue.shed_candidate(priority) if sheds else None
                if victim is None:
                    self._reject_locked(ticket, QUEUE_FULL, now, events)
                else:
                    # A lower class makes room: the newest of the lowest class leaves.
                    assert isinstance(victim, Ticket)
                    self._unqueue_locked(victim)
                    self._reject_locked(victim, SHED, now, events)
                    self._enqueue_locked(state, ticket)
            else:
                self._enqueue_locked(state, ticket)
            if not ticket.done and priority == INTERACTIVE and self._scheduler.active:
                # Queued behind a hold's own waiters: a hold does not keep a person waiting.
                self._dispatch_locked(events)
        self._notify(events)
        if ticket.rejection is not None:
            raise _ERROR_FOR_REASON[ticket.rejection.reason](ticket.rejection)
        return ticket

    def _enqueue_locked(self, state: _ModelState, ticket: Ticket) -> None:
        state.queue.append(ticket)
        self._waiting.add(state)
        self._queued += 1

    def _position(self, ticket: Ticket) -> int | None:
        with self._lock:
            if ticket.done:
                return None
            return ticket._state.queue.ahead_of(ticket)

    def follow(self, model_key: str) -> FollowerPlace:
        """Take a queue place to wait for an identical request's answer; raises ``QueueFull``
        when the model's queue (waiters and followers together) or the worker is full."""
        key = self._normalize(model_key)
        events: list[tuple[str, str, Any]] = []
        with self._lock:
            state = self._state_locked(key)
            now = self._clock()
            if len(state.queue) + state.followers >= state.limits.max_queue or self._full_locked():
                rejection = self._rejection_locked(state, QUEUE_FULL, 0.0, events)
            else:
                state.followers += 1
                self._followers += 1
                rejection = None
        self._notify(events)
        if rejection is not None:
            raise QueueFull(rejection)
        return FollowerPlace(self, state, now)

    def _follower_left(self, place: FollowerPlace) -> bool:
        with self._lock:
            if place._released:
                return False
            place._released = True
            place._state.followers -= 1
            self._followers -= 1
            return True

    def _follower_timed_out(self, place: FollowerPlace) -> QueueTimeout:
        events: list[tuple[str, str, Any]] = []
        self._follower_left(place)
        with self._lock:
            waited = max(0.0, self._clock() - place.arrived_at)
            rejection = self._rejection_locked(place._state, QUEUE_TIMEOUT, waited, events)
        self._notify(events)
        return QueueTimeout(rejection)

    def _full_locked(self) -> bool:
        held = self._global_in_flight + self._queued + self._followers
        return self._capacity is not None and held >= self._capacity

    def recheck(self) -> None:
        """Admit whoever the scheduler lets go now (a hold may end by time alone); blocked
        waiters do this themselves every ``SCHEDULER_RECHECK_SECONDS``."""
        events: list[tuple[str, str, Any]] = []
        with self._lock:
            self._dispatch_locked(events)
        self._notify(events)

    def expire_waiters(self) -> int:
        """Time out every waiter past its max wait now (case 5); returns how many."""
        events: list[tuple[str, str, Any]] = []
        with self._lock:
            now = self._clock()
            for state in list(self._waiting):
                while (oldest := state.queue.oldest()) is not None and (
                    now - oldest.arrived_at >= state.limits.max_wait_seconds
                ):
                    ticket = oldest
                    assert isinstance(ticket, Ticket)
                    self._unqueue_locked(ticket)
                    self._reject_locked(ticket, QUEUE_TIMEOUT, now, events)
        self._notify(events)
        return len(events)

    def _await(
        self, ticket: Ticket, is_cancelled: Callable[[], bool] | None, poll_seconds: float
    ) -> Slot:
        while True:
            events: list[tuple[str, str, Any]] = []
            remaining = 0.0
            with self._lock:
                held = self._scheduler.active and ticket._state.hold is not None
                if not ticket.done and held:
                    # A hold ends by time too (max_hold_seconds), not only by a release.
                    self._dispatch_locked(events)
                if not ticket.done:
                    now = self._clock()
                    remaining = ticket._state.limits.max_wait_seconds - (now - ticket.arrived_at)
                    if remaining <= 0:
                        self._unqueue_locked(ticket)
                        self._reject_locked(ticket, QUEUE_TIMEOUT, now, events)
                    else:
                        # Cleared under the lock: a setter holds it too, so no wake-up is lost.
                        ticket._event.clear()
            self._notify(events)
            if ticket.slot is not None:
                return ticket.slot
            if ticket.rejection is not None:
                raise _ERROR_FOR_REASON[ticket.rejection.reason](ticket.rejection)
            timeout = remaining if is_cancelled is None else min(remaining, poll_seconds)
            if self._scheduler.active and ticket._state.hold is not None:
                timeout = min(timeout, SCHEDULER_RECHECK_SECONDS)
            if ticket.wait(timeout):
                continue
            if is_cancelled is not None and is_cancelled() and ticket.cancel():
                raise AdmissionCancelled(ticket.rejection)  # type: ignore[arg-type]

    def _has_room_locked(self, state: _ModelState) -> bool:
        if state.pauses or state.in_flight >= state.limits.max_concurrency:
            return False
        cap = self._resolver.config.global_max_concurrency
        return cap == 0 or self._global_in_flight < cap

    def _work(self, key: str) -> tuple[int, int]:
        state = self._states.get(key)
        return (state.in_flight, len(state.queue)) if state else (0, 0)

    def _may_run_locked(self, state: _ModelState, now: float) -> bool:
        """The scheduler's word on admitting this model now (always yes under ``fifo``)."""
        if not self._scheduler.active:
            return True
        first = state.queue.oldest()
        oldest = first.arrived_at if first is not None else now
        hold = self._scheduler.decide(state.key, oldest, now, self._work)
        if hold is None:
            if state.held_since is not None and state.hold_ended is None:
                state.hold_ended = now
            state.hold = None
            return True
        if state.held_since is None or state.hold_ended is not None:
            state.held_since, state.hold_ended = now, None
        state.hold = hold
        return False

    def _dispatch_locked(self, events: list[tuple[str, str, Any]]) -> None:
        """Case 4: hand free room to the first eligible waiters: per model the one its queue
        order names (wait_queue.py); across models aged waiters first, then the higher class,
        then the earlier arrival."""
        now = self._clock()
        cap = self._resolver.config.global_max_concurrency
        while self._waiting and (cap == 0 or self._global_in_flight < cap):
            best: Ticket | None = None
            best_key: tuple[int, int, int] | None = None
            for state in self._waiting:
                if state.pauses or state.in_flight >= state.limits.max_concurrency:
                    continue
                fifo = state.limits.queue_order == "fifo"
                chosen = state.queue.next(now, state.limits.aging_seconds, fifo)
                if chosen is None:
                    continue
                head, aged = chosen
                assert isinstance(head, Ticket)
                # A hold keeping another model loaded yields at once to an interactive waiter.
                held = self._scheduler.active and head.priority != INTERACTIVE
                if held and not self._may_run_locked(state, now):
                    continue
                rank = 0 if fifo else -RANK[head.priority]
                order = (0 if aged else 1, rank, head.seq)
                if best_key is None or order < best_key:
                    best, best_key = head, order
            if best is None:
                return
            self._unqueue_locked(best)
            self._admit_locked(best, now, events)

    def _admit_locked(self, ticket: Ticket, now: float, events: list[tuple[str, str, Any]]) -> None:
        state = ticket._state
        wait = max(0.0, now - ticket.arrived_at)
        held = 0.0
        if state.held_since is not None:
            end = now if state.hold_ended is None else state.hold_ended
            held = max(0.0, end - max(ticket.arrived_at, state.held_since))
            if not state.queue:
                state.held_since = state.hold_ended = None
        admitted = self._scheduler.on_admit(state.key, now, self._work)
        state.queue.dispatched(ticket)
        state.running[ticket.caller] = state.running.get(ticket.caller, 0) + 1
        state.in_flight += 1
        state.admitted += 1
        state.waits.observe(wait)
        self._global_in_flight += 1
        self._admitted += 1
        ticket.slot = Slot(self, state, now, wait, held, admitted.swap,
                           priority=ticket.priority, caller=ticket.caller,
                           weight=ticket.weight)  # fmt: skip
        ticket._event.set()
        events.append(("on_admit", state.key, wait))
        if held > 0:
            events.append(("on_held", state.key, held))
        if admitted.swap:
            events.append(("on_swap", state.key, admitted.evicted))

    def _reject_locked(
        self, ticket: Ticket, reason: str, now: float, events: list[tuple[str, str, Any]]
    ) -> None:
        waited = max(0.0, now - ticket.arrived_at)
        ticket.rejection = self._rejection_locked(ticket._state, reason, waited, events)
        ticket._event.set()

    def _rejection_locked(
        self, state: _ModelState, reason: str, waited: float, events: list[tuple[str, str, Any]]
    ) -> Rejection:
        state.rejected[reason] += 1
        self._rejected[reason] += 1
        events.append(("on_reject", state.key, reason))
        return Rejection(
            model=state.key,
            reason=reason,
            limit=state.limits.max_concurrency,
            in_flight=state.in_flight,
            queued=len(state.queue) + state.followers,
            retry_after_seconds=self._retry_after_locked(state),
            waited_seconds=waited,
        )

    def _unqueue_locked(self, ticket: Ticket) -> None:
        state = ticket._state
        state.queue.remove(ticket)
        self._queued -= 1
        if not state.queue:
            self._waiting.discard(state)

    def _cancel(self, ticket: Ticket) -> bool:
        events: list[tuple[str, str, Any]] = []
        with self._lock:
            if ticket.done:
                return False
            self._unqueue_locked(ticket)
            self._reject_locked(ticket, CANCELLED, self._clock(), events)
        self._notify(events)
        return True

    def _release(self, slot: Slot) -> bool:
        events: list[tuple[str, str, Any]] = []
        with self._lock:
            if slot._released:
                return False
            slot._released = True
            state = slot._state
            state.in_flight -= 1
            state.completed += 1
            self._global_in_flight -= 1
            self._completed += 1
            service = max(0.0, self._clock() - slot.admitted_at)
            left = state.running.get(slot.caller, 0) - 1
            if left > 0:
                state.running[slot.caller] = left
            else:
                state.running.pop(slot.caller, None)
            charge = slot.charge_seconds if slot.charge_seconds is not None else service
            state.queue.charge(slot.caller, charge, slot.weight)
            if slot.swap:
                self._scheduler.observe_swap(state.key, service - (state.service_ewma or 0.0))
            if state.service_ewma is None:
                state.service_ewma = service
            else:
                state.service_ewma += SERVICE_EWMA_ALPHA * (service - state.service_ewma)
            events.append(("on_release", state.key, service))
            self._dispatch_locked(events)
        self._notify(events)
        return True

    # --- control ---------------------------------------------------------------------------------

    def pause(self, model_key: str) -> None:
        """Stop admitting new requests for a model; running ones continue. Pauses nest."""
        key = self._normalize(model_key)
        with self._lock:
            self._state_locked(key).pauses += 1

    def resume(self, model_key: str) -> bool:
        """Undo one ``pause``; True when the model admits again (queued requests go first)."""
        key = self._normalize(model_key)
        events: list[tuple[str, str, Any]] = []
        with self._lock:
            state = self._states.get(key)
            if state is None or not state.pauses:
                return False
            state.pauses -= 1
            if state.pauses:
                return False
            self._dispatch_locked(events)
        self._notify(events)
        return True

    @contextlib.contextmanager
    def paused(self, *model_keys: str) -> Iterator[None]:
        """Pause the models for the duration of the block (cache clear)."""
        done: list[str] = []
        try:
            for key in model_keys:
                self.pause(key)
                done.append(key)
            yield
        finally:
            for key in done:
                self.resume(key)

    def update_config(self, config: LimitsConfig) -> None:
        """Apply a reloaded config live (cases 2 and 7); raises ``LimitsConfigError`` unchanged."""
        if self._worker_threads:
            check_capacity(config, self._worker_threads)  # may raise: nothing changed yet
        resolver = LimitsResolver(config, self._normalize)  # may raise: nothing changed yet
        events: list[tuple[str, str, Any]] = []
        with self._lock:
            self._resolver = resolver
            self._scheduler.configure(config.scheduler)
            for state in self._states.values():
                state.rule = resolver.rule_for(state.key)
                state.limits = state.rule.limits if state.rule else config.defaults
            # Waiters recompute their deadline from the new max_wait_seconds.
            for state in self._waiting:
                for ticket in state.queue:
                    ticket._event.set()
            self._dispatch_locked(events)
        self._notify(events)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _state_locked(self, key: str) -> _ModelState:
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        if len(self._states) >= self._max_models:
            self._evict_locked()
        rule = self._resolver.rule_for(key)
        limits = rule.limits if rule else self._resolver.config.defaults
        state = self._states[key] = _ModelState(key, rule, limits)
        return state

    def _evict_locked(self) -> None:
        """Drop the least recently used idle model, preferring ones no entry configures.

        If every tracked model is busy nothing is dropped: the table then exceeds the cap by at
        most the number of concurrent callers, which the server's thread pool bounds.
        """
        victim: _ModelState | None = None
        for state in self._states.values():
            if not state.idle:
                continue
            if state.rule is None:
                victim = state
                break
            if victim is None:
                victim = state
        if victim is not None:
            del self._states[victim.key]

    def _retry_after_locked(self, state: _ModelState) -> int:
        swap = self._swap_ahead_locked(state)
        if state.service_ewma is None:
            return min(RETRY_AFTER_MAX_SECONDS, max(1, math.ceil(swap)))
        estimate = math.ceil(
            state.service_ewma * (len(state.queue) + 1) / state.limits.max_concurrency + swap
        )
        return min(RETRY_AFTER_MAX_SECONDS, max(1, estimate))

    def _swap_ahead_locked(self, state: _ModelState) -> float:
        """Seconds a swap ahead adds: the rest of the hold plus the model's load (affinity)."""
        if not self._scheduler.active:
            return 0.0
        extra = self._scheduler.swap_estimate(state.key, self._work)
        first = state.queue.oldest()
        if state.hold is not None and first is not None:
            waited = self._clock() - first.arrived_at
            extra += max(0.0, self._scheduler.config.max_hold_seconds - waited)
        return extra

    def _notify(self, events: list[tuple[str, str, Any]]) -> None:
        observer = self._observer
        if observer is None:
            return
        for method_name, model, value in events:
            method = getattr(observer, method_name, None)
            if method is None:
                continue
            try:
                method(model, value)
            except Exception:
                # Metrics must never break admission.
                log.exception("limiter observer %s failed", method_name)

    # --- queries ---------------------------------------------------------------------------------

    def in_flight_for(self, model_key: str) -> int:
        key = self._normalize(model_key)
        with self._lock:
            state = self._states.get(key)
            return state.in_flight if state else 0

    def queued_for(self, model_key: str) -> int:
        key = self._normalize(model_key)
        with self._lock:
            state = self._states.get(key)
            return len(state.queue) if state else 0

    def is_paused(self, model_key: str) -> bool:
        key = self._normalize(model_key)
        with self._lock:
            state = self._states.get(key)
            return bool(state and state.pauses)

    def limits_for(self, model_key: str) -> ModelLimits:
        with self._lock:
            return self._resolver.limits_for(model_key)

    def retry_after_seconds(self, model_key: str) -> int:
        """ceil(service EWMA x (queued + 1) / limit), clamped to [1, 60]; 1 before any release."""
        key = self._normalize(model_key)
        with self._lock:
            state = self._states.get(key)
            return self._retry_after_locked(state) if state else 1

    def tracked_models(self) -> list[str]:
        with self._lock:
            return list(self._states)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view for ``GET /api/limits``: config, totals and every seen or named model."""
        with self._lock:
            resolver = self._resolver
            views = {key: self._model_view_locked(state) for key, state in self._states.items()}
            for key in resolver.exact_models:
                if key not in views:
                    # Named in the config but not seen yet: shown with zero counters, not tracked.
                    rule = resolver.rule_for(key)
                    limits = rule.limits if rule else resolver.config.defaults
                    views[key] = self._model_view_locked(_ModelState(key, rule, limits))
            return {
                "config": resolver.config.to_dict(),
                "global": {
                    "max_concurrency": resolver.config.global_max_concurrency,
                    "in_flight": self._global_in_flight,
                    "queued": self._queued,
                },
                "totals": {
                    "in_flight": self._global_in_flight,
                    "queued": self._queued,
                    # Requests waiting for an identical request's answer (the response cache):
                    # they hold queue places and threads like queued ones.
                    "coalesced_waiting": self._followers,
                    "admitted": self._admitted,
                    "completed": self._completed,
                    "rejected": dict(self._rejected),
                },
                "models": [views[key] for key in sorted(views)],
            }

    def snapshot_with_scheduler(self) -> dict[str, Any]:
        """``snapshot()`` plus the scheduler's view and, per model, whether it is held and why
        (what ``GET /api/limits`` shows)."""
        snapshot = self.snapshot()
        holds: dict[str, dict[str, Any]] = {}
        with self._lock:
            for key, state in self._states.items():
                if not state.queue or not self._scheduler.active:
                    continue
                # A model at its own limit is not asked, yet a drain holds it all the same.
                hold = self._scheduler.draining_hold(key, self._work) or state.hold
                if hold is not None:
                    holds[key] = hold.to_dict()
        snapshot["scheduler"] = self._scheduler.snapshot()
        for view in snapshot["models"]:
            view["held"] = view["model"] in holds
            view["held_reason"] = holds.get(view["model"])
        return snapshot

    def _model_view_locked(self, state: _ModelState) -> dict[str, Any]:
        return {
            "model": state.key,
            "rule": state.rule.match if state.rule else None,
            "limits": state.limits.to_dict(),
            "paused": bool(state.pauses),
            "in_flight": state.in_flight,
            "queued": len(state.queue),
            "queued_by_priority": state.queue.counts(),
            "callers_queued": state.queue.callers(),
            "callers_in_flight": dict(state.running),
            "coalesced_waiting": state.followers,
            "admitted": state.admitted,
            "completed": state.completed,
            "rejected": dict(state.rejected),
            "wait_seconds": state.waits.to_dict(),
            "service_seconds_ewma": state.service_ewma,
            "retry_after_seconds": self._retry_after_locked(state),
        }
