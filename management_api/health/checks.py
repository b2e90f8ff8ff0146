"""The 4-point health evaluation behind ``GET /health`` (no Flask).

Checks, each ``{"status": "ok" | "degraded" | "fail" | "unknown", …detail}``:

* ``ollama_api`` — ``/api/tags`` answers (with latency); also gives the legacy model list;
* ``gpu`` — from the sampler's latest snapshot (never sampled inline); unknown is not a failure;
* ``model_loaded`` — informational: which models are loaded (none loaded is fine);
* ``error_log`` — GPU/CUDA/OOM/runner errors in Ollama's log within the window.

Overall: ``unhealthy`` (HTTP 503) only when Ollama cannot serve; ``degraded`` (200) for recent GPU
errors or critically low GPU memory; else ``healthy``. Zero downloaded models is healthy. The
whole evaluation is bounded (``HEALTH_DEADLINE_SECONDS``) even when Ollama hangs: the upstream
probe runs on a helper thread with a deadline, and concurrent evaluations share one probe.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from management_api import __version__
from management_api.health import ollama_log
from management_api.ollama import (
    OllamaClient,
    OllamaError,
    OllamaStatusError,
    OllamaTimeout,
)
from management_api.telemetry import Sampler, gpu_status, health_gpu_memory

PROBE_DEADLINE_SECONDS = 2.0
HEALTH_DEADLINE_SECONDS = 3.0
OK, DEGRADED, FAIL, UNKNOWN = "ok", "degraded", "fail", "unknown"
HEALTHY, UNHEALTHY = "healthy", "unhealthy"


@dataclass(frozen=True)
class Probe:
    """One look at Ollama: reachable or not, with what it said."""

    reachable: bool
    at: float  # time.time()
    latency_ms: float | None = None
    models: tuple[str, ...] = ()
    loaded: tuple[dict[str, Any], ...] | None = None
    reason: str | None = None


class OllamaProbe:
    """Single-flight, deadline-bounded probe of Ollama; remembers the last result."""

    def __init__(self, ollama: OllamaClient, *, deadline: float = PROBE_DEADLINE_SECONDS) -> None:
        self._ollama = ollama
        self._deadline = deadline
        self._lock = threading.Lock()
        self._inflight: Future[Probe] | None = None
        # Two threads: a hung probe (bounded by its read timeout) never blocks the next one.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-probe")
        self.last: Probe | None = None

    def run(self) -> Probe:
        with self._lock:
            future = self._inflight
            if future is None or future.done():
                future = self._pool.submit(self._probe)
                self._inflight = future
        try:
            probe = future.result(timeout=self._deadline)
        except FutureTimeout:
            probe = Probe(reachable=False, at=time.time(), reason="Ollama did not answer in time")
        self.last = probe
        return probe

    def recent(self, max_age_seconds: float) -> Probe:
        """The last result when younger than `max_age_seconds`, else a fresh probe: for callers
        polled often (a metrics scrape every 50 ms from an endpoint picker) that must not turn
        each poll into a call to Ollama."""
        last = self.last
        if last is not None and 0 <= time.time() - last.at < max_age_seconds:
            return last
        return self.run()

    def _probe(self) -> Probe:
        started = time.perf_counter()
        try:
            payload = self._ollama.get_json("/api/tags", read_timeout=self._deadline, retry=False)
        except OllamaTimeout:
            return Probe(False, time.time(), reason="Ollama did not answer in time")
        except OllamaStatusError as exc:
            return Probe(False, time.time(), reason=f"Ollama answered {exc.status}")
        except OllamaError:
            return Probe(False, time.time(), reason="Ollama is not reachable")
        latency = (time.perf_counter() - started) * 1000
        models = tuple(
            m.get("name")
            for m in (payload.get("models") or [] if isinstance(payload, dict) else [])
            if isinstance(m, dict) and isinstance(m.get("name"), str)
        )
        remaining = self._deadline - (time.perf_counter() - started)
        loaded = None
        if remaining > 0.1:
            try:
                # No retries: a probe reports what it sees now. Retrying a refused connection
                # for 1.5 s let a health check straddle an Ollama restart and answer 200.
                loaded = tuple(self._ollama.ps(read_timeout=remaining, retry=False))
            except OllamaError:
                loaded = None
        return Probe(True, time.time(), latency_ms=round(latency, 2), models=models,
                     loaded=loaded)  # fmt: skip

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class HealthChecker:
    def __init__(
        self,
        probe: OllamaProbe,
        sampler: Sampler | None,
        *,
        ollama_log_path: Path | None,
        log_window_seconds: float,
        started_at: float,
    ) -> None:
        self.probe = probe
        self.sampler = sampler
        self.ollama_log_path = ollama_log_path
        self.log_window_seconds = log_window_seconds
        self.started_at = started_at

    def evaluate(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``GET /health``."""
        probe = self.probe.run()
        snapshot = self.sampler.latest() if self.sampler else None
        gpu_memory = health_gpu_memory(snapshot)
        checks = {
            "ollama_api": self._ollama_check(probe),
            "gpu": self._gpu_check(snapshot, gpu_memory),
            "model_loaded": self._loaded_check(probe),
            "error_log": self._log_check(),
        }
        if not probe.reachable:
            status = UNHEALTHY
        elif any(c["status"] in (DEGRADED, FAIL) for c in checks.values()):
            status = "degraded"
        else:
            status = HEALTHY
        body: dict[str, Any] = {
            "status": status,
            "models_count": len(probe.models),
            "models": list(probe.models),
            "gpu_memory": gpu_memory,
            "gpu_status": gpu_status(gpu_memory),
            "checks": checks,
            "version": __version__,
            "uptime_seconds": round(max(0.0, time.time() - self.started_at), 1),
        }
        if status == UNHEALTHY:
            body["reason"] = probe.reason or "Ollama API not responding"
        return (503 if status == UNHEALTHY else 200), body

    @staticmethod
    def _ollama_check(probe: Probe) -> dict[str, Any]:
        if probe.reachable:
            return {"status": OK, "latency_ms": probe.latency_ms}
        return {"status": FAIL, "error": probe.reason}

    @staticmethod
    def _gpu_check(snapshot: Any, gpu_memory: dict[str, Any] | None) -> dict[str, Any]:
        if snapshot is None:
            return {"status": UNKNOWN, "source": None, "detail": "no sample yet"}
        gpu = snapshot.gpu
        state = gpu_status(gpu_memory)
        return {
            "status": {"ok": OK, "critical": DEGRADED}.get(state, UNKNOWN),
            "source": snapshot.gpu_source,
            "memory": gpu_memory,
            "temperature_c": gpu.temperature_c,
            "utilization_percent": gpu.utilization_percent,
        }

    @staticmethod
    def _loaded_check(probe: Probe) -> dict[str, Any]:
        if probe.loaded is None:
            return {"status": UNKNOWN, "loaded": []}
        names = [m.get("name") for m in probe.loaded if isinstance(m.get("name"), str)]
        return {"status": OK, "loaded": names, "count": len(names)}

    def _log_check(self) -> dict[str, Any]:
        path = self.ollama_log_path
        detail: dict[str, Any] = {
            "window_seconds": self.log_window_seconds,
            "path": str(path) if path else None,
        }
        if path is None or not path.exists():
            return {"status": UNKNOWN, **detail, "detail": "no Ollama log to read"}
        try:
            errors = ollama_log.recent_errors(
                path, window_seconds=self.log_window_seconds, now=time.time()
            )
        except OSError:
            return {"status": UNKNOWN, **detail, "detail": "the Ollama log is not readable"}
        if not errors:
            return {"status": OK, **detail, "errors": []}
        return {
            "status": DEGRADED,
            **detail,
            "errors": [{"at": e.at, "line": e.line} for e in errors],
        }
