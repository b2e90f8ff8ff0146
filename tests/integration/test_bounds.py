"""Careless and hostile clients against the real worker: the probe answers, slots come back.

One service with a small pool (16 threads) and low bounds (2 s head timeout, 2 s send
timeout), so every case runs in seconds: what exhausts 16 threads exhausts 256 the same way.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess, run_gunicorn_expecting_exit

THREADS = 16
HEADER_TIMEOUT = 2.0
SEND_TIMEOUT = 2.0
MODELS = ("qwen3:14b-q8", "gemma3:4b", "llama3.2:1b")
LIMITS = """
[defaults]
max_concurrency = 1
max_queue = 6
max_wait_seconds = 30
first_byte_timeout_seconds = 30
idle_timeout_seconds = 30
release_timeout_seconds = 5
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(num_parallel=64, max_loaded_models=8) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def service(fake, tmp_path_factory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("bounds")
    limits = state / "limits.toml"
    limits.write_text(LIMITS)
    (state / "ollama.log").write_text("")
    env = {
        "OLLAMA_URL": fake.url,
        "LLM_LIMITS_FILE": str(limits),
        "LLM_OLLAMA_LOG_FILE": str(state / "ollama.log"),
        "LLM_WORKER_THREADS": str(THREADS),
        "LLM_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "LLM_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
        "LLM_UPSTREAM_GRACE_SECONDS": "1",
        "LLM_MODEL_CACHE_TTL": "1",
    }
    with ServiceProcess(env=env) as process:
        yield process


@pytest.fixture(autouse=True)
def _clean(fake, service) -> Iterator[None]:
    fake.reset()
    yield
    service.assert_alive()
    _wait(lambda: _totals(service)["in_flight"] == 0 and _totals(service)["queued"] == 0, 20)


def _totals(service: ServiceProcess) -> dict:
    return requests.get(service.management_url + "/api/limits", timeout=10).json()["totals"]


def _wait(predicate, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def probe_latencies(url: str, count: int, interval: float = 0.1) -> list[float]:
    """Seconds each ``GET /health/live`` took (a probe that fails or times out counts 5 s)."""
    took = []
    for _ in range(count):
        started = time.monotonic()
        try:
            response = requests.get(url + "/health/live", timeout=5)
            ok = response.status_code == 200 and response.json()["status"] == "alive"
        except requests.RequestException:
            ok = False
        took.append(time.monotonic() - started if ok else 5.0)
        time.sleep(interval)
    return took


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@contextmanager
def slowloris(port: int, count: int, gap: float = 0.5) -> Iterator[list[socket.socket]]:
    """``count`` connections that each send a request line, then one header line every ``gap``."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in socks:
            with suppress(OSError):
                sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while not stop.wait(gap):
            n += 1
            for sock in socks:
                with suppress(OSError):
                    sock.sendall(b"X-Slow-%d: y\r\n" % n)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield socks
    finally:
        stop.set()
        thread.join(5)
        for sock in socks:
            sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.settimeout(0.01)
        return sock.recv(65536) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def test_probe_answers_under_slowloris_and_heads_are_bounded(service):
    with slowloris(service.management_port, THREADS * 3) as socks:
        time.sleep(0.5)
        took = probe_latencies(service.management_url, 15)
        print(f"probe p99 {p99(took) * 1000:.1f} ms beside {len(socks)} slowloris sockets")
        assert p99(took) < 1.0, took
        # Still trickling, yet closed: nobody sent a whole head within the bound.
        waited = _wait(lambda: all(_closed_by_server(s) for s in socks), HEADER_TIMEOUT + 3)
        assert waited < HEADER_TIMEOUT + 2.5
    # A normal request after the storm is served at once.
    assert requests.get(service.proxy_url + "/api/tags", timeout=5).status_code == 200


def _stream_request(url: str, model: str, out: list, timeout: float = 60) -> None:
    try:
        with requests.post(
            url + "/api/generate",
            json={"model": model, "prompt": "hold", "stream": True},
            stream=True,
            timeout=timeout,
        ) as response:
            out.append(response.status_code)
            for _ in response.iter_content(None):
                pass
    except requests.RequestException as exc:
        out.append(type(exc).__name__)


def test_probe_answers_with_every_queue_full_and_streams_held(service, fake):
    # 3 models x (1 running + 6 queued) + overflow: more held requests than pool threads.
    for model in MODELS:
        fake.set_model(model, ttft_seconds=0, tokens=20, tokens_per_second=20)
    statuses: list = []
    threads = [
        threading.Thread(
            target=_stream_request, args=(service.proxy_url, MODELS[i % 3], statuses), daemon=True
        )
        for i in range(THREADS * 2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    took = probe_latencies(service.management_url, 15)
    print(f"probe p99 {p99(took) * 1000:.1f} ms with every queue full, {len(threads)} streams")
    assert p99(took) < 1.0, took
    for thread in threads:
        thread.join(60)


def _raw_request(port: int, body: dict, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect, so the window the server sees is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


def test_client_that_stops_reading_is_dropped_and_its_slot_released(service, fake):
    model = "llama3.2:1b"
    # A long fast stream: far more than every socket buffer on the way holds.
    fake.set_model(model, ttft_seconds=0, tokens=200_000, tokens_per_second=100_000)
    started = time.monotonic()
    stalled = _raw_request(
        service.proxy_port, {"model": model, "prompt": "never read", "stream": True}, rcvbuf=4096
    )
    try:
        _wait(lambda: _totals(service)["in_flight"] == 1, 5)
        # The next request for the model waits for that slot, and gets it once the bound hits.
        follower: list = []
        fake.set_model(model, ttft_seconds=0, tokens=5, tokens_per_second=1000)
        thread = threading.Thread(
            target=_stream_request, args=(service.proxy_url, model, follower, 30), daemon=True
        )
        thread.start()
        held = _wait(lambda: _totals(service)["in_flight"] == 0 or follower, 20)
        thread.join(20)
        held_for = time.monotonic() - started
        assert follower == [200]
        assert held_for < SEND_TIMEOUT + 6, held_for
        assert "client_stalled" in service.output()
        print(f"non-reading client held its slot {held_for:.2f} s ({held:.2f} s after admission)")
    finally:
        stalled.close()


def test_client_gone_with_a_stray_byte_is_seen_gone_while_queued(service, fake):
    model = "gemma3:4b"
    fake.set_model(model, ttft_seconds=0, tokens=30, tokens_per_second=10)
    holder: list = []
    thread = threading.Thread(
        target=_stream_request, args=(service.proxy_url, model, holder), daemon=True
    )
    thread.start()
    _wait(lambda: _totals(service)["in_flight"] == 1, 5)
    body = {"model": model, "prompt": "left with a byte behind", "stream": False}
    sock = _raw_request(service.proxy_port, body)
    _wait(lambda: _totals(service)["queued"] == 1, 5)
    sock.sendall(b"\r\n")  # what some clients send after a body; then they go
    sock.close()
    took = _wait(lambda: _totals(service)["queued"] == 0, 5)
    assert took < 1.0, took
    thread.join(30)
    assert holder == [200]
    time.sleep(0.5)  # had it been admitted, it would reach Ollama now that the slot is free
    assert len(fake.connections(path="/api/generate", model=model)) == 1


def test_a_limits_file_past_the_pool_stops_the_start_with_one_line(tmp_path):
    limits = tmp_path / "limits.toml"
    limits.write_text(
        '[[models]]\nmatch = "nomic-embed-text*"\nmax_concurrency = 8\nmax_queue = 256\n'
    )
    done = run_gunicorn_expecting_exit({"LLM_LIMITS_FILE": str(limits)})
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 1 and "models[0].max_queue" in lines[0] and "264" in lines[0], done.stderr


def test_a_reload_past_the_pool_keeps_the_last_good_file(service):
    limits = Path(service.env["LLM_LIMITS_FILE"])
    try:
        limits.write_text("[defaults]\nmax_concurrency = 4\nmax_queue = 20\n")
        refused = requests.post(service.management_url + "/api/limits/reload", timeout=5)
        assert refused.status_code == 422
        assert refused.json()["status"] == "kept"
        assert "limits reload refused" in service.output()
        assert "more than the worker holds" in service.output()
        effective = requests.get(service.management_url + "/api/limits", timeout=5).json()
        assert effective["config"]["defaults"]["max_queue"] == 6
    finally:
        limits.write_text(LIMITS)
        requests.post(service.management_url + "/api/limits/reload", timeout=5)


def test_all_models_together_hold_no_more_than_the_pool(service, fake):
    for model in MODELS:
        fake.set_model(model, ttft_seconds=0, tokens=30, tokens_per_second=20)
    statuses: list = []
    # 3 models x (1 + 6) = 21 places by the file, but the worker holds 14 (16 threads).
    threads = [
        threading.Thread(
            target=_stream_request, args=(service.proxy_url, MODELS[i % 3], statuses), daemon=True
        )
        for i in range(21)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(429) == 21 - 14, statuses
    assert statuses.count(200) == 14, statuses


def _model_labels(service: ServiceProcess) -> set[str]:
    text = requests.get(service.management_url + "/metrics", timeout=10).text
    return set(re.findall(r'model="([^"]*)"', text))


def test_metric_labels_stay_bounded_under_made_up_names(service, fake):
    fake.set_model("llama3.2:1b", ttft_seconds=0, tokens=2, tokens_per_second=1000)
    for i in range(200):
        body = {"task": "expand_queries", "input": "x", "models": [f"v{i}://llama3.2:1b"]}
        answer = requests.post(service.management_url + "/v1/infer", json=body, timeout=30)
        assert answer.status_code in (200, 400), answer.text  # the emulator may refuse the form
    labels = _model_labels(service)
    assert not [label for label in labels if "://" in label], labels
    print(f"model label values after 200 made-up names: {len(labels)}: {sorted(labels)}")
    assert len(labels) <= 8, labels


def test_a_made_up_name_is_refused_while_the_catalog_is_stale(service, fake):
    answer = requests.post(service.proxy_url + "/api/generate",
                           json={"model": "llama3.2:1b", "prompt": "x", "stream": False},
                           timeout=30)  # fmt: skip
    assert answer.status_code == 200
    fake.fault("status", route="/api/tags", status=500, times=10_000)
    try:
        time.sleep(1.2)  # past the catalog's lifetime: the list it has is stale now
        for i in range(50):
            made_up = requests.post(service.proxy_url + "/api/generate",
                                    json={"model": f"madeup{i}:1b", "prompt": "x"},
                                    timeout=30)  # fmt: skip
            assert made_up.status_code == 404, made_up.text
            assert made_up.json()["error"] == f"model 'madeup{i}:1b' not found"
        assert not [label for label in _model_labels(service) if label.startswith("madeup")]
        # A model it listed is still served (the stale list says it is installed).
        again = requests.post(service.proxy_url + "/api/generate",
                              json={"model": "llama3.2:1b", "prompt": "x", "stream": False},
                              timeout=30)  # fmt: skip
        assert again.status_code == 200
    finally:
        fake.clear_faults()
