"""Start the emulator in a subprocess and drive its ``/_fake`` control plane.

    with FakeOllama(num_parallel=2) as fake:
        requests.post(fake.url + "/api/generate", json={...})
        fake.fault("drop_mid_stream", route="/api/generate", after_chunks=3)
        fake.wait_for(lambda: fake.observations()["loads"] == 1)

Times in observations are ``time.monotonic()`` seconds of the emulator process; on
Linux that clock is system-wide, so they compare with this process's readings.
Only the standard library and ``requests`` are used, so any test package may import it.
"""

from __future__ import annotations

import collections
import inspect
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "fake-ollama listening on "

_OPTION_FLAGS = {
    "models": "--models",
    "num_parallel": "--num-parallel",
    "max_queue": "--max-queue",
    "max_loaded_models": "--max-loaded-models",
    "keep_alive": "--keep-alive",
    "load_seconds": "--load-seconds",
    "ttft_seconds": "--ttft-seconds",
    "tokens_per_second": "--tokens-per-second",
    "tokens": "--tokens",
    "pull_bytes_per_second": "--pull-bytes-per-second",
}


class EmulatorStartError(RuntimeError):
    """The emulator did not announce its port in time; the message holds its output."""


class FakeOllama:
    """A ``python -m tests.fake_ollama`` subprocess on 127.0.0.1 and a free port."""

    def __init__(
        self,
        *extra_args: str,
        startup_timeout: float = 15.0,
        env: dict[str, str] | None = None,
        loopback_checks: bool = False,
        **options: Any,
    ) -> None:
        args = ["--host", "127.0.0.1", "--port", "0", "--exit-with-parent"]
        for key, value in options.items():
            flag = _OPTION_FLAGS.get(key)
            if flag is None:
                raise TypeError(f"unknown emulator option {key!r}")
            if key == "models" and not isinstance(value, str):
                value = ",".join(value)
            args += [flag, str(value)]
        if loopback_checks:
            args.append("--loopback-checks")
        self.args = [*args, *extra_args]
        self.startup_timeout = startup_timeout
        self.env = env
        self.url = ""
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._session = requests.Session()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeOllama:
        env = {**os.environ, **(self.env or {})}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_ollama", *self.args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.01, remaining))
            except queue.Empty:
                line = None
                if time.monotonic() < deadline:
                    continue
            if line is not None and line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
            if line is None or self.process.poll() is not None:
                self.stop()
                raise EmulatorStartError(
                    "fake-ollama did not start within "
                    f"{self.startup_timeout:g} s; output:\n{self.output()}"
                )

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            self._output.append(line)
            if not self.url:  # only start() reads the queue
                self._lines.put(line)
        self._lines.put(None)

    def output(self) -> str:
        """The last lines the emulator printed (stdout and stderr)."""
        return "\n".join(self._output)

    def stop(self) -> None:
        self._session.close()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- control plane -------------------------------------------------------------------

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._session.request(method, self.url + path, json=body, timeout=10)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def fault(
        self,
        kind: str,
        *,
        route: str = "*",
        model: str | None = None,
        times: int = 1,
        **params: Any,
    ) -> str:
        """Arm a fault (see ``control_routes``); returns its id."""
        body = {"kind": kind, "route": route, "model": model, "times": times, **params}
        return self._control("POST", "/_fake/faults", body)["id"]

    def script(self, model: str, **spec: Any) -> str:
        """Script the next answers of a model (see ``scripts``): content, json, ttft_seconds,
        tokens_per_second, status, message, times; returns its id."""
        return self._control("POST", "/_fake/scripts", {"model": model, **spec})["id"]

    def clear_faults(self) -> None:
        self._control("DELETE", "/_fake/faults")

    def observations(self) -> dict[str, Any]:
        return self._control("GET", "/_fake/observations")

    def connections(self, **match: Any) -> list[dict[str, Any]]:
        """Recorded requests whose fields equal every ``match`` item, oldest first."""
        return [
            record
            for record in self.observations()["connections"]
            if all(record.get(key) == value for key, value in match.items())
        ]

    def reset(self) -> None:
        """Back to the start state: models, runners, pulls, faults, observations, settings."""
        self._control("POST", "/_fake/reset")

    def set_model(self, model: str, **timing: float) -> dict[str, Any]:
        """Per-model timing: load_seconds, ttft_seconds, tokens_per_second, tokens."""
        return self._control("POST", "/_fake/models", {"model": model, **timing})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Runtime settings: num_parallel, max_queue, max_loaded_models, loopback_checks, …"""
        return self._control("POST", "/_fake/config", settings)

    def wait_for(
        self,
        predicate: Callable[..., Any],
        timeout: float = 5.0,
        interval: float = 0.02,
    ) -> Any:
        """Poll until ``predicate`` returns a truthy value and return it.

        A predicate taking one argument receives fresh observations on every poll.
        """
        wants_observations = _arity(predicate) >= 1
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.observations()) if wants_observations else predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout:g} s")
            time.sleep(interval)


def _arity(fn: Callable[..., Any]) -> int:
    try:
        parameters: Iterable[inspect.Parameter] = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(
        1
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )
