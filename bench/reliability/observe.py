"""What the run watches while the load runs: the emulator, /health and the API worker."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil
import requests

from bench.reliability.stack import Stack


class _Poller:
    """A daemon thread calling `tick` every `interval` seconds until stopped."""

    interval = 1.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self.errors: list[str] = []

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a failed poll is data, not a crash of the run
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> _Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@dataclass
class UpstreamRecord:
    request_id: str
    incarnation: int  # the emulator's pid: its observations die with it
    model: str | None
    path: str
    opened_at: float
    closed_at: float | None
    outcome: str | None
    slot_entered_at: float | None = None  # when it held a generation slot in the emulator
    slot_left_at: float | None = None
    fault: str | None = None


class UpstreamCollector(_Poller):
    """Merges the emulator's connection records across its restarts.

    The emulator keeps the last 5000 connections and loses everything when killed, so it is
    polled often, and once more right before each kill (`poll_now`).
    """

    def __init__(self, stack: Stack, prefix: str, interval: float = 2.0) -> None:
        super().__init__()
        self.stack, self.prefix, self.interval = stack, prefix, interval
        self.records: dict[tuple[int, int], UpstreamRecord] = {}
        self.max_in_flight: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self.incarnations: list[int] = []
        self._lock = threading.Lock()

    def tick(self) -> None:
        self.poll_now()

    def poll_now(self) -> bool:
        with self._lock:
            pid = self.stack.ollama_pid()
            if pid is None:
                return False
            observed = self.stack.observations()
            if self.stack.ollama_pid() != pid:
                return False  # restarted meanwhile: these may be the new one's
            if pid not in self.incarnations:
                self.incarnations.append(pid)
            for model, count in observed["max_in_flight"].items():
                self.max_in_flight[model] = max(count, self.max_in_flight.get(model, 0))
            self.in_flight = dict(observed["in_flight"])
            for item in observed["connections"]:
                request_id = item.get("request_id") or ""
                if not request_id.startswith(self.prefix):
                    continue
                self.records[(pid, item["id"])] = UpstreamRecord(
                    request_id, pid, item.get("model"), item["path"], item["opened_at"],
                    item.get("closed_at"), item.get("outcome"), item.get("slot_entered_at"),
                    item.get("slot_left_at"), item.get("fault"),
                )  # fmt: skip
            return True

    def overlaps(self, model: str, limit: int) -> list[list[UpstreamRecord]]:
        """Each moment the emulator held more than `limit` slots of `model`: the requests that
        held them then (ours only; the first few such moments)."""
        with self._lock:
            held = [
                r for r in self.records.values()
                if r.model == model and r.slot_entered_at is not None
            ]  # fmt: skip
        found: list[list[UpstreamRecord]] = []
        for record in sorted(held, key=lambda r: r.slot_entered_at or 0.0):
            at = record.slot_entered_at
            assert at is not None
            together = [
                r for r in held
                if r.incarnation == record.incarnation and r.slot_entered_at is not None
                and r.slot_entered_at <= at and (r.slot_left_at is None or r.slot_left_at > at)
            ]  # fmt: skip
            if len(together) > limit:
                found.append(sorted(together, key=lambda r: r.slot_entered_at or 0.0))
                if len(found) >= 5:
                    break
        return found

    def by_request(self) -> dict[str, list[UpstreamRecord]]:
        found: dict[str, list[UpstreamRecord]] = {}
        with self._lock:
            for record in self.records.values():
                found.setdefault(record.request_id, []).append(record)
        return found


@dataclass
class HealthSample:
    at: float
    status: int  # 0: no answer


class HealthTimeline(_Poller):
    """`GET /health` four times a second: when it said 503, and when it came back."""

    interval = 0.25

    def __init__(self, management: str) -> None:
        super().__init__()
        self.url = management + "/health"
        self.samples: list[HealthSample] = []

    def tick(self) -> None:
        try:
            status = requests.get(self.url, timeout=5).status_code
        except requests.RequestException:
            status = 0
        self.samples.append(HealthSample(time.monotonic(), status))

    def outages(self) -> list[tuple[float, float | None]]:
        """(first non-200, first 200 after it) spans; None when it never recovered."""
        spans: list[tuple[float, float | None]] = []
        start = None
        for sample in list(self.samples):
            if sample.status != 200 and start is None:
                start = sample.at
            elif sample.status == 200 and start is not None:
                spans.append((start, sample.at))
                start = None
        if start is not None:
            spans.append((start, None))
        return spans


@dataclass
class ProcessSample:
    at: float
    rss_mb: float
    fds: int
    threads: int


class ProcessSampler(_Poller):
    """RSS, open descriptors and threads of one process, every `interval` seconds."""

    def __init__(self, process: psutil.Process, interval: float = 10.0) -> None:
        super().__init__()
        self.process, self.interval = process, interval
        self.samples: list[ProcessSample] = []

    def tick(self) -> None:
        with self.process.oneshot():
            sample = ProcessSample(
                time.monotonic(),
                self.process.memory_info().rss / 2**20,
                self.process.num_fds(),
                self.process.num_threads(),
            )
        self.samples.append(sample)

    def as_rows(self, t0: float) -> list[dict[str, Any]]:
        return [
            {
                "seconds": round(s.at - t0, 1),
                "rss_mb": round(s.rss_mb, 2),
                "fds": s.fds,
                "threads": s.threads,
            }
            for s in self.samples
        ]


class LivenessProbe(_Poller):
    """`GET /health/live` on the proxy port ten times a second, with the kubelet's 5 s timeout:
    what a liveness probe would have seen during the run (a timeout counts as 5 s and a miss)."""

    interval = 0.1
    timeout = 5.0

    def __init__(self, proxy: str) -> None:
        super().__init__()
        self.url = proxy + "/health/live"
        self.latencies: list[float] = []
        self.missed = 0

    def tick(self) -> None:
        started = time.monotonic()
        try:
            ok = requests.get(self.url, timeout=self.timeout).status_code == 200
        except requests.RequestException:
            ok = False
        self.latencies.append(time.monotonic() - started if ok else self.timeout)
        self.missed += 0 if ok else 1

    def report(self) -> dict[str, float | int | None]:
        ordered = sorted(self.latencies)
        if not ordered:
            return {"probes": 0, "missed": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "probes": len(ordered),
            "missed": self.missed,
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1),
        }
