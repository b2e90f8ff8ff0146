"""/health over real sockets: each check's states, bounds, and healthcheck.sh."""

from __future__ import annotations

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tests.service_harness import ROOT, ServiceProcess, free_port


def fresh_line(message: str) -> str:
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return f'time={now}.000Z level=INFO source=routes.go:1 msg="x"\n{message}\n'


def test_healthy_with_legacy_fields(service):
    response = requests.get(service.management + "/health", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert isinstance(body["models_count"], int) and body["models_count"] == len(body["models"])
    assert "llama3.2:latest" in body["models"]
    assert body["gpu_status"] in ("ok", "critical", "unknown")
    assert "gpu_memory" in body
    assert set(body["checks"]) == {"ollama_api", "gpu", "model_loaded", "error_log"}
    assert body["checks"]["ollama_api"]["status"] == "ok"
    assert body["checks"]["error_log"]["status"] == "ok"
    assert body["uptime_seconds"] >= 0 and body["version"]


def test_zero_models_is_healthy(service, emulator):
    for model in requests.get(emulator.url + "/api/tags", timeout=5).json()["models"]:
        requests.delete(emulator.url + "/api/delete", json={"model": model["name"]}, timeout=5)
    body = requests.get(service.management + "/health", timeout=5).json()
    assert body["status"] == "healthy" and body["models_count"] == 0 and body["models"] == []


def test_fresh_cuda_error_degrades_old_one_does_not(service):
    old = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600))
    service.ollama_log.write_text(
        f'time={old}.000Z level=ERROR source=server.go:1 msg="llama-server terminated"\n'
    )
    assert requests.get(service.management + "/health", timeout=5).json()["status"] == "healthy"
    with service.ollama_log.open("a") as fh:
        fh.write(fresh_line("CUDA error: out of memory"))
    response = requests.get(service.management + "/health", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["error_log"]["status"] == "degraded"
    assert "CUDA error" in body["checks"]["error_log"]["errors"][0]["line"]


def test_ollama_hanging_gives_503_within_3_s(service, emulator):
    emulator.fault("hang", route="/api/tags", times=0)
    try:
        started = time.monotonic()
        response = requests.get(service.management + "/health", timeout=10)
        elapsed = time.monotonic() - started
    finally:
        emulator.clear_faults()
    assert response.status_code == 503
    assert elapsed <= 3.0
    body = response.json()
    assert body["status"] == "unhealthy" and body["reason"]
    assert body["checks"]["ollama_api"]["status"] == "fail"


def test_ollama_down_gives_503_fast():
    with ServiceProcess(env={"LLM_OLLAMA_LOG_FILE": "/nonexistent/ollama.log"}) as service:
        started = time.monotonic()
        response = requests.get(service.management_url + "/health", timeout=10)
        assert time.monotonic() - started <= 3.0
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["reason"] == "Ollama is not reachable"
        assert body["checks"]["error_log"]["status"] == "unknown"
        assert "Retry-After" in response.headers


def test_health_answers_while_the_proxy_is_saturated(service, emulator):
    from tests.integration.test_proxy import MODEL, post_async, slow

    slow(emulator, MODEL, seconds=2)
    url = service.proxy + "/api/generate"
    threads = [post_async(url, {"model": MODEL, "prompt": "hold"})]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, {"model": MODEL, "prompt": "q"}) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    started = time.monotonic()
    assert requests.get(service.management + "/health", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0
    for thread, _ in threads:
        thread.join(20)


# --- healthcheck.sh


def run_healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LLM_MANAGEMENT_URL": url, "LLM_HEALTHCHECK_TIMEOUT": "2"}
    return subprocess.run(
        ["bash", str(ROOT / "healthcheck.sh")], env=env, capture_output=True, text=True, timeout=10
    )


class _Canned(BaseHTTPRequestHandler):
    status = 200
    body = b"{}"
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def canned_server(status: int, body: bytes, delay: float = 0.0) -> ThreadingHTTPServer:
    handler = type("Handler", (_Canned,), {"status": status, "body": body, "delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_healthcheck_script_exit_codes(service):
    healthy = run_healthcheck(service.management)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("healthy: /health answered 200 (status healthy)")

    degraded = canned_server(200, b'{"status": "degraded", "checks": {"gpu": {"status": "ok"}}}')
    unhealthy = canned_server(
        503, b'{"status": "unhealthy", "reason": "Ollama API not responding"}'
    )
    slow = canned_server(200, b'{"status": "healthy"}', delay=5)
    try:
        result = run_healthcheck(f"http://127.0.0.1:{degraded.server_port}")
        assert (result.returncode, result.stdout.strip()) == (
            0,
            "healthy: /health answered 200 (status degraded)",
        )
        result = run_healthcheck(f"http://127.0.0.1:{unhealthy.server_port}")
        assert (result.returncode, result.stdout.strip()) == (
            1,
            "unhealthy: /health answered 503 (Ollama API not responding)",
        )
        started = time.monotonic()
        result = run_healthcheck(f"http://127.0.0.1:{slow.server_port}")
        assert result.returncode == 1 and "within 2 s" in result.stdout
        assert time.monotonic() - started < 4
        result = run_healthcheck(f"http://127.0.0.1:{free_port()}")
        assert result.returncode == 1 and result.stdout.startswith("unhealthy: no answer")
    finally:
        for server in (degraded, unhealthy, slow):
            server.shutdown()
