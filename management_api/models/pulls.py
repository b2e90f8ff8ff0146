"""Pull jobs: model downloads that run in the background, independent of any HTTP connection.

`PullManager.submit(model)` is the one way in. Its cases, in order:

1. the name is not valid in Ollama's grammar → `names.InvalidModelName` (the route's 400);
2. a job for the same normalised name is queued or running → that job is returned (joined), so
   two callers cause one upstream pull;
3. less free disk than `min_free_bytes` where the models live → `InsufficientDiskSpace` (507),
   before anything is sent to Ollama;
4. `max_running` jobs run and `max_queued` wait already → `PullQueueFull` (429);
5. otherwise a new job starts on its own thread (it waits its turn when `max_running` run).

A job streams Ollama's ``/api/pull`` and folds every line into aggregate progress (bytes over all
layers, percent, rate, ETA). Transient failures — Ollama unreachable, the stream cut, a 5xx, an
error line that is not known to be permanent, no progress for `stall_seconds` — are retried with
exponential back-off up to `retries` times; Ollama keeps partial downloads, so each retry resumes
where the last one stopped. Permanent failures (unknown model, invalid name, disk full) end the
job at once with Ollama's message. Cancelling shuts the upstream socket, so Ollama stops too.

Followers read progress through a bounded buffer (`follow`): the job never waits for them, a slow
one may miss intermediate lines, and every one gets the final line. Finished jobs stay in a
bounded history with their outcome and duration; a successful pull invalidates the catalog.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from management_api import names
from management_api.models import disk
from management_api.ollama import (
    OllamaError,
    OllamaStatusError,
    OllamaTimeout,
    OllamaUnreachable,
    PullStream,
)

log = logging.getLogger(__name__)

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
ACTIVE_STATES = frozenset({QUEUED, RUNNING, RETRYING})

DEFAULT_MAX_RUNNING = 4
DEFAULT_MAX_QUEUED = 16
DEFAULT_HISTORY = 50
BUFFER_LINES = 64  # progress lines kept for followers; older ones are dropped for slow readers
MAX_FAILURES_KEPT = 20
RATE_WINDOW_SECONDS = 5.0
# Ollama verifies and writes big blobs without sending a line; that is not a stall.
SLOW_PHASE_IDLE_SECONDS = 600.0
_SLOW_PHASES = ("verifying", "writing", "removing")

# Error texts that no retry can fix (ollama-api.md §4.4, §10, and the registry's answers).
_PERMANENT_MARKERS = (
    "file does not exist",
    "manifest unknown",
    "not found",
    "invalid model name",
    "is invalid",
    "no space left",
    "disk full",
    "not enough space",
    "insecure protocol",
    "unauthorized",
    "forbidden",
    "requires a newer version",
    "412:",
)


class PullClient(Protocol):
    """What a job needs from the upstream client (the real one is `OllamaClient`)."""

    def pull_stream(self, model: str, *, idle_timeout: float) -> PullStream: ...


class Invalidates(Protocol):
    def invalidate(self) -> None: ...


class PullQueueFull(Exception):
    def __init__(self, running: int, queued: int) -> None:
        self.running = running
        self.queued = queued
        super().__init__(f"too many pulls: {running} running, {queued} waiting")


class PullManagerClosed(Exception):
    """The service is stopping; no new pulls."""


class PullFailure(Exception):
    def __init__(self, message: str, *, permanent: bool, error_type: str = "pull_failed") -> None:
        self.message = message
        self.permanent = permanent
        self.error_type = error_type
        super().__init__(message)


class _Cancelled(Exception):
    pass


def is_permanent(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _PERMANENT_MARKERS)


def error_type_for(message: str) -> str:
    """A machine type for an upstream error text."""
    lowered = message.lower()
    if any(m in lowered for m in ("file does not exist", "manifest unknown", "not found")):
        return "model_not_found"
    if any(m in lowered for m in ("no space left", "disk full", "not enough space")):
        return "insufficient_storage"
    if "invalid model name" in lowered or "is invalid" in lowered:
        return "invalid_model_name"
    return "ollama_error"


def _utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PullProgress:
    """Aggregate progress over the layers of one pull (not thread-safe; the job locks)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.layers: dict[str, list[int]] = {}  # digest -> [total, completed]
        self.status = ""
        self._phase = ""
        self._percent = 0.0
        self._samples: deque[tuple[float, int]] = deque()
        self.last_advance = clock()

    @property
    def total_bytes(self) -> int:
        return sum(total for total, _ in self.layers.values())

    @property
    def completed_bytes(self) -> int:
        return sum(min(done, total) for total, done in self.layers.values())

    @property
    def in_slow_phase(self) -> bool:
        return self._phase.startswith(_SLOW_PHASES)

    def observe(self, line: dict[str, Any]) -> bool:
        """Fold one upstream line in; True when it is progress (new bytes, layer or phase)."""
        status = line.get("status")
        if isinstance(status, str):
            self.status = status
        digest = line.get("digest")
        total = line.get("total")
        advanced = False
        if isinstance(digest, str) and isinstance(total, int) and not isinstance(total, bool):
            done = line.get("completed", 0)  # Ollama omits it while it is 0
            done = done if isinstance(done, int) and not isinstance(done, bool) else 0
            before = self.completed_bytes
            layer = self.layers.get(digest)
            if layer is None:
                self.layers[digest] = [total, done]
                advanced = True
            else:
                layer[0], layer[1] = total, done
            advanced = advanced or self.completed_bytes > before
        elif isinstance(status, str) and status != self._phase:
            self._phase = status
            advanced = True
        now = self._clock()
        if advanced:
            self.last_advance = now
        self._samples.append((now, self.completed_bytes))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()
        return advanced

    def bytes_per_second(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        if self._clock() - t1 > RATE_WINDOW_SECONDS or t1 <= t0:
            return 0.0
        return max(0.0, (c1 - c0) / (t1 - t0))

    def percent(self, *, finished: bool) -> float:
        """Monotonic, and below 100 until the pull succeeded (later layers may still appear)."""
        if finished:
            self._percent = 100.0
        elif self.total_bytes:
            share = 100.0 * self.completed_bytes / self.total_bytes
            self._percent = max(self._percent, min(99.9, round(share, 1)))
        return self._percent

    def figures(self, *, finished: bool = False) -> dict[str, Any]:
        rate = self.bytes_per_second()
        remaining = self.total_bytes - self.completed_bytes
        eta = round(remaining / rate, 1) if rate > 0 and self.total_bytes else None
        return {
            "percent": self.percent(finished=finished),
            "completed_bytes": self.completed_bytes,
            "total_bytes": self.total_bytes,
            "bytes_per_second": round(rate),
            "eta_seconds": 0.0 if finished else eta,
        }


class PullJob:
    """One pull; its thread is the only writer, any thread may read, follow or cancel it."""

    def __init__(
        self,
        job_id: str,
        model: str,
        key: str,
        *,
        max_attempts: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.id = job_id
        self.model = model
        self.key = key
        self.max_attempts = max_attempts
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._progress = PullProgress(clock)
        self._lines: deque[tuple[int, dict[str, Any]]] = deque(maxlen=BUFFER_LINES)
        self._seq = 0
        self._final: dict[str, Any] | None = None
        self._stream: PullStream | None = None
        self.state = QUEUED
        self.attempt = 0
        self.error: str | None = None
        self.error_type: str | None = None
        self.failures: list[dict[str, Any]] = []
        self.subscribers = 0
        self.created_at = wall_clock()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._started_mono: float | None = None
        self._finished_mono: float | None = None

    # --- reading

    @property
    def done(self) -> bool:
        return self.state not in ACTIVE_STATES

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def duration_seconds(self) -> float | None:
        if self._started_mono is None:
            return None
        end = self._finished_mono if self._finished_mono is not None else self._clock()
        return round(end - self._started_mono, 3)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            figures = self._progress.figures(finished=self.state == SUCCEEDED)
            return {
                "id": self.id,
                "model": self.model,
                "state": self.state,
                "status": self._progress.status,
                "attempt": self.attempt,
                "max_attempts": self.max_attempts,
                **figures,
                "layers": [
                    {"digest": digest, "total": total, "completed": min(done, total)}
                    for digest, (total, done) in self._progress.layers.items()
                ],
                "error": self.error,
                "error_type": self.error_type,
                "failures": list(self.failures),
                "subscribers": self.subscribers,
                "created_at": _utc(self.created_at),
                "started_at": _utc(self.started_at),
                "finished_at": _utc(self.finished_at),
                "duration_seconds": self.duration_seconds(),
            }

    def _aggregate_locked(self) -> dict[str, Any]:
        return {"job_id": self.id, "attempt": self.attempt, **self._progress.figures()}

    def current_line(self) -> dict[str, Any]:
        """The progress as one line now (what a new or idle follower is sent)."""
        with self._cond:
            if self._final is not None:
                return dict(self._final)
            return {"status": self._progress.status or self.state, **self._aggregate_locked()}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finished; True if it did within `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: self._final is not None, timeout)

    # --- following

    def follow(
        self,
        *,
        replay: bool = False,
        heartbeat_seconds: float = 2.0,
        poll_seconds: float = 0.25,
        client_gone: Callable[[], bool] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Progress lines, ending with the final line.

        ``replay`` starts with the lines still in the buffer (what the caller who started the
        job wants); otherwise it starts with the current progress as one line. The current
        progress is sent again after `heartbeat_seconds` of silence (a write is how a server
        notices a client that left). Ends early, without touching the job, when `client_gone()`
        says so or the consumer closes the generator.
        """
        with self._cond:
            self.subscribers += 1
            last_seq = 0 if replay else self._seq
            finished = self._final is not None
            start_with_current = not replay or self._seq == 0
        try:
            if finished and not replay:
                yield self.current_line()
                return
            if start_with_current:
                yield self.current_line()
            idle_since = self._clock()
            while True:
                with self._cond:
                    if self._seq == last_seq and self._final is None:
                        self._cond.wait(poll_seconds)
                    fresh = [line for seq, line in self._lines if seq > last_seq]
                    last_seq = self._seq
                    final = self._final
                yield from fresh
                if final is not None:
                    yield dict(final)
                    return
                if client_gone is not None and client_gone():
                    return
                if fresh:
                    idle_since = self._clock()
                elif self._clock() - idle_since >= heartbeat_seconds:
                    idle_since = self._clock()
                    yield self.current_line()
        finally:
            with self._cond:
                self.subscribers -= 1

    # --- writing (the job's thread)

    def _publish_locked(self, line: dict[str, Any]) -> None:
        self._seq += 1
        self._lines.append((self._seq, line))
        self._cond.notify_all()

    def begin_attempt(self, attempt: int) -> None:
        with self._cond:
            if self.started_at is None:
                self.started_at = self._wall()
                self._started_mono = self._clock()
            self.attempt = attempt
            self.state = RUNNING
            self._progress.last_advance = self._clock()

    def observe(self, line: dict[str, Any]) -> bool:
        """Record an upstream progress line and pass it on to followers."""
        with self._cond:
            advanced = self._progress.observe(line)
            self._publish_locked({**line, **self._aggregate_locked()})
            return advanced

    def seconds_since_progress(self) -> float:
        with self._cond:
            return self._clock() - self._progress.last_advance

    def in_slow_phase(self) -> bool:
        with self._cond:
            return self._progress.in_slow_phase

    def remaining_bytes(self) -> int:
        with self._cond:
            return self._progress.total_bytes - self._progress.completed_bytes

    def note_failure(self, failure: PullFailure) -> None:
        """Keep the failure of the current attempt in the job's record."""
        with self._cond:
            self.failures.append({"attempt": self.attempt, "error": failure.message})
            del self.failures[:-MAX_FAILURES_KEPT]

    def will_retry(self, failure: PullFailure, delay: float) -> None:
        self.note_failure(failure)
        with self._cond:
            self.state = RETRYING
            self._progress.status = "retrying"
            self._publish_locked(
                {
                    "status": "retrying",
                    "reason": failure.message,
                    "retry_in_seconds": round(delay, 3),
                    **self._aggregate_locked(),
                }
            )

    def finish(self, state: str, failure: PullFailure | None = None) -> None:
        with self._cond:
            if self._final is not None:
                return
            self.state = state
            self.finished_at = self._wall()
            self._finished_mono = self._clock()
            if self._started_mono is None:
                self._started_mono = self._finished_mono
            final: dict[str, Any]
            if state == SUCCEEDED:
                self._progress.status = "success"
                final = {"status": "success"}
            else:
                assert failure is not None
                self.error, self.error_type = failure.message, failure.error_type
                final = {"status": "error", "error": failure.message, "type": failure.error_type}
            final.update(
                job_id=self.id,
                attempt=self.attempt,
                **self._progress.figures(finished=state == SUCCEEDED),
                state=state,
                duration_seconds=self.duration_seconds(),
            )
            self._final = final
            self._cond.notify_all()

    def attach(self, stream: PullStream) -> bool:
        """Make `stream` the one `cancel()` aborts; False if the job was cancelled already."""
        with self._cond:
            if self._cancel.is_set():
                return False
            self._stream = stream
            return True

    def detach(self) -> None:
        with self._cond:
            self._stream = None

    def cancel(self) -> None:
        with self._cond:
            self._cancel.set()
            stream = self._stream
            self._cond.notify_all()
        if stream is not None:
            stream.abort()

    def sleep(self, seconds: float) -> bool:
        """Wait for a retry; True when cancelled meanwhile."""
        return self._cancel.wait(seconds)


class PullManager:
    def __init__(
        self,
        ollama: PullClient,
        catalog: Invalidates | None,
        *,
        retries: int,
        stall_seconds: float,
        models_dir: Path,
        min_free_bytes: int,
        max_running: int = DEFAULT_MAX_RUNNING,
        max_queued: int = DEFAULT_MAX_QUEUED,
        history: int = DEFAULT_HISTORY,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        disk_usage: disk.DiskUsage | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ollama = ollama
        self._catalog = catalog
        self.retries = retries
        self.stall_seconds = stall_seconds
        self.models_dir = models_dir
        self.min_free_bytes = min_free_bytes
        self.max_running = max_running
        self.max_queued = max_queued
        self._history_size = history
        self._backoff = backoff_seconds
        self._backoff_max = backoff_max_seconds
        self._disk_usage = disk_usage
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Condition()
        self._active: dict[str, PullJob] = {}  # normalised name -> queued or running job
        self._jobs: OrderedDict[str, PullJob] = OrderedDict()  # id -> job, oldest first
        self._waiting: deque[PullJob] = deque()
        self._running = 0
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False

    # --- lifecycle

    def start(self) -> None:
        """Nothing runs until a pull is submitted; present for the services' start/stop pairs."""

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new pulls, cancel every active one and wait (bounded) for their threads."""
        with self._lock:
            self._closed = True
            jobs = list(self._active.values())
            threads = list(self._threads.values())
            self._lock.notify_all()
        for job in jobs:
            job.cancel()
        deadline = self._clock() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - self._clock()))

    # --- the way in

    def submit(self, model: str) -> tuple[PullJob, bool]:
        """Start or join the pull of `model`; returns (job, True when a new job was created)."""
        key = names.normalize(model)  # raises names.InvalidModelName
        with self._lock:
            if self._closed:
                raise PullManagerClosed()
            job = self._active.get(key)
            if job is not None and not job.done:
                return job, False
        self._check_disk(self.min_free_bytes)
        with self._lock:
            if self._closed:
                raise PullManagerClosed()
            job = self._active.get(key)
            # Another caller may have started it while we looked at the disk. A job that has
            # just finished (its thread is retiring it) is not joined: a new pull starts.
            if job is not None and not job.done:
                return job, False
            if self._running >= self.max_running and len(self._waiting) >= self.max_queued:
                raise PullQueueFull(self._running, len(self._waiting))
            job = PullJob(
                uuid.uuid4().hex[:16],
                model,
                key,
                max_attempts=self.retries + 1,
                clock=self._clock,
                wall_clock=self._wall,
            )
            self._active[key] = job
            self._jobs[job.id] = job
            self._waiting.append(job)
            thread = threading.Thread(
                target=self._run, args=(job,), name=f"pull-{job.id}", daemon=True
            )
            self._threads[job.id] = thread
        thread.start()
        return job, True

    def _check_disk(self, needed: int) -> None:
        if self.min_free_bytes <= 0:
            return
        try:
            if self._disk_usage is None:
                disk.require_free_space(self.models_dir, needed)
            else:
                disk.require_free_space(self.models_dir, needed, self._disk_usage)
        except OSError:
            log.warning("cannot measure free space in %s; pull allowed", self.models_dir)

    # --- queries

    def get(self, job_id: str) -> PullJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[PullJob]:
        """Every known job, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def active_for(self, model: str) -> PullJob | None:
        """The queued or running pull of this model, if any (raises InvalidModelName)."""
        key = names.normalize(model)
        with self._lock:
            job = self._active.get(key)
        return job if job is not None and not job.done else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"running": self._running, "queued": len(self._waiting)}

    def cancel(self, job_id: str, *, wait_seconds: float = 5.0) -> PullJob | None:
        """Cancel a job and wait (bounded) until it has stopped; None for an unknown id."""
        job = self.get(job_id)
        if job is None:
            return None
        if not job.done:
            job.cancel()
            with self._lock:
                self._lock.notify_all()  # a queued job waits on the manager's condition
            job.wait(wait_seconds)
        return job

    # --- the job's thread

    def _run(self, job: PullJob) -> None:
        has_turn = False
        try:
            has_turn = self._take_turn(job)
            if has_turn:
                self._attempts(job)
            else:
                job.finish(CANCELLED, self._cancelled_failure())
        except Exception:
            log.exception("pull job %s (%s) failed unexpectedly", job.id, job.model)
            job.finish(
                FAILED, PullFailure("internal error", permanent=True, error_type="internal_error")
            )
        finally:
            self._retire(job, has_turn)

    def _take_turn(self, job: PullJob) -> bool:
        """Wait (FIFO) until fewer than `max_running` run; False when cancelled meanwhile."""
        with self._lock:
            while True:
                if job.cancel_requested or self._closed:
                    self._waiting.remove(job)
                    return False
                if self._waiting[0] is job and self._running < self.max_running:
                    self._waiting.popleft()
                    self._running += 1
                    self._lock.notify_all()
                    return True
                self._lock.wait(0.5)

    def _retire(self, job: PullJob, had_turn: bool) -> None:
        with self._lock:
            if had_turn:
                self._running -= 1
            if self._active.get(job.key) is job:
                del self._active[job.key]
            self._threads.pop(job.id, None)
            finished = [j for j in self._jobs.values() if j.done]
            for old in finished[: max(0, len(finished) - self._history_size)]:
                del self._jobs[old.id]
            self._lock.notify_all()

    def _backoff_seconds(self, attempt: int) -> float:
        return float(min(self._backoff_max, self._backoff * 2 ** (attempt - 1)))

    @staticmethod
    def _cancelled_failure() -> PullFailure:
        return PullFailure("the pull was cancelled", permanent=True, error_type="cancelled")

    def _attempts(self, job: PullJob) -> None:
        for attempt in range(1, job.max_attempts + 1):
            job.begin_attempt(attempt)
            try:
                self._attempt(job)
            except _Cancelled:
                job.finish(CANCELLED, self._cancelled_failure())
                return
            except PullFailure as failure:
                if job.cancel_requested:
                    job.finish(CANCELLED, self._cancelled_failure())
                    return
                if failure.permanent:
                    job.note_failure(failure)
                    job.finish(FAILED, failure)
                    return
                if attempt == job.max_attempts:
                    job.note_failure(failure)
                    job.finish(
                        FAILED,
                        PullFailure(
                            f"pull of '{job.model}' failed after {attempt} attempts: "
                            f"{failure.message}",
                            permanent=False,
                            error_type="retries_exhausted",
                        ),
                    )
                    return
                delay = self._backoff_seconds(attempt)
                log.info(
                    "pull %s attempt %d failed (%s); retrying in %.1f s",
                    job.id,
                    attempt,
                    failure.message,
                    delay,
                )
                job.will_retry(failure, delay)
                if job.sleep(delay):
                    job.finish(CANCELLED, self._cancelled_failure())
                    return
                continue
            # Before the job says so: a caller that sees `succeeded` and lists finds the model.
            if self._catalog is not None:
                self._catalog.invalidate()
            job.finish(SUCCEEDED)
            return

    def _attempt(self, job: PullJob) -> None:
        """One upstream pull; returns on success, raises PullFailure or _Cancelled."""
        stream = self._ollama.pull_stream(job.model, idle_timeout=self.stall_seconds)
        if not job.attach(stream):
            raise _Cancelled()
        disk_checked = False
        try:
            stream.open()
            for line in stream:
                if job.cancel_requested:
                    raise _Cancelled()
                error = line.get("error")
                if error is not None:
                    message = str(error)
                    raise PullFailure(
                        message, permanent=is_permanent(message), error_type=error_type_for(message)
                    )
                if line.get("status") == "success":
                    return
                advanced = job.observe(line)
                if not disk_checked and job.remaining_bytes() > 0:
                    disk_checked = True
                    self._check_disk_during(job)
                slow = job.in_slow_phase()
                stream.set_idle_timeout(
                    max(self.stall_seconds, SLOW_PHASE_IDLE_SECONDS) if slow else self.stall_seconds
                )
                if not advanced and not slow and job.seconds_since_progress() > self.stall_seconds:
                    raise self._stalled()
            raise PullFailure(
                "the pull stream ended before success", permanent=False, error_type="stream_ended"
            )
        except OllamaError as exc:
            if job.cancel_requested:
                raise _Cancelled() from None
            raise self._classify(exc) from None
        finally:
            job.detach()
            stream.close()

    def _check_disk_during(self, job: PullJob) -> None:
        """Once the sizes are known: the rest of the download plus the margin must fit."""
        try:
            self._check_disk(job.remaining_bytes() + self.min_free_bytes)
        except disk.InsufficientDiskSpace as exc:
            raise PullFailure(str(exc), permanent=True, error_type="insufficient_storage") from None

    def _stalled(self) -> PullFailure:
        return PullFailure(
            f"no progress for {self.stall_seconds:g} s (stalled)",
            permanent=False,
            error_type="stalled",
        )

    def _classify(self, exc: OllamaError) -> PullFailure:
        if isinstance(exc, OllamaStatusError):
            client_error = 400 <= exc.status < 500 and exc.status not in (408, 429)
            return PullFailure(
                exc.message,
                permanent=client_error or is_permanent(exc.message),
                error_type=error_type_for(exc.message),
            )
        if isinstance(exc, OllamaTimeout):
            return self._stalled()
        if isinstance(exc, OllamaUnreachable):
            return PullFailure(
                "Ollama is not reachable", permanent=False, error_type="ollama_unavailable"
            )
        return PullFailure(
            "the connection to Ollama was cut during the pull",
            permanent=False,
            error_type="stream_cut",
        )
