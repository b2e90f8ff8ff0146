"""Fixtures: the Ollama emulator and the real service under gunicorn, talking over loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess

BASE_LIMITS = """
[defaults]
max_concurrency = 1
max_queue = 2
max_wait_seconds = 30
first_byte_timeout_seconds = 10
idle_timeout_seconds = 3

[[models]]
match = "qwen3:14b-q8"
max_concurrency = 2
max_queue = 200

[[models]]
match = "gemma3:4b"
max_concurrency = 4
max_queue = 200

[[models]]
match = "llama3.2:1b"
max_concurrency = 1
max_queue = 200
"""


@pytest.fixture(scope="session")
def emulator() -> Iterator[FakeOllama]:
    # Parallel slots well above our limits, so that what the emulator observes is our limiting.
    with FakeOllama(num_parallel=64, max_loaded_models=8) as fake:
        yield fake


class Service:
    """The running service plus helpers the proxy tests share."""

    def __init__(self, process: ServiceProcess, limits_file: Path) -> None:
        self.process = process
        self.limits_file = limits_file
        self.ollama_log = limits_file.parent / "ollama.log"
        self.proxy = process.proxy_url
        self.management = process.management_url

    def set_limits(self, text: str) -> None:
        self.limits_file.write_text(text)
        response = requests.post(self.management + "/api/limits/reload", timeout=5)
        assert response.status_code == 200, response.text

    def model_counters(self, model: str) -> dict:
        snapshot = requests.get(self.management + "/api/limits", timeout=5).json()
        for entry in snapshot["models"]:
            if entry["model"] == model:
                return entry
        return {"in_flight": 0, "queued": 0, "rejected": {}}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"condition not met within {timeout} s")

    def totals(self) -> dict:
        return requests.get(self.management + "/api/limits", timeout=5).json()["totals"]


@contextmanager
def started_service(
    emulator: FakeOllama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, Path]]:
    """The service in front of ``emulator``, with its limits file (``BASE_LIMITS``)."""
    state = tmp_path_factory.mktemp("service")
    limits_file = state / "limits.toml"
    limits_file.write_text(BASE_LIMITS)
    (state / "ollama.log").write_text("")
    env = {
        "LLM_OLLAMA_LOG_FILE": str(state / "ollama.log"),
        "LLM_HEALTH_LOG_WINDOW": "60",
        "LLM_MODEL": "llama3.2:1b",
        "LLM_STATS_INTERVAL": "0.5",
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(limits_file),
        "LLM_LIMITS_RELOAD_SECONDS": "0.2",
        "LLM_UPSTREAM_GRACE_SECONDS": "1",
        "LLM_MODEL_CACHE_TTL": "1",
        "LLM_WORKER_THREADS": "512",
    }
    with ServiceProcess(env=env) as process:
        yield process, limits_file


@pytest.fixture(scope="session")
def service_process(emulator, tmp_path_factory) -> Iterator[tuple[ServiceProcess, Path]]:
    with started_service(emulator, tmp_path_factory) as started:
        yield started


@pytest.fixture
def service(service_process, emulator) -> Iterator[Service]:
    process, limits_file = service_process
    svc = Service(process, limits_file)
    svc.ollama_log.write_text("")
    emulator.reset()
    svc.set_limits(BASE_LIMITS)
    yield svc
    process.assert_alive()
    # Nothing may leak from one test into the next.
    svc.wait_for(lambda: svc.totals()["in_flight"] == 0 and svc.totals()["queued"] == 0)
