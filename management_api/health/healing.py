"""Self-healing actions: unload everything, GPU recover, session reset (no Flask).

Unloading for real means more than asking Ollama: a runner with requests in flight unloads only
when they finish, so the healer first pauses admission for the loaded models (new requests queue
instead of reloading them), cancels the requests in flight on them (their clients get a terminal
error saying why), sends Ollama's unload form for each, and polls ``/api/ps`` until they are gone.
Admission resumes in every case.

Concurrency: an unload-all already running is joined, not repeated; a second session reset while
one runs is refused (`ResetInProgress`).
"""

from __future__ import annotations

import logging
import threading
import time
import xmlrpc.client
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from management_api import names
from management_api.ollama import (
    OllamaClient,
    OllamaError,
    OllamaStatusError,
    OllamaUnreachable,
)
from management_api.proxy.gateway import Gateway
from management_api.proxy.limiter import Limiter
from management_api.telemetry import Sampler

log = logging.getLogger(__name__)

PS_POLL_SECONDS = 0.2
MIB = 1024 * 1024
CAN_RETRY_FREE_MB = 512
OLLAMA_PROGRAM = "ollama"


class ResetInProgress(Exception):
    """A session reset is already running."""


class SupervisorUnavailable(Exception):
    """Hard reset asked for, but supervisord's control socket is not there."""


class ModelNotInstalled(Exception):
    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(model)


@dataclass
class UnloadResult:
    unloaded: list[str]
    failed: list[dict[str, str]]
    cancelled_requests: int
    duration_ms: float
    error: str | None = None  # set when Ollama could not even be asked


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    result: UnloadResult | None = None


HEALING_LOG_SIZE = 50


class HealingLog:
    """The last `size` healing actions (newest first when read): what, who, when, outcome.

    Bounded and thread-safe; the routes and the proxy's unload form write, the status page
    reads. Lost on restart, like every counter of the one worker.
    """

    def __init__(self, size: int = HEALING_LOG_SIZE, wall_clock: Callable[[], float] = time.time):
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._wall = wall_clock
        self._sequence = 0

    def record(
        self,
        action: str,
        *,
        who: str | None,
        ok: bool,
        result: str,
        duration_ms: float | None = None,
        via: str = "api",
    ) -> dict[str, Any]:
        """`who` is the API key's name (None: no key presented); `result` one line of words."""
        with self._lock:
            self._sequence += 1
            entry = {
                "id": self._sequence,
                "at": self._wall(),
                "action": action,
                "who": who,
                "via": via,
                "ok": ok,
                "result": result,
                "duration_ms": duration_ms,
            }
            self._entries.append(entry)
            return dict(entry)

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in reversed(self._entries)]


def _unload_form(ollama: OllamaClient, name: str, read_timeout: float) -> None:
    """Ollama's unload form; embedding-only models refuse /api/generate, so use /api/embed."""
    try:
        ollama.post_json("/api/generate", {"model": name, "keep_alive": 0},
                         read_timeout=read_timeout)  # fmt: skip
    except OllamaStatusError as exc:
        if "does not support generate" not in exc.message:
            raise
        ollama.post_json("/api/embed", {"model": name, "input": [], "keep_alive": 0},
                         read_timeout=read_timeout)  # fmt: skip


def _load_form(ollama: OllamaClient, name: str, keep_alive: int | None, timeout: float) -> None:
    body: dict[str, Any] = {"model": name}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    try:
        ollama.post_json("/api/generate", body, read_timeout=timeout)
    except OllamaStatusError as exc:
        if "does not support generate" not in exc.message:
            raise
        ollama.post_json("/api/embed", {**body, "input": []}, read_timeout=timeout)


class Healer:
    def __init__(
        self,
        *,
        ollama: OllamaClient,
        limiter: Limiter,
        gateway: Gateway,
        sampler: Sampler | None,
        default_model: str | None,
        keep_alive_seconds: int | None,
        supervisor_socket: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ollama = ollama
        self.limiter = limiter
        self.gateway = gateway
        self.sampler = sampler
        self.default_model = default_model
        self.keep_alive_seconds = keep_alive_seconds
        self.supervisor_socket = supervisor_socket
        self._clock = clock
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self._reset_lock = threading.Lock()
        self.log = HealingLog()

    # --- unload everything (single-flight)

    def unload_all(self, deadline: float = 8.0, reason: str = "a cache clear") -> UnloadResult:
        with self._lock:
            flight = self._flight
            leader = flight is None
            if leader:
                flight = self._flight = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait(deadline + 2)
            if flight.result is not None:
                return flight.result
            return UnloadResult([], [], 0, 0.0, error="another unload did not finish in time")
        try:
            flight.result = self._unload_all(deadline, reason)
            return flight.result
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()

    def unload_for_proxy(
        self, deadline: float, who: str | None = None
    ) -> tuple[list[str], list[dict[str, str]]]:
        """The shape the proxy's ``{"model": "", "keep_alive": 0}`` form needs (the
        self-healing agent's cache clear); recorded in the healing log like the routes."""
        result = self.unload_all(deadline=deadline, reason="an unload of all models")
        failed = list(result.failed)
        if result.error:
            failed.append({"model": "*", "error": result.error})
        if failed:
            outcome = result.error or f"{len(failed)} model(s) stayed loaded"
        else:
            outcome = f"{len(result.unloaded)} model(s) unloaded"
        self.log.record("unload_all", who=who, ok=not failed, result=outcome,
                        duration_ms=result.duration_ms, via="proxy")  # fmt: skip
        return result.unloaded, failed

    def _unload_all(self, deadline: float, reason: str) -> UnloadResult:
        started = self._clock()
        try:
            loaded = self.ollama.ps(read_timeout=min(2.0, deadline))
        except OllamaError:
            return UnloadResult([], [], 0, 0.0, error="Ollama is not reachable")
        targets = sorted({m["name"] for m in loaded if isinstance(m.get("name"), str)})
        if not targets:
            return UnloadResult([], [], 0, round((self._clock() - started) * 1000, 1))
        keys = {name: self._key(name) for name in targets}
        for key in keys.values():
            self.limiter.pause(key)
        cancelled = 0
        failed: dict[str, str] = {}
        try:
            for name, key in keys.items():
                cancelled += self.gateway.cancel_model(
                    key, f"model '{name}' was unloaded by {reason}"
                )
            remaining = max(0.5, deadline - (self._clock() - started))
            with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
                futures = {
                    name: pool.submit(_unload_form, self.ollama, name, remaining)
                    for name in targets
                }
                for name, future in futures.items():
                    try:
                        future.result()
                    except OllamaError:
                        failed[name] = "Ollama refused the unload"
            still = self._wait_until_gone(set(targets), started + deadline)
        finally:
            for key in keys.values():
                self.limiter.resume(key)
        for name in still:
            failed.setdefault(name, "still loaded when the deadline passed")
        unloaded = [n for n in targets if n not in failed]
        failures = [{"model": n, "error": why} for n, why in sorted(failed.items())]
        duration = round((self._clock() - started) * 1000, 1)
        log.info("unloaded %s (failed %s, cancelled %d requests) in %.0f ms",
                 unloaded, failures, cancelled, duration)  # fmt: skip
        return UnloadResult(unloaded, failures, cancelled, duration)

    def _wait_until_gone(self, names_left: set[str], until: float) -> set[str]:
        while names_left:
            try:
                present = {m.get("name") for m in self.ollama.ps(read_timeout=2.0)}
            except OllamaError:
                present = names_left  # unknown: keep waiting
            names_left = {n for n in names_left if n in present}
            if not names_left or self._clock() >= until:
                break
            time.sleep(PS_POLL_SECONDS)
        return names_left

    @staticmethod
    def _key(name: str) -> str:
        try:
            return names.normalize(name)
        except names.InvalidModelName:
            return name.lower()

    # --- GPU recover

    def _gpu_memory(self) -> tuple[int | None, int | None]:
        """(used, free) bytes of GPU memory, read now; (None, None) when unknown."""
        if self.sampler is None:
            return None, None
        try:
            _source, gpu = self.sampler.read_gpu()
        except Exception:  # a telemetry source failing must not fail the recovery itself
            log.exception("GPU reading failed during recovery")
            return None, None
        free = gpu.memory_free_bytes
        if (
            free is None
            and gpu.memory_total_bytes is not None
            and gpu.memory_used_bytes is not None
        ):
            free = gpu.memory_total_bytes - gpu.memory_used_bytes
        return gpu.memory_used_bytes, free

    def gpu_recover(self, deadline: float = 9.0) -> dict[str, Any]:
        used_before, free_before = self._gpu_memory()
        result = self.unload_all(deadline=deadline, reason="a GPU recovery")
        used_after, free_after = self._gpu_memory()
        freed = None
        if free_before is not None and free_after is not None:
            freed = max(0, free_after - free_before)
        elif used_before is not None and used_after is not None:
            freed = max(0, used_before - used_after)
        free_mb = free_after // MIB if free_after is not None else None
        return {
            "result": result,
            "freed_mb": freed // MIB if freed is not None else 0,
            "free_mb": free_mb,
            "can_retry": not result.failed
            and not result.error
            and (free_mb is None or free_mb >= CAN_RETRY_FREE_MB),
        }

    # --- session reset

    def session_reset(self, model: str | None = None, hard: bool = False) -> dict[str, Any]:
        if not self._reset_lock.acquire(blocking=False):
            raise ResetInProgress()
        try:
            return self._session_reset(model or self.default_model, hard)
        finally:
            self._reset_lock.release()

    def _session_reset(self, model: str | None, hard: bool) -> dict[str, Any]:
        if hard:
            self.restart_ollama()
        result = self.unload_all(deadline=8.0, reason="a session reset")
        if result.error:
            raise OllamaUnreachable(result.error)
        if not model:
            return {"result": result, "model": None, "load_duration_ms": None}
        installed = {self._key(m.get("name", "")) for m in self.ollama.tags(read_timeout=5)}
        if self._key(model) not in installed:
            raise ModelNotInstalled(model)
        started = self._clock()
        _load_form(self.ollama, model, self.keep_alive_seconds, timeout=120)
        loaded = {self._key(m.get("name", "")) for m in self.ollama.ps(read_timeout=5)}
        if self._key(model) not in loaded:
            raise OllamaError(f"model '{model}' did not appear in /api/ps after loading")
        return {
            "result": result,
            "model": model,
            "load_duration_ms": round((self._clock() - started) * 1000, 1),
        }

    def restart_ollama(self, wait_seconds: float = 60.0) -> None:
        """Restart the `ollama` program through supervisord's XML-RPC interface, then wait
        until Ollama answers again."""
        path = self.supervisor_socket
        if path is None or not Path(path).exists():
            raise SupervisorUnavailable()
        from supervisor.xmlrpc import SupervisorTransport  # only needed here

        transport = SupervisorTransport(None, None, f"unix://{path}")
        server = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            server.supervisor.stopProcess(OLLAMA_PROGRAM, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise
        server.supervisor.startProcess(OLLAMA_PROGRAM, True)
        until = self._clock() + wait_seconds
        while self._clock() < until:
            try:
                self.ollama.version(read_timeout=2, retry=False)
                return
            except OllamaError:
                time.sleep(0.25)
        raise OllamaUnreachable("Ollama did not come back after the restart")
