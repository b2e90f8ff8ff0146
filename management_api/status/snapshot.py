"""``GET /api/status``: one snapshot built from the services, with a stable ETag.

The body holds no clock-derived value (no "now", no age, no countdown): those the page works
out from the response's ``Date`` header. So two polls with nothing changed get byte-identical
bodies and the second one a 304. The shared part is built at most once per `min_interval`
(one probe of Ollama per second however many pages poll), single-flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from management_api import names
from management_api.health.checks import HealthChecker
from management_api.health.healing import HealingLog
from management_api.models.catalog import Catalog
from management_api.models.pulls import PullManager
from management_api.ollama import OllamaError
from management_api.proxy.limiter import QUEUE_FULL, QUEUE_TIMEOUT, Limiter
from management_api.telemetry import NO_GPU_SOURCE, Sampler, render_stats

# jtop's thresholds for Jetson temperatures (warning / critical), in °C.
WARNING_C = 84.0
CRITICAL_C = 100.0
REJECT_WINDOW_SECONDS = 300.0
# The limiter's reasons that are the service saying no (not a client leaving the queue).
REFUSALS = frozenset({QUEUE_FULL, QUEUE_TIMEOUT})
MAX_REJECT_EVENTS = 10_000
FINISHED_PULLS_SHOWN = 5
LOG_ERRORS_SHOWN = 10
RANK = {"healthy": 0, "degraded": 1, "unhealthy": 2}


class RecentRejections:
    """Rejections per model over the last five minutes (a limiter observer).

    The limiter's own counters are totals since a model was first seen (and vanish when an idle
    model is evicted); the page wants "rejected in the last 5 min". Bounded: at most
    `max_events` timestamps are kept, oldest dropped first.
    """

    def __init__(
        self,
        window_seconds: float = REJECT_WINDOW_SECONDS,
        max_events: int = MAX_REJECT_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self._events: deque[tuple[float, str]] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._clock = clock

    def on_reject(self, model: str, reason: str) -> None:
        if reason not in REFUSALS:
            return  # a client that gave up while queued was not refused by us
        with self._lock:
            self._events.append((self._clock(), model))

    def counts(self) -> dict[str, int]:
        cutoff = self._clock() - self.window_seconds
        with self._lock:
            while self._events and self._events[0][0] < cutoff:
                self._events.popleft()
            found: dict[str, int] = {}
            for _, model in self._events:
                found[model] = found.get(model, 0) + 1
            return found


def _refusals(rejected: dict[str, int]) -> int:
    return sum(n for reason, n in rejected.items() if reason in REFUSALS)


def _key(name: object) -> str | None:
    if not isinstance(name, str) or not names.is_valid(name):
        return None
    return names.normalize(name)


class StatusBuilder:
    def __init__(
        self,
        *,
        limiter: Limiter,
        catalog: Catalog,
        pulls: PullManager,
        sampler: Sampler,
        health: HealthChecker,
        healing_log: HealingLog,
        rejections: RecentRejections,
        service_info: Callable[[], dict[str, Any]],
        callers: Callable[[], dict[str, Any]] | None = None,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.catalog = catalog
        self.pulls = pulls
        self.sampler = sampler
        self.health = health
        self.healing_log = healing_log
        self.rejections = rejections
        self.service_info = service_info
        self.callers = callers  # the Callers table (usage/callers.py), shown to admins only
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._built: tuple[float, dict[str, Any]] | None = None

    def snapshot(self) -> dict[str, Any]:
        """The shared part of the body (everything but the caller's own access)."""
        with self._lock:  # single-flight: a second caller waits and reuses the result
            if self._built is not None and self._clock() - self._built[0] < self.min_interval:
                return self._built[1]
            body = self._build()
            self._built = (self._clock(), body)
            return body

    def _build(self) -> dict[str, Any]:
        http_status, health = self.health.evaluate()
        limits = self.limiter.snapshot_with_scheduler()  # per model: held, and why
        stats = render_stats(self.sampler.latest(), interval_seconds=self.sampler.interval)
        installed, installed_error = self._installed()
        models = self._models(limits, installed)
        reasons = self._reasons(health, stats, models)
        verdict = health["status"]
        for reason in reasons:
            level = "unhealthy" if reason["level"] == "critical" else "degraded"
            if reason["level"] != "info" and RANK[level] > RANK[verdict]:
                verdict = level
        return {
            "verdict": verdict,
            "reasons": reasons,
            "health": {
                "status": health["status"],
                "http_status": http_status,
                "checks": {name: check.get("status") for name, check in health["checks"].items()},
            },
            "service": self.service_info(),
            "limits": {
                "defaults": limits["config"].get("defaults"),
                "global": limits["global"],
                "totals": limits["totals"],
                "reject_window_seconds": self.rejections.window_seconds,
            },
            "models": models,
            "installed_error": installed_error,
            "pulls": self._pulls(),
            "telemetry": self._telemetry(stats),
            "healing": self.healing_log.recent(),
            "recent_errors": self._log_errors(health),
            "callers": self.callers() if self.callers is not None else None,
        }

    # --- models

    def _installed(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        try:
            view = self.catalog.view()
        except OllamaError:
            return {}, "Ollama is not reachable and no model list is cached yet"
        rows = {}
        for entry in view.entries:
            key = _key(entry.get("name"))
            if key is not None:
                rows[key] = entry
        return rows, ("the model list may be out of date (Ollama not reachable)"
                      if view.stale else None)  # fmt: skip

    def _models(
        self, limits: dict[str, Any], installed: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        views = {view["model"]: view for view in limits["models"]}
        loaded = {}
        for raw in self._loaded():
            key = _key(raw.get("name"))
            if key is not None:
                loaded[key] = raw
        recent = self.rejections.counts()
        rows = []
        for key in sorted(set(views) | set(installed) | set(loaded)):
            view = views.get(key)
            entry = installed.get(key)
            limits_now = view["limits"] if view else self.limiter.limits_for(key).to_dict()
            waits = view["wait_seconds"] if view else {}
            row: dict[str, Any] = {
                "model": key,
                "name": (entry or {}).get("name") or (loaded.get(key) or {}).get("name") or key,
                "installed": entry is not None,
                "size_bytes": (entry or {}).get("size"),
                "parameter_size": (entry or {}).get("parameter_size"),
                "quantization": (entry or {}).get("quantization"),
                "rule": view["rule"] if view else None,
                "limit": limits_now["max_concurrency"],
                "max_queue": limits_now["max_queue"],
                "running": view["in_flight"] if view else 0,
                "queued": view["queued"] if view else 0,
                "paused": view["paused"] if view else False,
                "rejected_recent": recent.get(key, 0),
                "rejected_total": _refusals((view or {}).get("rejected", {})),
                "admitted": view["admitted"] if view else 0,
                "wait_p50_seconds": waits.get("p50"),
                "wait_p95_seconds": waits.get("p95"),
                "retry_after_seconds": view["retry_after_seconds"] if view else None,
                "loaded": self._loaded_row(loaded.get(key)),
            }
            if view and "held" in view:
                row["held"] = view["held"]
                reason = view.get("held_reason")
                row["held_reason"] = reason.get("reason") if isinstance(reason, dict) else None
            rows.append(row)
        return rows

    def _loaded(self) -> list[dict[str, Any]]:
        # The health evaluation just read /api/ps; reuse its answer instead of asking again.
        probe = self.health.probe.last
        if probe is None or probe.loaded is None:
            return []
        return [m for m in probe.loaded if isinstance(m, dict)]

    @staticmethod
    def _loaded_row(raw: dict[str, Any] | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        return {
            "size_bytes": raw.get("size"),
            "size_vram_bytes": raw.get("size_vram"),
            "context_length": raw.get("context_length"),
            "expires_at": raw.get("expires_at"),
        }

    # --- the rest

    def _pulls(self) -> list[dict[str, Any]]:
        rows = []
        finished = 0
        for job in self.pulls.jobs():  # newest first
            snap = job.snapshot()
            if job.done:
                finished += 1
                if finished > FINISHED_PULLS_SHOWN:
                    continue
            snap.pop("layers", None)
            snap.pop("subscribers", None)
            snap.pop("duration_seconds", None)  # grows while running: would defeat the ETag
            rows.append(snap)
        return rows

    @staticmethod
    def _telemetry(stats: dict[str, Any]) -> dict[str, Any]:
        gpu = stats["gpu"]
        memory = dict(stats["memory"])
        shared = bool(memory.get("unified") or gpu.get("memory_shared"))
        memory["unified"] = shared
        # On unified memory the GPU's allocations are part of RAM: say how much, never "VRAM".
        memory["gpu_shared_bytes"] = gpu.get("memory_used_bytes") if shared else None
        return {
            "sampled_at": stats["sampled_at"],
            "interval_seconds": stats["interval_seconds"],
            "source": gpu.get("source"),
            "gpu_reading": gpu.get("source") not in (None, NO_GPU_SOURCE),
            "cpu": stats["cpu"],
            "memory": memory,
            "swap": stats["swap"],
            "gpu": gpu,
            "thermal": stats["thermal"],
            "power": stats["power"],
            "disk": stats["disk"],
            "thresholds_c": {"warning": WARNING_C, "critical": CRITICAL_C},
        }

    @staticmethod
    def _log_errors(health: dict[str, Any]) -> list[dict[str, Any]]:
        errors = health["checks"].get("error_log", {}).get("errors") or []
        return list(errors[-LOG_ERRORS_SHOWN:])

    def _reasons(
        self, health: dict[str, Any], stats: dict[str, Any], models: list[dict[str, Any]]
    ) -> list[dict[str, str]]:
        """Why the verdict is what it is, in words a person reads at a glance."""
        reasons: list[dict[str, str]] = []

        def add(level: str, text: str) -> None:
            reasons.append({"level": level, "text": text})

        checks = health["checks"]
        if health["status"] == "unhealthy":
            add("critical", health.get("reason") or "Ollama is not answering")
        log_errors = checks.get("error_log", {}).get("errors") or []
        if log_errors:
            window = round(checks["error_log"].get("window_seconds") or 0)
            add("warning", f"{len(log_errors)} GPU/runner error(s) in Ollama's log "
                           f"in the last {window} s")  # fmt: skip
        gpu_check = checks.get("gpu", {})
        if gpu_check.get("status") == "degraded" and gpu_check.get("memory"):
            add("warning", f"GPU memory low: {gpu_check['memory']['free_mb']} MB free")
        temps = dict(stats["thermal"] or {})
        if stats["gpu"].get("temperature_c") is not None:
            temps.setdefault("GPU", stats["gpu"]["temperature_c"])
        if temps:
            zone, hottest = max(temps.items(), key=lambda item: item[1])
            if hottest >= CRITICAL_C:
                add("critical", f"{zone} {hottest:.0f} °C (critical at {CRITICAL_C:.0f} °C)")
            elif hottest >= WARNING_C:
                add("warning", f"{zone} {hottest:.0f} °C (warning at {WARNING_C:.0f} °C)")
        minutes = round(self.rejections.window_seconds / 60)
        for row in models:
            if row["rejected_recent"]:
                count = row["rejected_recent"]
                add("warning", f"{row['name']} rejected {count} request(s) in {minutes} min")
            if row["paused"]:
                add("info", f"{row['name']}: admission paused (unloading)")
        if stats["sampled_at"] is None:
            add("info", "no telemetry sample yet")
        return reasons


def render(shared: dict[str, Any], access: dict[str, Any]) -> tuple[bytes, str]:
    """The JSON body for one caller and its ETag (a strong one: same bytes, same tag)."""
    body = json.dumps({**shared, "access": access}, separators=(",", ":"), default=str).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
