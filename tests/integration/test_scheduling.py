"""Scheduling across models through the real service (gunicorn + the emulator, real sockets).

The bench scenario (bench/swap_bench.py) scaled down: two models that do not fit together,
alternating requests, model load 0.5 s. Performance itself is measured in `make bench`; here
only what must hold: affinity needs fewer loads than fifo, Ollama never sees more than a model's
limit, and the fairness bound lets a held model in.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.swap_bench import MODELS, alternating_run, limits_text, prepare_emulator
from tests.integration.conftest import started_service
from tests.service_harness import ServiceProcess

A, B = MODELS


@pytest.fixture(scope="module")
def service_process(emulator, tmp_path_factory) -> Iterator[tuple[ServiceProcess, Path]]:
    """A service of this module's own. What the scheduler believes loaded is read from
    /api/ps every 30 s and kept up by its own admissions; emulator.reset() unloads behind its
    back. On the session's service an earlier test could leave A and B both believed loaded
    (seen under pytest-xdist, where other modules run before this one in a worker), and
    affinity then never holds anything. A fresh service reads /api/ps at its first request."""
    prepare_emulator(emulator, load_seconds=0.5)
    with started_service(emulator, tmp_path_factory) as started:
        yield started


def test_affinity_needs_fewer_loads_than_fifo(service, emulator):
    runs = {}
    for policy in ("fifo", "affinity"):
        service.set_limits(limits_text(policy))
        prepare_emulator(emulator, load_seconds=0.5)
        runs[policy] = alternating_run(
            service.proxy, emulator, requests_total=12, spread_seconds=0.6
        )
    for run in runs.values():
        assert run["statuses"] == [200] and run["ok"] == 12
        # Each model is limited to 1 in the proxy: Ollama never saw more.
        assert all(count <= 1 for count in run["max_in_flight"].values()), run
    fifo, affinity = runs["fifo"]["loads"], runs["affinity"]["loads"]
    shown = json.dumps(runs)  # in full: pytest shortens a dict
    assert fifo >= 6, shown  # alternating traffic: almost every request swaps
    assert affinity < fifo, shown
    assert affinity <= fifo // 2 + 1, shown

    snapshot = requests.get(service.management + "/api/limits", timeout=5).json()
    scheduler = snapshot["scheduler"]
    assert scheduler["policy"] == "affinity"
    assert scheduler["effective_max_loaded_models"] == 1
    assert len(scheduler["loaded"]) == 1
    assert scheduler["swaps"] >= 1
    assert all(model["held"] is False for model in snapshot["models"])  # all done
    metrics = requests.get(service.management + "/metrics", timeout=5).text
    assert "llm_service_swaps_total{" in metrics
    assert "llm_service_held_seconds_bucket{" in metrics


def test_fairness_bound_admits_a_held_model_under_a_steady_stream(service, emulator):
    """A steady stream for A keeps A busy; one request for B gets in after max_hold + drain."""
    hold = 1.0
    service.set_limits(limits_text("affinity", max_hold_seconds=hold))
    prepare_emulator(emulator, load_seconds=0.2, tokens=20)  # ~100 ms per A request
    stop = threading.Event()
    a_done: list[int] = []

    def stream_a() -> None:
        while not stop.is_set():
            body = {"model": A, "prompt": "a", "stream": False}
            response = requests.post(service.proxy + "/api/generate", json=body, timeout=30)
            a_done.append(response.status_code)

    clients = [threading.Thread(target=stream_a, daemon=True) for _ in range(5)]
    for client in clients:
        client.start()
    try:
        service.wait_for(lambda: len(a_done) >= 3)  # A is loaded and busy
        started = time.monotonic()
        body = {"model": B, "prompt": "b", "stream": False}
        response = requests.post(service.proxy + "/api/generate", json=body, timeout=30)
        b_latency = time.monotonic() - started
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    assert response.status_code == 200
    queue_wait = float(response.headers["X-Queue-Wait-Ms"]) / 1000
    # Held: five clients keep A's queue non-empty, so B waits for the hold to run out...
    assert queue_wait >= hold * 0.8, queue_wait
    # ...and not much longer: the drain (one A request) plus B's load and generation.
    assert b_latency < hold + 5.0, b_latency
    assert set(a_done) == {200}
    assert emulator.observations()["max_in_flight"].get(A, 0) <= 1


def test_limits_shows_a_held_model_and_why(service, emulator):
    service.set_limits(limits_text("affinity", max_hold_seconds=30))
    prepare_emulator(emulator, load_seconds=0.05)
    emulator.set_model(A, tokens=30, tokens_per_second=20, ttft_seconds=0)  # 1.5 s
    results: dict[str, int] = {}

    def post(model: str) -> None:
        body = {"model": model, "prompt": "x", "stream": False}
        results[model] = requests.post(
            service.proxy + "/api/generate", json=body, timeout=30
        ).status_code

    first = threading.Thread(target=post, args=(A,))
    first.start()
    service.wait_for(lambda: service.model_counters(A)["in_flight"] == 1)
    second = threading.Thread(target=post, args=(B,))
    second.start()
    service.wait_for(lambda: service.model_counters(B)["queued"] == 1)
    view = service.model_counters(B)
    assert view["held"] is True
    assert view["held_reason"] == {"reason": "needs_swap", "blocked_by": [A]}
    assert service.model_counters(A)["held"] is False
    first.join(30)
    second.join(30)
    assert results == {A: 200, B: 200}
    assert service.model_counters(B)["held"] is False

    def held_ms() -> list[float]:
        lines = [
            json.loads(line[line.index("{") :])
            for line in service.process.output().splitlines()
            if "llm_service.access" in line and '"held_ms"' in line
        ]
        return [line["held_ms"] for line in lines if line.get("model_key") == B]

    service.wait_for(lambda: bool(held_ms()), timeout=5)
    assert held_ms()[-1] >= 1000  # held while A's 1.5 s generation ran
