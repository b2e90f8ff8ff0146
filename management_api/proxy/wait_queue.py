"""One model's waiting requests, in the order they get its free slots (pure; the limiter locks).

Order, for the next free slot:

1. **Aging first**: the oldest waiter, whatever its class, once it has waited ``aging_seconds``
   (0 = never). A class can therefore delay another's requests by at most that long, and a
   steady stream of interactive requests never starves a batch.
2. **Class**: ``interactive`` before ``standard`` before ``batch``.
3. **Fair share within a class**: the caller that has received the least service on this model,
   counted in GPU-seconds divided by the caller's weight (start-time fair queuing). A caller
   that starts waiting begins at the service level of the callers served so far (the virtual
   clock), so an idle past earns no credit: it cannot then hold the model for as long as it was
   away.
4. **FIFO** within one caller and class.

Shedding: when the queue is full, an arrival of a higher class takes the place of the newest
waiter of the lowest class below its own (``shed_candidate``).

Callers are few and classes three, so each choice looks at the head of each caller's lane, not
at every waiter: the cost does not grow with the queue's length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Protocol

INTERACTIVE, STANDARD, BATCH = "interactive", "standard", "batch"
CLASSES: tuple[str, ...] = (INTERACTIVE, STANDARD, BATCH)  # highest first
RANK = {INTERACTIVE: 2, STANDARD: 1, BATCH: 0}
# Service accounts of callers no longer waiting are forgotten beyond this many.
MAX_ACCOUNTS = 4096


class Waiter(Protocol):
    seq: int
    arrived_at: float
    priority: str
    caller: str


class WaitQueue:
    __slots__ = ("_accounts", "_backlog", "_count", "_lanes", "_vclock")

    def __init__(self) -> None:
        # class -> caller -> FIFO of that caller's waiters of that class
        self._lanes: dict[str, dict[str, deque[Waiter]]] = {c: {} for c in CLASSES}
        self._count = 0
        self._backlog: dict[str, int] = {}  # caller -> waiters, all classes
        self._accounts: dict[str, float] = {}  # caller -> service received / weight
        self._vclock = 0.0  # the service level of the callers served so far

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Waiter]:
        for lanes in self._lanes.values():
            for lane in lanes.values():
                yield from lane

    def append(self, waiter: Waiter) -> None:
        caller = waiter.caller
        if not self._backlog.get(caller):
            # Starts waiting: no credit for the time it was away.
            self._accounts[caller] = max(self._accounts.get(caller, 0.0), self._vclock)
        self._backlog[caller] = self._backlog.get(caller, 0) + 1
        self._lanes[waiter.priority].setdefault(caller, deque()).append(waiter)
        self._count += 1

    def remove(self, waiter: Waiter) -> None:
        lanes = self._lanes[waiter.priority]
        lane = lanes[waiter.caller]
        lane.remove(waiter)
        if not lane:
            del lanes[waiter.caller]
        self._count -= 1
        left = self._backlog[waiter.caller] - 1
        if left:
            self._backlog[waiter.caller] = left
        else:
            del self._backlog[waiter.caller]

    def oldest(self) -> Waiter | None:
        """The longest-waiting waiter (the earliest arrival), any class or caller."""
        best: Waiter | None = None
        for lanes in self._lanes.values():
            for lane in lanes.values():
                head = lane[0]
                if best is None or head.seq < best.seq:
                    best = head
        return best

    def next(
        self, now: float, aging_seconds: float, fifo: bool = False
    ) -> tuple[Waiter, bool] | None:
        """Who gets the next free slot, and whether it is served out of turn by aging.
        ``fifo``: arrival order alone (the limits file's ``queue_order = "fifo"``)."""
        oldest = self.oldest()
        if oldest is None:
            return None
        if fifo:
            return oldest, False
        if aging_seconds > 0 and now - oldest.arrived_at >= aging_seconds:
            return oldest, True
        for priority in CLASSES:
            lanes = self._lanes[priority]
            if not lanes:
                continue
            caller = min(lanes, key=lambda c: (self._accounts.get(c, 0.0), lanes[c][0].seq))
            return lanes[caller][0], False
        return None  # unreachable: oldest exists

    def dispatched(self, waiter: Waiter) -> None:
        """``waiter`` got a slot (and has been removed): the virtual clock moves to its level."""
        self._vclock = max(self._vclock, self._accounts.get(waiter.caller, 0.0))

    def charge(self, caller: str, seconds: float, weight: float) -> None:
        """Count service a caller received on this model (at release, as Ollama reported it)."""
        self._accounts[caller] = self._accounts.get(caller, self._vclock) + seconds / weight
        if len(self._accounts) > MAX_ACCOUNTS:
            # An idle caller at or below the clock is lifted to it on return anyway.
            for name in [n for n, v in self._accounts.items() if n not in self._backlog]:
                if self._accounts[name] <= self._vclock or len(self._accounts) > MAX_ACCOUNTS:
                    del self._accounts[name]

    def shed_candidate(self, priority: str) -> Waiter | None:
        """The newest waiter of the lowest class below ``priority``: who an arrival of that
        class replaces when the queue is full; None when nobody ranks lower."""
        rank = RANK[priority]
        for lower in reversed(CLASSES):
            if RANK[lower] >= rank:
                return None
            lanes = self._lanes[lower]
            if lanes:
                return max((lane[-1] for lane in lanes.values()), key=lambda w: w.seq)
        return None

    def counts(self) -> dict[str, int]:
        """Waiters per class."""
        return {c: sum(len(lane) for lane in self._lanes[c].values()) for c in CLASSES}

    def callers(self) -> dict[str, int]:
        """Waiters per caller."""
        return dict(self._backlog)

    def ahead_of(self, waiter: Waiter) -> int:
        """How many waiters would be served before ``waiter`` if nothing else arrived (ignoring
        aging): every waiter of a higher class and those of its own class ahead of it."""
        rank = RANK[waiter.priority]
        ahead = sum(
            len(lane) for c in CLASSES if RANK[c] > rank for lane in self._lanes[c].values()
        )
        own = self._lanes[waiter.priority]
        mine = self._accounts.get(waiter.caller, 0.0)
        for caller, lane in own.items():
            if caller == waiter.caller:
                ahead += lane.index(waiter)
            elif self._accounts.get(caller, 0.0) <= mine:
                ahead += len(lane)
        return ahead
