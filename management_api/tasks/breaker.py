"""Per-model circuit breakers that steer task model lists (never the plain proxy routes).

closed: every call runs; the last ``window`` verdicts are kept. When at least ``min_calls`` are
in the window and the failed share reaches ``failure_rate``, the breaker opens. open: the model
is left out of task lists for ``open_seconds``. half-open: then exactly one probe call runs; its
success closes the breaker (with an empty window), its failure opens it again. Only failures of
the model count (connection errors, 5xx, timeouts); a neutral end (cancelled, hedge loser, our
own 429, a 4xx) gives a half-open probe back without a verdict.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from management_api.tasks.config import BreakerSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
SUCCESS, FAILURE, NEUTRAL = "success", "failure", "neutral"


class _Breaker:
    __slots__ = ("opened_at", "probing", "state", "window")

    def __init__(self, size: int) -> None:
        self.state = CLOSED
        self.window: deque[bool] = deque(maxlen=size)
        self.opened_at = 0.0
        self.probing = False


class BreakerBoard:
    """All breakers, one lock; ``on_change(model, state)`` is called outside it."""

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
        max_models: int = 1024,
    ) -> None:
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_change = on_change
        self._max_models = max_models
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}

    def configure(self, settings: BreakerSettings) -> None:
        with self._lock:
            if settings.window != self.settings.window:
                for breaker in self._breakers.values():
                    breaker.window = deque(breaker.window, maxlen=settings.window)
            self.settings = settings

    def _get(self, model: str) -> _Breaker:
        breaker = self._breakers.get(model)
        if breaker is None:
            if len(self._breakers) >= self._max_models:
                # Forget a closed breaker: only open ones carry information worth keeping.
                for key, other in list(self._breakers.items()):
                    if other.state == CLOSED and not other.probing:
                        del self._breakers[key]
                        break
            breaker = self._breakers[model] = _Breaker(self.settings.window)
        return breaker

    def _advance_locked(self, breaker: _Breaker) -> None:
        waited = self._clock() - breaker.opened_at
        if breaker.state == OPEN and waited >= self.settings.open_seconds:
            breaker.state = HALF_OPEN
            breaker.probing = False

    def state(self, model: str) -> str:
        with self._lock:
            breaker = self._breakers.get(model)
            if breaker is None:
                return CLOSED
            self._advance_locked(breaker)
            return breaker.state

    def available(self, model: str) -> bool:
        """Whether a call may start now (without taking the half-open probe)."""
        with self._lock:
            breaker = self._breakers.get(model)
            if breaker is None:
                return True
            self._advance_locked(breaker)
            return breaker.state == CLOSED or (breaker.state == HALF_OPEN and not breaker.probing)

    def begin(self, model: str) -> bool:
        """Start a call: True if allowed (in half-open this call becomes the one probe)."""
        changed = None
        with self._lock:
            breaker = self._get(model)
            self._advance_locked(breaker)
            if breaker.state == CLOSED:
                return True
            if breaker.state == OPEN or breaker.probing:
                return False
            breaker.probing = True
            changed = breaker.state
        self._notify(model, changed)
        return True

    def end(self, model: str, verdict: str) -> None:
        """Record how a started call ended: SUCCESS, FAILURE or NEUTRAL."""
        changed = None
        with self._lock:
            breaker = self._get(model)
            settings = self.settings
            if breaker.state == HALF_OPEN and breaker.probing:
                breaker.probing = False
                if verdict == SUCCESS:
                    breaker.state, changed = CLOSED, CLOSED
                    breaker.window.clear()
                elif verdict == FAILURE:
                    breaker.state, changed = OPEN, OPEN
                    breaker.opened_at = self._clock()
                return self._notify(model, changed)
            if verdict == NEUTRAL or breaker.state != CLOSED:
                return None
            breaker.window.append(verdict == FAILURE)
            failures = sum(breaker.window)
            if (
                len(breaker.window) >= settings.min_calls
                and failures / len(breaker.window) >= settings.failure_rate
            ):
                breaker.state, changed = OPEN, OPEN
                breaker.opened_at = self._clock()
                breaker.window.clear()
        self._notify(model, changed)
        return None

    def _notify(self, model: str, state: str | None) -> None:
        if state is not None and self._on_change is not None:
            self._on_change(model, state)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out = {}
            for model, breaker in self._breakers.items():
                self._advance_locked(breaker)
                out[model] = {
                    "state": breaker.state,
                    "calls": len(breaker.window),
                    "failures": sum(breaker.window),
                }
            return out
