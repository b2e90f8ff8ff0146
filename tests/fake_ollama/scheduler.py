"""Ollama's scheduler (``server/sched.go``) in miniature.

1. Fast path: a loaded runner with matching runner options is handed over at once.
2. Otherwise the request joins a pending queue of ``max_queue`` places; a full queue
   is the 503 ``server busy`` error.
3. One loader serves the queue FIFO across all models: it evicts (idle runners first,
   shortest keep-alive first) when ``max_loaded_models`` is reached or the new runner
   would not fit in ``memory_bytes`` (when set), blocking until the victim is unloaded
   (a busy victim first finishes its requests and takes no new ones), then loads (one
   model at a time) for ``load_seconds`` + size in GB x ``load_seconds_per_gb``. The
   request at the head holds up every request behind it, whatever their model.
   Cancelled requests are skipped; a load whose requester leaves is aborted.
4. Inside a runner a FIFO semaphore of ``num_parallel`` slots gates generation and
   embedding; waiters are never rejected.
5. A runner's keep-alive timer starts when it becomes idle; ``keep_alive`` given on
   a request replaces the runner's duration, an omitted one keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .control import Observations
from .errors import QUEUE_FULL, ApiError
from .models import ModelEntry
from .timefmt import FOREVER_SECONDS


class FifoSlots:
    """A FIFO counting semaphore whose capacity can change at runtime."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.capacity:
            waiter = self._waiters.popleft()
            if waiter.done():  # its request was cancelled while waiting
                continue
            self.in_use += 1
            waiter.set_result(None)


@dataclass(eq=False)
class Runner:
    key: str
    model: ModelEntry
    options: tuple
    num_ctx: int
    session: float  # keep-alive seconds, math.inf = forever
    slots: FifoSlots
    state: str = "loading"  # loading -> ready -> (unloading) -> gone
    refcount: int = 0
    expires_at: float | None = None  # wall clock, set when the runner goes idle
    timer: asyncio.TimerHandle | None = None
    gone: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def size(self) -> int:
        return runner_size(self.model, self.num_ctx, self.slots.capacity)


def runner_size(model: ModelEntry, num_ctx: int, parallel: int) -> int:
    """File size plus a KV cache that grows with context and parallelism."""
    return model.model_layer.size + num_ctx * max(1, parallel) * 65536


@dataclass(eq=False)
class Pending:
    model: ModelEntry
    options: tuple
    num_ctx: int
    keep_alive: float | None
    load_seconds: float
    future: asyncio.Future[Runner]


class Scheduler:
    def __init__(
        self,
        observations: Observations,
        *,
        num_parallel: Callable[[], int],
        max_queue: Callable[[], int],
        max_loaded: Callable[[], int],
        default_keep_alive: Callable[[], float],
        load_seconds_per_gb: Callable[[], float] = lambda: 0.0,
        memory_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.obs = observations
        self._num_parallel = num_parallel
        self._max_queue = max_queue
        self._max_loaded = max_loaded
        self._default_keep_alive = default_keep_alive
        self._load_seconds_per_gb = load_seconds_per_gb
        self._memory_bytes = memory_bytes
        self.runners: dict[str, Runner] = {}
        self.pending: deque[Pending] = deque()
        self._wakeup = asyncio.Event()
        self._current: Pending | None = None
        self._loader = asyncio.get_running_loop().create_task(self._serve_pending())

    # -- requests ----------------------------------------------------------------------

    async def acquire(
        self,
        model: ModelEntry,
        options: tuple,
        num_ctx: int,
        keep_alive: float | None,
        load_seconds: float,
    ) -> Runner:
        """A runner for ``model`` with one reference held; pair with ``release``."""
        runner = self.runners.get(model.blob_key)
        if runner is not None and runner.state == "ready" and runner.options == options:
            self._attach(runner, keep_alive)
            return runner
        if len(self.pending) >= self._max_queue():
            self.obs.rejected += 1
            raise ApiError(503, QUEUE_FULL)
        future: asyncio.Future[Runner] = asyncio.get_running_loop().create_future()
        self.pending.append(Pending(model, options, num_ctx, keep_alive, load_seconds, future))
        self.obs.max_pending = max(self.obs.max_pending, len(self.pending))
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())
            raise

    def release(self, runner: Runner) -> None:
        runner.refcount -= 1
        if runner.refcount > 0 or runner.state == "gone":
            return
        if runner.state == "unloading" or runner.session <= 0:
            self._unload(runner)
            return
        self._start_timer(runner)

    def expire(self, model: ModelEntry) -> None:
        """The unload form: keep-alive 0, unloaded as soon as it is idle."""
        runner = self.runners.get(model.blob_key)
        if runner is None:
            return
        runner.session = 0
        if runner.refcount == 0 and runner.state == "ready":
            self._unload(runner)

    def resize_slots(self, num_parallel: int) -> None:
        for runner in self.runners.values():
            if not runner.model.embedding_only:
                runner.slots.resize(num_parallel)

    def expires_at(self, runner: Runner) -> float:
        if runner.expires_at is not None:
            return runner.expires_at
        if math.isinf(runner.session):
            return time.time() + FOREVER_SECONDS
        return time.time() + runner.session

    def close(self) -> None:
        self._loader.cancel()
        waiting = [*self.pending, *([self._current] if self._current else [])]
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(ApiError(500, "emulator reset"))
        self.pending.clear()
        for runner in list(self.runners.values()):
            if runner.timer is not None:
                runner.timer.cancel()
            runner.state = "gone"
            if not runner.gone.done():
                runner.gone.set_result(None)
        self.runners.clear()

    # -- runner lifecycle --------------------------------------------------------------

    def _attach(self, runner: Runner, keep_alive: float | None) -> None:
        runner.refcount += 1
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        if keep_alive is not None:
            runner.session = keep_alive

    def _start_timer(self, runner: Runner) -> None:
        if math.isinf(runner.session):
            runner.expires_at = time.time() + FOREVER_SECONDS
            return
        runner.expires_at = time.time() + runner.session
        loop = asyncio.get_running_loop()
        runner.timer = loop.call_later(runner.session, self._on_timer, runner)

    def _on_timer(self, runner: Runner) -> None:
        runner.timer = None
        if runner.refcount == 0 and runner.state == "ready":
            self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
        if runner.state in ("ready", "unloading"):
            self.obs.unloads += 1
        runner.state = "gone"
        if not runner.gone.done():
            runner.gone.set_result(None)

    def _capacity(self, model: ModelEntry) -> int:
        return 1 if model.embedding_only else max(1, self._num_parallel())

    # -- the loader --------------------------------------------------------------------

    async def _serve_pending(self) -> None:
        while True:
            while not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = self.pending.popleft()
            if item.future.done():  # cancelled while queued: skipped
                continue
            self._current = item
            try:
                await self._serve(item)
            except ApiError as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
            finally:
                self._current = None

    async def _serve(self, item: Pending) -> None:
        key = item.model.blob_key
        runner = self.runners.get(key)
        if runner is not None and runner.state == "ready":
            if runner.options == item.options:
                self._attach(runner, item.keep_alive)
                item.future.set_result(runner)
                return
            # Different runner options: reload once the current users are done.
            await self._evict(runner)
        elif runner is not None:
            await asyncio.shield(runner.gone)
        while len(self.runners) >= max(1, self._max_loaded()) or not self._fits(item):
            victim = self._pick_victim()
            if victim is None:
                break
            self.obs.evictions += 1
            await self._evict(victim)
        if item.future.done():
            return
        await self._load(item)

    def _fits(self, item: Pending) -> bool:
        budget = self._memory_bytes()
        if budget <= 0:
            return True
        used = sum(runner.size for runner in self.runners.values())
        return used + runner_size(item.model, item.num_ctx, self._capacity(item.model)) <= budget

    def _pick_victim(self) -> Runner | None:
        candidates = [r for r in self.runners.values() if r.state in ("ready", "unloading")]
        if not candidates:
            return None
        idle = [r for r in candidates if r.refcount == 0]
        pool = idle or candidates
        return min(pool, key=lambda r: (r.session, r.key))

    async def _evict(self, runner: Runner) -> None:
        runner.state = "unloading"
        if runner.refcount == 0:
            self._unload(runner)
        await asyncio.shield(runner.gone)

    async def _load(self, item: Pending) -> None:
        model = item.model
        session = item.keep_alive if item.keep_alive is not None else self._default_keep_alive()
        runner = Runner(
            key=model.blob_key,
            model=model,
            options=item.options,
            num_ctx=item.num_ctx,
            session=session,
            slots=FifoSlots(self._capacity(model)),
        )
        self.runners[runner.key] = runner
        seconds = item.load_seconds + model.model_layer.size / 1e9 * self._load_seconds_per_gb()
        started = time.monotonic()
        sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
        try:
            await asyncio.wait({sleeper, item.future}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.obs.load_seconds += time.monotonic() - started
            if not sleeper.done():
                sleeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sleeper
        if item.future.done():
            # The requester left during the load: abort it, as llama-server start does.
            self.obs.load_aborts += 1
            runner.state = "gone"
            if self.runners.get(runner.key) is runner:
                del self.runners[runner.key]
            runner.gone.set_result(None)
            return
        runner.state = "ready"
        self.obs.loads += 1
        runner.refcount = 1
        item.future.set_result(runner)
