"""Pull chaos: model pulls while the emulator cuts, fails and stalls them, with cancels.

Runs beside the inference chaos. At the end every job must have ended (succeeded, failed or
cancelled) with an attempt count that matches its recorded failures, and only the jobs we
cancelled may be cancelled.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from typing import Any

import requests

from bench.reliability.stack import Stack

# Not installed at start (the emulator's registry only): every pull downloads.
PULL_MODELS = ("phi3:mini", "mistral:7b", "all-minilm:latest")
TERMINAL = ("succeeded", "failed", "cancelled")
FAIL_MODES = ("drop", "error", "stall")


class PullChaos:
    """A thread starting, joining, failing and cancelling pulls every 1.5-3.5 s."""

    def __init__(self, stack: Stack, rng: random.Random) -> None:
        self.stack, self.rng = stack, rng
        self.jobs: dict[str, dict[str, Any]] = {}  # id -> the last view of the job
        self.cancelled_by_us: set[str] = set()
        # Ended and dropped from the service's history (it keeps the last 50 finished jobs)
        # before we saw the final state: ended, but not checkable.
        self.evicted: set[str] = set()
        self.actions: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pull-chaos", daemon=True)

    def start(self) -> PullChaos:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(1.5, 3.5)):
            try:
                self._step()
            except requests.RequestException as exc:  # Ollama or the API busy restarting
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return requests.request(method, self.stack.management + path, json=body, timeout=15)

    def refresh(self) -> None:
        """Update every job from the service's list (running, queued and recently finished)."""
        answer = self._api("GET", "/api/models/pulls")
        if answer.status_code != 200:
            return
        listed = {job["id"]: job for job in answer.json()["pulls"]}
        for job_id, job in self.jobs.items():
            if job_id in listed:
                self.jobs[job_id] = listed[job_id]
            elif job.get("state") not in TERMINAL:
                self.evicted.add(job_id)

    def _step(self) -> None:
        self.refresh()  # often enough that a job is seen finished before it leaves the history
        roll = self.rng.random()
        model = self.rng.choice(PULL_MODELS)
        if roll < 0.35:
            self._pull(model, twice=self.rng.random() < 0.3)
        elif roll < 0.65:
            self._arm_fault(model)
        elif roll < 0.8:
            self._cancel()
        else:
            answer = self._api("DELETE", "/api/models/delete", {"model": model})
            self.actions[f"delete_{answer.status_code}"] += 1

    def _pull(self, model: str, *, twice: bool) -> None:
        for _ in range(2 if twice else 1):
            answer = self._api("POST", "/api/models/pull", {"model": model, "stream": False})
            self.actions[f"pull_{answer.status_code}"] += 1
            if answer.status_code == 202:
                job = answer.json()
                self.jobs[job["id"]] = job
                if job.get("joined"):
                    self.actions["pull_joined"] += 1

    def _arm_fault(self, model: str) -> None:
        if self.rng.random() < 0.25:
            self.stack.fault("slow_pull", model=model, bytes_per_second=1.5e8)
            self.faults["slow_pull"] += 1
            return
        mode = self.rng.choice(FAIL_MODES)
        self.stack.fault(
            "fail_pull", model=model, mode=mode, times=self.rng.randint(1, 3),
            after_bytes=self.rng.randint(10_000_000, 400_000_000),
        )  # fmt: skip
        self.faults[f"fail_pull_{mode}"] += 1

    def _cancel(self) -> None:
        running = [jid for jid, job in self.jobs.items() if job.get("state") not in TERMINAL]
        if not running:
            return
        job_id = self.rng.choice(running)
        answer = self._api("DELETE", f"/api/models/pulls/{job_id}")
        self.actions[f"cancel_{answer.status_code}"] += 1
        if answer.status_code == 200:
            self.cancelled_by_us.add(job_id)
            self.jobs[job_id] = answer.json()

    def cancel_all(self) -> None:
        """Cancel every job not known to have ended (short runs: bounded settling)."""
        for job_id, job in list(self.jobs.items()):
            if job.get("state") not in TERMINAL:
                try:
                    answer = self._api("DELETE", f"/api/models/pulls/{job_id}")
                except requests.RequestException:
                    continue
                self.actions[f"cancel_{answer.status_code}"] += 1
                if answer.status_code == 200:
                    self.cancelled_by_us.add(job_id)

    def settle(self, timeout: float) -> dict[str, Any]:
        """Wait for every job to end, then check each one; returns figures and `failures`."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(requests.RequestException):
                self.refresh()
            pending = [
                jid
                for jid, job in self.jobs.items()
                if job.get("state") not in TERMINAL and jid not in self.evicted
            ]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        failures = [f"pull job {jid} never ended: {self.jobs[jid].get('state')}" for jid in pending]
        for job_id, job in self.jobs.items():
            if job_id not in self.evicted:
                failures += _check_job(job_id, job, job_id in self.cancelled_by_us)
        states = Counter(
            "ended_unobserved" if jid in self.evicted else job.get("state")
            for jid, job in self.jobs.items()
        )
        attempts = Counter(str(job.get("attempt")) for job in self.jobs.values())
        return {
            "jobs": len(self.jobs),
            "states": dict(sorted(states.items())),
            "attempts": dict(sorted(attempts.items())),
            "retried_jobs": sum(1 for job in self.jobs.values() if job.get("failures")),
            "ended_unobserved": len(self.evicted),
            "actions": dict(sorted(self.actions.items())),
            "faults_injected": dict(sorted(self.faults.items())),
            "errors": self.errors[:10],
            "failures": failures,
        }


def _check_job(job_id: str, job: dict[str, Any], cancelled_by_us: bool) -> list[str]:
    state, attempt, most = job.get("state"), job.get("attempt", 0), job.get("max_attempts", 0)
    failed_attempts = len(job.get("failures") or [])
    problems: list[str] = []
    if state not in TERMINAL:
        return problems  # reported as never ended
    if not 0 <= attempt <= most:
        problems.append(f"attempt {attempt} outside 0..{most}")
    if state == "succeeded" and failed_attempts != attempt - 1:
        problems.append(f"succeeded at attempt {attempt} after {failed_attempts} failures")
    if state == "failed":
        if failed_attempts != attempt:
            problems.append(f"failed at attempt {attempt} with {failed_attempts} failures")
        if job.get("error_type") == "retries_exhausted" and attempt != most:
            problems.append(f"retries exhausted at attempt {attempt} of {most}")
    if state == "cancelled" and not cancelled_by_us:
        problems.append("cancelled, but nobody cancelled it")
    return [f"pull job {job_id} ({job.get('model')}): {p}" for p in problems]
