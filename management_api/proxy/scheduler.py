"""Admission order across models (limits file ``[scheduler]``): fewer model swaps, bounded holds.

Ollama serves requests that need a model load in arrival order, one at a time, and unloads a
model to make room (``reference/ollama-api.md`` §8.2). Interleaved traffic for two models that do
not fit together then pays a load for almost every request. The limiter asks this scheduler
before it admits a request of a model:

* ``fifo``: always yes; the per-model queues stay independent (today's behaviour).
* ``affinity``: yes when the model is loaded or fits beside the loaded models. When it would force
  an eviction, yes only once the models it would evict have no queued or running work. Otherwise
  the request is *held*, until its model's oldest waiter has waited ``max_hold_seconds``: then the
  models to evict are *drained* (they take no new requests), and when their running requests
  are done the held model is admitted, its whole queue up to its limit.

What is loaded is the scheduler's belief: ``/api/ps`` read at most every ``refresh_seconds`` (on a
short-lived thread, never under the limiter's lock, never once per request), kept fresh in
between by our own admissions (admitting a model loads it and evicts what Ollama would evict).
How many models fit: ``max_loaded_models`` when set; otherwise as Ollama judges it, at most
``OLLAMA_MAX_LOADED_MODELS`` (3 when unset) and only what the memory budget holds by the model
sizes (``/api/ps`` sizes when loaded, catalog sizes otherwise).

The limiter calls ``decide`` and ``on_admit`` while holding its own lock; the scheduler never
calls back into the limiter, and its own lock is innermost. No Flask, no sockets of its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from management_api.proxy.limits_config import AFFINITY, SchedulerConfig

log = logging.getLogger(__name__)

# Ollama's own default: 3 loaded models per GPU (reference/ollama-api.md §8.1).
OLLAMA_DEFAULT_MAX_LOADED = 3
DEFAULT_REFRESH_SECONDS = 30.0
SWAP_EWMA_ALPHA = 0.3
# A model admitted this shortly before an /api/ps read may not be listed yet (its request can
# still be on its way, or queued behind another load in Ollama): it stays in the belief.
FRESH_ADMISSION_SECONDS = 10.0

# Why a model is held (``/api/limits`` ``held_reason``).
NEEDS_SWAP = "needs_swap"  # would evict a model that still has work; waits up to max_hold
DRAINING_FOR_SWAP = "draining_for_swap"  # held past max_hold: the models to evict are draining
DRAINING = "draining"  # this model is being evicted for another one and takes no new requests

Work = Callable[[str], tuple[int, int]]  # model key -> (in_flight, queued) in the limiter


@dataclass(frozen=True)
class Hold:
    """Why a model may not be admitted now."""

    reason: str
    blocked_by: tuple[str, ...]  # the loaded models it waits for

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "blocked_by": list(self.blocked_by)}


@dataclass(frozen=True)
class Admitted:
    """What one admission did to the loaded set."""

    swap: bool  # the model was not loaded and others had to go
    evicted: tuple[str, ...]


class ModelScheduler:
    """The loaded set as the proxy sees it, and the affinity decision (see the module doc)."""

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        fetch_loaded: Callable[[], list[tuple[str, int | None]]] | None = None,
        fetch_sizes: Callable[[], dict[str, int]] | None = None,
        env_max_loaded: int = 0,
        memory_bytes: Callable[[], int | None] | None = None,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else SchedulerConfig()
        self._fetch_loaded = fetch_loaded
        self._fetch_sizes = fetch_sizes
        self._env_max_loaded = max(0, env_max_loaded)
        self._memory_bytes = memory_bytes
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently admitted first: Ollama evicts idle runners first, we break ties by age.
        self._loaded: OrderedDict[str, int | None] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._draining: dict[str, str] = {}  # victim -> the model it drains for
        self._last_admit: dict[str, float] = {}
        self._swap_seconds: dict[str, float] = {}  # EWMA of the extra time a swap cost
        self._seconds_per_byte: float | None = None  # the same across models, per byte of size
        self._swaps = 0
        self._refreshed_at: float | None = None
        self._refreshing = False
        self._budget: int | None = None
        self._budget_known = False

    @property
    def active(self) -> bool:
        return self.config.policy == AFFINITY

    def configure(self, config: SchedulerConfig) -> None:
        with self._lock:
            self.config = config
            if config.policy != AFFINITY:
                self._draining.clear()

    # --- the decision (called under the limiter's lock) ---------------------------------------

    def decide(self, key: str, oldest_arrival: float, now: float, work: Work) -> Hold | None:
        """None when ``key`` may be admitted now, else why it is held."""
        if not self.active:
            return None
        with self._lock:
            target = self._live_drain_locked(key, work)
            if target is not None:
                return Hold(DRAINING, (target,))
            if key in self._loaded:
                return None
            victims = self._victims_locked(key, work)
            busy = tuple(v for v in victims if work(v) != (0, 0))
            if not busy:
                return None
            if now - oldest_arrival < self.config.max_hold_seconds:
                return Hold(NEEDS_SWAP, busy)
            # The fairness bound: stop feeding the models in the way; admit once they are idle.
            for victim in victims:
                self._draining.setdefault(victim, key)
            running = tuple(v for v in victims if work(v)[0] > 0)
            if not running:
                return None
            return Hold(DRAINING_FOR_SWAP, running)

    def draining_hold(self, key: str, work: Work) -> Hold | None:
        """The hold of a model that is being drained for another one, if it is."""
        with self._lock:
            target = self._live_drain_locked(key, work) if self.active else None
            return Hold(DRAINING, (target,)) if target is not None else None

    def _live_drain_locked(self, key: str, work: Work) -> str | None:
        """The model ``key`` drains for; a drain whose target has nobody waiting any more (all
        left or timed out) is called off, so the drained model takes requests again."""
        target = self._draining.get(key)
        if target is None or work(target)[1] > 0:
            return target
        for victim in [v for v, t in self._draining.items() if t == target]:
            del self._draining[victim]
        return None

    def on_admit(self, key: str, now: float, work: Work) -> Admitted:
        """Record that ``key`` now runs in Ollama: loaded, and what it evicted."""
        with self._lock:
            self._last_admit[key] = now
            for victim, target in list(self._draining.items()):
                if target == key:
                    del self._draining[victim]
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return Admitted(False, ())
            victims = tuple(self._victims_locked(key, work))
            for victim in victims:
                self._loaded.pop(victim, None)
                self._draining.pop(victim, None)
            self._loaded[key] = self._sizes.get(key)
            if victims:
                self._swaps += 1
            return Admitted(bool(victims), victims)

    def observe_swap(self, key: str, extra_seconds: float) -> None:
        """The service time a swap added (a swapped-in request's time minus the usual)."""
        with self._lock:
            previous = self._swap_seconds.get(key)
            value = max(0.0, extra_seconds)
            self._swap_seconds[key] = (
                value if previous is None else previous + SWAP_EWMA_ALPHA * (value - previous)
            )
            size = self._size(key)
            if size:
                rate, old = value / size, self._seconds_per_byte
                self._seconds_per_byte = (
                    rate if old is None else old + SWAP_EWMA_ALPHA * (rate - old)
                )

    def swap_estimate(self, key: str, work: Work) -> float:
        """Seconds a swap ahead of ``key`` is expected to add (0 when it needs none)."""
        with self._lock:
            if key in self._loaded or not self._victims_locked(key, work):
                return 0.0
            known = self._swap_seconds.get(key)
            if known is not None:
                return known
            # Never swapped in yet: scale what other models' loads cost by its size.
            size = self._size(key)
            return size * self._seconds_per_byte if size and self._seconds_per_byte else 0.0

    # --- capacity ------------------------------------------------------------------------------

    def max_loaded(self) -> int:
        """The most models the scheduler lets stay loaded together (memory may allow fewer)."""
        if self.config.max_loaded_models > 0:
            return self.config.max_loaded_models
        if self._env_max_loaded > 0:
            return self._env_max_loaded
        return OLLAMA_DEFAULT_MAX_LOADED

    def _memory_budget(self) -> int | None:
        # An operator's count in the limits file is taken at its word; otherwise, like Ollama,
        # both the count (OLLAMA_MAX_LOADED_MODELS) and the memory must allow a model in.
        if self.config.max_loaded_models > 0:
            return None
        if not self._budget_known and self._memory_bytes is not None:
            self._budget_known = True
            try:
                self._budget = self._memory_bytes()
            except Exception:
                log.exception("reading the memory budget failed; judging by count only")
                self._budget = None
        return self._budget

    def _size(self, key: str) -> int | None:
        size = self._loaded.get(key)
        return size if size is not None else self._sizes.get(key)

    def _victims_locked(self, key: str, work: Work) -> list[str]:
        """The loaded models Ollama would unload to load ``key`` (idle ones first)."""
        cap = self.max_loaded()
        budget = self._memory_budget()
        need = self._size(key)
        remaining = [k for k in self._loaded if k != key]
        position = {k: i for i, k in enumerate(remaining)}
        order = sorted(remaining, key=lambda k: (work(k) != (0, 0), position[k]))

        def fits(models: list[str]) -> bool:
            if len(models) + 1 > cap:
                return False
            if budget is None or need is None:
                return True
            return sum(self._size(k) or 0 for k in models) + need <= budget

        victims: list[str] = []
        for candidate in order:
            if fits(remaining):
                break
            victims.append(candidate)
            remaining.remove(candidate)
        return victims

    # --- the loaded set from /api/ps ----------------------------------------------------------

    def maybe_refresh(self, now: float | None = None) -> None:
        """Start a background read of ``/api/ps`` when the last one is old (never blocks)."""
        if self._fetch_loaded is None:
            return
        now = self._clock() if now is None else now
        with self._lock:
            if self._refreshing:
                return
            if self._refreshed_at is not None and now - self._refreshed_at < self._refresh_seconds:
                return
            self._refreshing = True
            self._refreshed_at = now
        thread = threading.Thread(target=self.refresh, name="scheduler-ps", daemon=True)
        thread.start()

    def refresh(self) -> bool:
        """Read ``/api/ps`` (and sizes) now and merge; False when Ollama did not answer."""
        started = self._clock()
        try:
            try:
                loaded = self._fetch_loaded() if self._fetch_loaded else None
                sizes = self._fetch_sizes() if self._fetch_sizes else None
            except Exception as exc:  # a down Ollama: keep believing what our admissions say
                log.info("scheduler: /api/ps not read (%s); keeping the loaded set", type(exc))
                return False
            with self._lock:
                if sizes is not None:
                    self._sizes = dict(sizes)
                if loaded is not None:
                    self._merge_locked(loaded, started)
            return True
        finally:
            with self._lock:
                self._refreshing = False
                self._refreshed_at = self._clock()

    def _merge_locked(self, loaded: list[tuple[str, int | None]], started: float) -> None:
        seen = dict(loaded)
        merged: OrderedDict[str, int | None] = OrderedDict()
        # Models Ollama has that we did not know of count as the least recently used.
        for key, size in loaded:
            if key not in self._loaded:
                merged[key] = size
        fresh: list[tuple[str, int | None]] = []
        for key, size in self._loaded.items():
            if key in seen:
                merged[key] = seen[key] if seen[key] is not None else size
            elif self._last_admit.get(key, -math.inf) >= started - FRESH_ADMISSION_SECONDS:
                fresh.append((key, size))  # admitted lately; /api/ps lags behind
        self._loaded = merged
        # What Ollama listed plus what we sent since must still fit: loading the fresh ones
        # makes Ollama unload the least recently used of the others, and so does our belief.
        for key, size in fresh:
            for victim in self._victims_locked(key, lambda _key: (0, 0)):
                del self._loaded[victim]
            self._loaded[key] = size
        for victim in [v for v in self._draining if v not in self._loaded]:
            del self._draining[victim]

    # --- views ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "policy": self.config.policy,
                "max_loaded_models": self.config.max_loaded_models,
                "effective_max_loaded_models": self.max_loaded(),
                "memory_budget_bytes": self._budget if self._budget_known else None,
                "max_hold_seconds": self.config.max_hold_seconds,
                "loaded": [{"model": key, "size": size} for key, size in self._loaded.items()],
                "draining": dict(self._draining),
                "swaps": self._swaps,
                "refreshed_seconds_ago": (
                    None
                    if self._refreshed_at is None
                    else round(max(0.0, self._clock() - self._refreshed_at), 3)
                ),
            }
