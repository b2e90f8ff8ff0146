"""Job chaos: durable jobs submitted (and some cancelled) beside the load while Ollama crashes.

Every job answered 202 must end, and be there to say how: ``succeeded`` with a result,
``failed`` with a reason, or ``cancelled`` only when we cancelled it; its attempts stay within
its bound. A job that vanished or never ended is a failure: nothing accepted may be lost.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from typing import Any

import requests

from bench.reliability.stack import MODEL_LIMITS, Stack

TERMINAL = ("succeeded", "failed", "cancelled")
CHAT = [{"role": "user", "content": "chaos"}]


def _request(rng: random.Random) -> tuple[str, dict[str, Any]]:
    model = rng.choice(sorted(MODEL_LIMITS))
    return rng.choice([
        ("/api/generate", {"model": model, "prompt": "chaos"}),
        ("/api/chat", {"model": model, "messages": CHAT}),
        ("/api/embed", {"model": model, "input": "chaos"}),
        ("/v1/chat/completions", {"model": model, "messages": CHAT}),
        ("/v1/embeddings", {"model": model, "input": "chaos"}),
    ])  # fmt: skip


class JobChaos:
    """A thread submitting 1-3 jobs every 1-2 s and cancelling one now and then."""

    def __init__(self, stack: Stack, rng: random.Random) -> None:
        self.stack, self.rng = stack, rng
        self.jobs: dict[str, dict[str, Any]] = {}
        self.cancelled_by_us: set[str] = set()
        self.actions: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-chaos", daemon=True)

    def start(self) -> JobChaos:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return requests.request(method, self.stack.management + path, json=body, timeout=15)

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(1.0, 2.0)):
            try:
                for _ in range(self.rng.randint(1, 3)):
                    route, body = _request(self.rng)
                    answer = self._api("POST", "/api/jobs", {"route": route, "body": body})
                    self.actions[f"submit_{answer.status_code}"] += 1
                    if answer.status_code == 202:
                        self.jobs[answer.json()["id"]] = answer.json()
                if self.rng.random() < 0.2:
                    self._cancel()
            except requests.RequestException as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def _cancel(self) -> None:
        open_jobs = [jid for jid, job in self.jobs.items() if job.get("status") not in TERMINAL]
        if not open_jobs:
            return
        job_id = self.rng.choice(open_jobs)
        self.cancelled_by_us.add(job_id)  # before the call: it may end cancelled meanwhile
        answer = self._api("DELETE", f"/api/jobs/{job_id}")
        self.actions[f"cancel_{answer.status_code}"] += 1
        if answer.status_code == 200:
            self.jobs[job_id] = answer.json()

    def settle(self, timeout: float) -> dict[str, Any]:
        """Wait for every accepted job to end, then check each one."""
        deadline = time.monotonic() + timeout
        missing: set[str] = set()
        while True:
            pending = []
            for job_id, job in self.jobs.items():
                if job.get("status") in TERMINAL:
                    continue
                with contextlib.suppress(requests.RequestException):
                    answer = self._api("GET", f"/api/jobs/{job_id}")
                    if answer.status_code == 404:
                        missing.add(job_id)
                        continue
                    if answer.status_code == 200:
                        self.jobs[job_id] = answer.json()
                if self.jobs[job_id].get("status") not in TERMINAL:
                    pending.append(job_id)
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        failures = [f"job {jid} was accepted and then lost (404)" for jid in sorted(missing)]
        failures += [f"job {jid} never ended: {self.jobs[jid].get('status')}" for jid in pending]
        for job_id, job in self.jobs.items():
            failures += _check(job_id, job, job_id in self.cancelled_by_us)
        states = Counter(job.get("status") for job in self.jobs.values())
        return {
            "jobs": len(self.jobs),
            "states": dict(sorted(states.items(), key=lambda kv: str(kv[0]))),
            "attempts": dict(
                sorted(Counter(str(j.get("attempts")) for j in self.jobs.values()).items())
            ),
            "failed_reasons": dict(
                Counter(
                    str(j.get("reason"))[:60]
                    for j in self.jobs.values()
                    if j.get("status") == "failed"
                ).most_common(5)
            ),
            "actions": dict(sorted(self.actions.items())),
            "errors": self.errors[:10],
            "failures": failures,
        }


def _check(job_id: str, job: dict[str, Any], cancelled_by_us: bool) -> list[str]:
    status = job.get("status")
    problems: list[str] = []
    if status not in TERMINAL or "attempts" not in job:
        return problems  # reported as never ended (or only its 202 was seen)
    if not 0 <= job["attempts"] <= job["max_attempts"]:
        problems.append(f"attempts {job['attempts']} outside 0..{job['max_attempts']}")
    if status == "succeeded" and job.get("result") is None:
        problems.append("succeeded without a result")
    if status == "failed" and not job.get("reason"):
        problems.append("failed without a reason")
    if status == "cancelled" and not cancelled_by_us:
        problems.append("cancelled, but nobody cancelled it")
    return [f"job {job_id} ({job.get('route')}): {p}" for p in problems]
