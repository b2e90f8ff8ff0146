"""/api/stats, /api/stats/history, /api/info and /metrics over real sockets."""

from __future__ import annotations

import time

import requests
from prometheus_client.parser import text_string_to_metric_families


def test_stats_legacy_keys_and_sections(service):
    service.wait_for(
        lambda: (
            requests.get(service.management + "/api/stats", timeout=5).json()["cpu_percent"]
            is not None
        )
    )
    started = time.perf_counter()
    body = requests.get(service.management + "/api/stats", timeout=5).json()
    assert time.perf_counter() - started < 1
    for key in ("gpu_utilization", "gpu_memory", "gpu_temperature"):
        assert isinstance(body[key], str)
    assert isinstance(body["process_memory_mb"], float)
    assert isinstance(body["cpu_percent"], float)
    assert body["timestamp"].endswith("Z")
    assert body["gpu"]["source"] == "none" and body["gpu"]["utilization_percent"] is None
    assert body["gpu_utilization"] == "N/A"
    for section in ("cpu", "memory", "swap", "disk", "gpu", "ollama", "proxy"):
        assert section in body
    assert body["interval_seconds"] == 0.5


def test_history(service):
    service.wait_for(
        lambda: (
            requests.get(service.management + "/api/stats/history", timeout=5).json()["count"] >= 2
        )
    )
    body = requests.get(service.management + "/api/stats/history?seconds=60", timeout=5).json()
    assert body["count"] == len(body["points"]) >= 2
    assert (
        requests.get(service.management + "/api/stats/history?seconds=abc", timeout=5).status_code
        == 400
    )


def test_info(service, emulator):
    body = requests.get(service.management + "/api/info", timeout=5).json()
    assert body["service"] == "llm-service"
    assert body["api_port"] == service.process.management_port
    assert body["proxy_port"] == service.process.proxy_port
    assert body["default_model"] == "llama3.2:1b"
    assert body["ollama_url"] == emulator.url
    assert body["ollama_version"]
    assert body["platform"]["jetson"] is False
    assert body["telemetry_source"] == "none"
    assert body["limits"]["defaults"]["max_concurrency"] == 1


def test_metrics_parse_and_carry_limiter_and_telemetry_series(service):
    requests.post(
        service.proxy + "/api/generate",
        json={"model": "llama3.2:latest", "prompt": "x", "stream": False},
        timeout=10,
    )
    response = requests.get(service.management + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "llm_service_in_flight",
        "llm_service_queued",
        "llm_service_admitted",
        "llm_service_queue_wait_seconds",
        "llm_service_request_duration_seconds",
        "llm_service_ollama_up",
        "llm_service_cpu_percent",
        "llm_service_generated_tokens",
        "llm_service_pull_jobs",
    ):
        assert name in families, name
    up = families["llm_service_ollama_up"].samples[0].value
    assert up == 1.0
    admitted = {
        s.labels["model"]: s.value
        for s in families["llm_service_admitted"].samples
        if s.name.endswith("_total")
    }
    assert admitted.get("llama3.2:latest", 0) >= 1
