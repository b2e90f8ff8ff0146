"""Running jobs: bounded worker threads, a per-caller cap, cancel, retry and restart recovery.

A worker claims the next queued job (highest priority, then oldest, skipping callers that have
``max_per_caller`` running), runs it with the executor it was given, and records the outcome.
Each run gets a socket pair: the executor hands one end to the request path as the client's
socket, and cancelling closes the other end, so the gateway sees exactly what it sees when a
client drops (the request leaves its queue, or Ollama's connection is closed).

A 429 or 503 (the model's queue is full, Ollama restarts) sends the job back to the queue after
its Retry-After, counted as an attempt; so does a stop of the service while it runs, and a
restart finds jobs a dead process left running and requeues them. After ``max_attempts`` the job
fails with the reason. Every state change is committed before it is reported.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from management_api.jobs import callbacks
from management_api.jobs import store as st
from management_api.jobs.store import Job, JobStore

log = logging.getLogger(__name__)

ROUTES = (
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/infer",
)
ANONYMOUS = ""  # no API key: shown as caller null
MIN_PRIORITY, MAX_PRIORITY = -10, 10
PRUNE_EVERY_SECONDS = 60.0
IDLE_WAIT_SECONDS = 0.5
RETRYABLE_STATUSES = frozenset({429, 503})
DEFAULT_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
MAX_CALLBACK_BACKOFF_SECONDS = 60.0


class JobsFull(Exception):
    """As many jobs as allowed are queued or running; the submitter retries later."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs are queued or running (LLM_JOBS_MAX_QUEUED)")
        self.limit = limit


class JobsNotRunning(Exception):
    """The manager has not started (or has stopped): no store to write to."""


@dataclass(frozen=True)
class JobLimits:
    workers: int = 4
    max_per_caller: int = 2
    max_queued: int = 10_000
    max_attempts: int = 3
    ttl_seconds: float = 86_400.0
    max_finished: int = 10_000
    max_stored_bytes: int = 256 * 1024 * 1024
    max_result_bytes: int = 16 * 1024 * 1024
    callback_hosts: tuple[str, ...] = ()
    callback_attempts: int = 5
    callback_timeout_seconds: float = 10.0
    callback_backoff_seconds: float = 1.0  # then doubled per failed attempt, up to a minute
    callback_senders: int = 2


@dataclass
class Outcome:
    """What the request path answered: its status and its JSON body (None when not JSON)."""

    http_status: int
    body: Any
    retry_after: float | None = None  # a 429/503's Retry-After, seconds
    reason: str | None = None  # why, in words, when it failed


class JobRun:
    """One attempt of a job: the request id it runs under and its client-side socket."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.request_id = f"job-{job.id}-{job.attempts}"
        self.client_sock, self._peer = socket.socketpair()
        self.cancelled: str | None = None  # "cancelled" or "stopping"
        self._lock = threading.Lock()

    def cancel(self, why: str) -> None:
        """End the run as a client that leaves ends a request."""
        with self._lock:
            if self.cancelled is not None:
                return
            self.cancelled = why
            with contextlib.suppress(OSError):
                self._peer.shutdown(socket.SHUT_RDWR)
            self._peer.close()

    def close(self) -> None:
        with self._lock:
            self._peer.close()
            self.client_sock.close()


Executor = Callable[[JobRun], Outcome]


class JobManager:
    def __init__(self, state_dir: Path, limits: JobLimits) -> None:
        self.path = state_dir / "jobs.sqlite3"
        self.limits = limits
        self._execute: Executor | None = None
        self._store: JobStore | None = None
        self._threads: list[threading.Thread] = []
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._last_prune = time.monotonic()  # start() prunes once
        self._prune_lock = threading.Lock()
        self.recovered = (0, 0)
        self.on_job_end: Callable[[Job], None] | None = None  # the batches module listens
        self.on_prune: Callable[[float, float], int] | None = None  # (ttl, now) → removed
        self._identity = ""

    def bind(self, execute: Executor) -> None:
        """The function that runs one attempt (the app hands in its own request path)."""
        self._execute = execute

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise JobsNotRunning("jobs are not running")
        return self._store

    # --- lifecycle

    def start(self) -> None:
        if self._store is not None:
            return
        self._identity = st.process_identity()  # after the fork: the worker's own
        self._store = JobStore(self.path)
        self.recovered = self._store.recover(self.limits.max_attempts, st.now())
        if any(self.recovered):
            log.warning("jobs: %d interrupted jobs requeued, %d failed after too many attempts",
                        *self.recovered)  # fmt: skip
        self._prune()
        self._stopping.clear()
        for index in range(self.limits.workers):
            thread = threading.Thread(target=self._work, name=f"job-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for index in range(self.limits.callback_senders):
            thread = threading.Thread(
                target=self._send_callbacks, name=f"job-callback-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running ones are cut off and go back to the queue."""
        self._stopping.set()
        with self._wake:
            runs = list(self._runs.values())
            self._wake.notify_all()
        for run in runs:
            run.cancel("stopping")
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        self._threads.clear()
        if stuck:
            log.warning("jobs: %s did not stop in %.0f s; the store stays open", stuck, timeout)
        elif self._store is not None:
            with self._wake:
                self._store.close()
                self._store = None

    # --- the API the routes use

    def submit(
        self,
        *,
        route: str,
        body: dict[str, Any],
        caller: str,
        priority: int = 0,
        callback_url: str | None = None,
        base_url: str = "",
    ) -> Job:
        """Store a new job (committed before this returns) and wake a worker. A callback URL
        must pass `callbacks.check_url` (the caller checks it first, to say why not)."""
        store = self.store
        if store.unfinished() >= self.limits.max_queued:
            raise JobsFull(self.limits.max_queued)
        job = Job(
            id="job_" + secrets.token_hex(12),
            route=route,
            body=body,
            caller=caller,
            priority=priority,
            callback_url=callback_url,
            status=st.QUEUED,
            attempts=0,
            created_at=st.now(),
            base_url=base_url,
        )
        store.insert(job)
        with self._wake:
            self._wake.notify()
        return job

    def wake(self) -> None:
        """New jobs were stored outside `submit` (a batch): let the workers look."""
        with self._wake:
            self._wake.notify_all()

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def list(self, *, status: str | None, caller: str | None, limit: int) -> list[Job]:
        return self.store.list(status=status, caller=caller, limit=limit)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job, or cut a running one off; the job afterwards (None: unknown).
        A running job is ``cancelled`` once its worker has let go of it."""
        with self._wake:
            job = self.store.cancel(job_id, st.now())
            run = self._runs.get(job_id)
            self._wake.notify_all()
        if run is not None:
            run.cancel("cancelled")
        return job

    def wait_settled(self, job_id: str, timeout: float) -> Job | None:
        """The job once it is no longer running (or as it is at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if job is None or job.status != st.RUNNING or time.monotonic() >= deadline:
                return job
            time.sleep(0.02)

    def counts(self) -> dict[str, Any]:
        counts = self.store.counts()
        return {**counts.by_status, "stored_bytes": counts.stored_bytes}

    def view(self, job: Job, base_url: str | None = None) -> dict[str, Any]:
        """A job as GET /api/jobs/{id} shows it (and its callback receives it)."""
        if base_url is None:
            base_url = job.base_url
        timings: dict[str, float | None] = {"queued_ms": None, "run_ms": None, "total_ms": None}
        if job.started_at is not None:
            timings["queued_ms"] = _ms(job.started_at - job.created_at)
        if job.finished_at is not None:
            timings["total_ms"] = _ms(job.finished_at - job.created_at)
            if job.started_at is not None:
                timings["run_ms"] = _ms(job.finished_at - job.started_at)
        return {
            "id": job.id,
            "object": "job",
            "status": job.status,
            "route": job.route,
            "caller": job.caller or None,
            "priority": job.priority,
            "status_url": f"{base_url}/api/jobs/{job.id}",
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "timings": timings,
            "attempts": job.attempts,
            "max_attempts": self.limits.max_attempts,
            "http_status": job.http_status,
            "result": job.result if job.status == st.SUCCEEDED else None,
            "error": job.error if job.status == st.FAILED else None,
            "reason": job.reason,
            "history": [{**event, "at": _iso(event["at"])} for event in job.history],
            "callback_url": job.callback_url,
            "callback": None
            if job.callback_url is None
            else {"state": job.callback_state, "attempts": job.callback_attempts},
        }

    # --- the workers

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                run = self._next()
            except Exception:
                log.exception("jobs: claiming the next job failed")
                self._stopping.wait(1.0)
                continue
            if run is None:
                continue
            try:
                self._run(run)
                if self.on_job_end is not None:
                    self.on_job_end(run.job)
            except Exception:
                log.exception("jobs: job %s failed outside its request", run.job.id)
            finally:
                with self._wake:
                    self._runs.pop(run.job.id, None)
                    self._wake.notify_all()
                run.close()

    def _next(self) -> JobRun | None:
        self._maybe_prune()
        with self._wake:
            if self._stopping.is_set() or self._store is None:
                return None
            job = self._store.claim(self.limits.max_per_caller, self._identity, st.now())
            if job is None:
                self._wake.wait(IDLE_WAIT_SECONDS)
                return None
            run = JobRun(job)
            self._runs[job.id] = run
            return run

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        with self._prune_lock:
            if now - self._last_prune < PRUNE_EVERY_SECONDS:
                return
            self._last_prune = now
        self._prune()
        # A job whose process died without this one noticing (a worker replaced on a reload).
        requeued, failed = self.store.recover(self.limits.max_attempts, st.now())
        if requeued or failed:
            log.warning("jobs: %d orphaned jobs requeued, %d failed", requeued, failed)

    def _run(self, run: JobRun) -> None:
        job, store = run.job, self.store
        if self._execute is None:
            outcome = Outcome(503, None, reason="no executor bound")
        else:
            try:
                outcome = self._execute(run)
            except Exception:
                log.exception("jobs: job %s raised", job.id)
                outcome = Outcome(500, None, reason="internal error (see the service log)")
        now = st.now()
        if run.cancelled == "stopping":
            store.requeue(job.id, not_before=0.0, reason="interrupted: the service stopped",
                          now=now)  # fmt: skip
            return
        if run.cancelled is not None:
            store.finish(job.id, st.CANCELLED, http_status=None, reason="cancelled while it ran",
                         now=now)  # fmt: skip
            return
        status = outcome.http_status
        if 200 <= status < 300 and outcome.body is not None:
            store.finish(job.id, st.SUCCEEDED, http_status=status, result=outcome.body, now=now)
            return
        reason = outcome.reason or _message(outcome.body) or f"the route answered {status}"
        if status in RETRYABLE_STATUSES and job.attempts < self.limits.max_attempts:
            delay = min(MAX_RETRY_SECONDS, outcome.retry_after or DEFAULT_RETRY_SECONDS)
            store.requeue(job.id, not_before=now + delay, reason=f"{status}: {reason}; retried",
                          now=now)  # fmt: skip
            return
        if status in RETRYABLE_STATUSES:
            reason = f"{reason} (after {job.attempts} attempts)"
        store.finish(job.id, st.FAILED, http_status=status, error=outcome.body, reason=reason,
                     now=now)  # fmt: skip

    # --- callbacks

    def _send_callbacks(self) -> None:
        session = requests.Session()
        lease = callbacks.CONNECT_TIMEOUT_SECONDS + self.limits.callback_timeout_seconds + 5
        try:
            while not self._stopping.is_set():
                try:
                    job = self.store.take_callback(st.now(), lease)
                except JobsNotRunning:
                    return
                except Exception:
                    log.exception("jobs: reading due callbacks failed")
                    job = None
                if job is None:
                    with self._wake:
                        self._wake.wait(IDLE_WAIT_SECONDS)
                    continue
                self._callback(session, job)
        finally:
            session.close()

    def _callback(self, session: requests.Session, job: Job) -> None:
        assert job.callback_url is not None
        try:
            url = callbacks.check_url(job.callback_url, self.limits.callback_hosts)
        except callbacks.CallbackRefused as exc:  # the allow-list changed since it was accepted
            self.store.callback_attempted(job.id, delivered=False, status=None, error=str(exc),
                                          retry_at=None, now=st.now())  # fmt: skip
            return
        delivered, status, error = callbacks.deliver(
            session, url, self.view(job), self.limits.callback_timeout_seconds
        )
        attempt = job.callback_attempts + 1
        retry_at = None
        if not delivered and attempt < self.limits.callback_attempts:
            delay = callbacks.backoff_seconds(
                attempt, self.limits.callback_backoff_seconds, MAX_CALLBACK_BACKOFF_SECONDS
            )
            retry_at = st.now() + delay
        if not delivered:
            log.warning("jobs: callback %d of job %s to %s failed: %s", attempt, job.id,
                        url.split("?")[0], error)  # fmt: skip
        self.store.callback_attempted(job.id, delivered=delivered, status=status, error=error,
                                      retry_at=retry_at, now=st.now())  # fmt: skip

    def _prune(self) -> None:
        removed = self.store.prune(
            ttl_seconds=self.limits.ttl_seconds,
            max_finished=self.limits.max_finished,
            max_bytes=self.limits.max_stored_bytes,
            now=st.now(),
        )
        if self.on_prune is not None:
            removed += self.on_prune(self.limits.ttl_seconds, st.now())
        if removed:
            log.info("jobs: %d finished jobs, batches or files pruned (TTL, count or size "
                     "bound)", removed)  # fmt: skip


def _message(body: Any) -> str | None:
    """The message of an error body in any of the service's shapes."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) else None


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000, 1)


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    moment = datetime.fromtimestamp(stamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
