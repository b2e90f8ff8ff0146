"""The service under test: the container's process tree with the emulator as Ollama.

entrypoint.sh -> supervisord (the real supervisord.conf) -> the emulator (through the ollama
shim) + gunicorn, on free loopback ports, so that killing the `ollama` program is a real crash
that supervisord repairs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from typing import Any

import psutil
import requests

from tests.e2e.supervised import SupervisedService, wait_until

# Three models with different limits; the emulator runs more in parallel than any of them, so
# what it observes is the proxy's limiting, not its own.
MODEL_LIMITS = {"llama3.2:1b": 1, "qwen3:14b-q8": 2, "gemma3:4b": 4}
EMULATOR_PARALLEL = 8
FIRST_BYTE_TIMEOUT_S = 6
IDLE_TIMEOUT_S = 3
MAX_WAIT_S = 6
GRACE_S = 3
ACCESS_MARK = "llm_service.access: "


def limits_toml() -> str:
    lines = [
        "[defaults]",
        "max_concurrency = 1",
        "max_queue = 4",
        f"max_wait_seconds = {MAX_WAIT_S}",
        f"first_byte_timeout_seconds = {FIRST_BYTE_TIMEOUT_S}",
        f"idle_timeout_seconds = {IDLE_TIMEOUT_S}",
    ]
    for model, limit in MODEL_LIMITS.items():
        lines += ["", "[[models]]", f'match = "{model}"', f"max_concurrency = {limit}"]
        lines.append(f"max_queue = {2 * limit + 2}")
    return "\n".join(lines) + "\n"


class Stack:
    """One supervised service; every call is bounded by a timeout."""

    def __init__(self, extra_env: dict[str, str] | None = None, emulator_args: str = "") -> None:
        self.service = SupervisedService()
        limits = self.service.state_dir / "limits.toml"
        limits.write_text(limits_toml())
        self.service.env.update(
            {
                "LLM_LIMITS_FILE": str(limits),
                "LLM_UPSTREAM_GRACE_SECONDS": str(GRACE_S),
                "LLM_WORKER_THREADS": "256",
                "LLM_STATS_INTERVAL": "5",
                "OLLAMA_NUM_PARALLEL": str(EMULATOR_PARALLEL),
                "OLLAMA_MAX_LOADED_MODELS": "4",
                # Streams long enough to leave mid-way, loads long enough to leave during one;
                # a client that leaves during prompt evaluation holds its slot, as in Ollama.
                "FAKE_OLLAMA_ARGS": "--tokens 16 --tokens-per-second 80 --ttft-seconds 0.1"
                " --prompt-eval-uncancellable"
                f" --load-seconds 0.4 {emulator_args}".strip(),
                # Widens the restart window so /health's 503 during an outage is observable.
                "FAKE_OLLAMA_START_DELAY": "1",
                **(extra_env or {}),
            }
        )

    # --- lifecycle

    def start(self) -> Stack:
        self.service.start(timeout=90)
        self.service.wait_program_running("ollama", timeout=60)
        self.service.wait_program_running("api", timeout=60)
        return self

    def stop(self) -> None:
        self.service.stop()

    @property
    def proxy_port(self) -> int:
        return self.service.proxy_port

    @property
    def management(self) -> str:
        return self.service.management

    # --- supervisord

    def ollama_info(self) -> dict[str, Any]:
        return self.service.program("ollama")

    def ollama_pid(self) -> int | None:
        info = self.ollama_info()
        return info["pid"] if info["statename"] == "RUNNING" else None

    def kill_ollama(self) -> int:
        """SIGKILL the running Ollama (the emulator itself: the shim execs it)."""
        pid = self.ollama_pid()
        if pid is None:
            raise RuntimeError("ollama is not RUNNING")
        os.kill(pid, signal.SIGKILL)
        return pid

    def api_worker(self) -> psutil.Process:
        """The gunicorn worker: the one process holding limits, caches and threads."""
        master = psutil.Process(self.service.program("api")["pid"])

        def worker() -> psutil.Process | None:
            children = master.children()
            return children[0] if len(children) == 1 else None

        return wait_until(worker, 30, "the gunicorn worker")

    # --- the emulator's control plane

    def fault(self, kind: str, **spec: Any) -> None:
        response = requests.post(
            self.service.ollama + "/_fake/faults", json={"kind": kind, **spec}, timeout=5
        )
        response.raise_for_status()

    def observations(self) -> dict[str, Any]:
        response = requests.get(self.service.ollama + "/_fake/observations", timeout=10)
        response.raise_for_status()
        return response.json()

    # --- the service

    def limits(self) -> dict[str, Any]:
        return requests.get(self.management + "/api/limits", timeout=5).json()

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 30) -> int:
        return requests.post(self.management + path, json=body, timeout=timeout).status_code

    def access_log(self, prefix: str) -> dict[str, list[dict[str, Any]]]:
        """The service's access-log lines for our request ids (each should appear once)."""
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in self.service.output().splitlines():
            at = line.find(ACCESS_MARK)
            if at < 0:
                continue
            try:
                entry = json.loads(line[at + len(ACCESS_MARK) :])
            except ValueError:
                continue
            request_id = entry.get("request_id") or ""
            if request_id.startswith(prefix):
                found[request_id].append(entry)
        return found

    def wait_idle(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the limiter holds nothing; return its last totals either way."""
        deadline = time.monotonic() + timeout
        while True:
            totals = self.limits()["totals"]
            if (totals["in_flight"] == 0 and totals["queued"] == 0) or (
                time.monotonic() > deadline
            ):
                return totals
            time.sleep(0.2)
