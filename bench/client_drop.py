"""How fast a client that leaves reaches Ollama, at each stage, and what a stream costs.

Part of `make bench` (bench/proxy_bench.py calls `measure`). Times come from one clock: the
emulator records when it saw each connection close in CLOCK_MONOTONIC, which this process
shares, and the service's access log gives the queue wait of a request that left while queued.

- queued: one request of a model with limit 1 runs; a second waits; its client closes. The
  figure is the wall-clock time of the dropped request's access-log line (written when the
  queue place is given up) minus the client's close.
- before the first byte: the emulator stalls before its first byte; the client closes; the
  figure is the emulator's close time minus the client's.
- slow mid-stream: chunks 500 ms apart; the client closes after the first one.
- fast mid-stream: chunks 10 ms apart.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from datetime import datetime
from typing import Any

import psutil

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess

DROP_MODEL = "gemma3:4b"  # limit 1 in bench LIMITS' defaults would queue; set per call below
ACCESS_MARK = "llm_service.access: "


def _open(service: ServiceProcess, body: dict[str, Any], request_id: str) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", service.proxy_port))
    sock.sendall(
        f"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def _closed_at(emulator: FakeOllama, request_id: str, timeout: float = 5.0) -> float | None:
    # The emulator stamps the close itself; asking at once would have its loop busy writing
    # the observations just as the proxy's FIN arrives, and that would be measured too.
    time.sleep(0.05)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for conn in emulator.observations()["connections"]:
            if conn.get("request_id") == request_id and conn.get("closed_at"):
                return float(conn["closed_at"])
        time.sleep(0.02)
    return None


def _wait_connected(emulator: FakeOllama, request_id: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c.get("request_id") == request_id for c in emulator.observations()["connections"]):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{request_id} never reached the emulator")


def _access_line(service: ServiceProcess, request_id: str) -> dict[str, Any] | None:
    for line in service.output().splitlines():
        if ACCESS_MARK in line and f'"request_id":"{request_id}"' in line:
            return json.loads(line.split(ACCESS_MARK, 1)[1])
    return None


def _summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "max_ms": round(ms[-1], 2),
        "samples": len(ms),
    }


def upstream_stage(
    service: ServiceProcess,
    emulator: FakeOllama,
    model: str,
    stage: str,
    runs: int,
    **timing: float,
) -> dict[str, float]:
    """Client closes before the first byte or mid-stream; Ollama's close minus the client's."""
    emulator.reset()  # few connection records: each observations poll stays cheap
    emulator.set_model(model, **timing)
    gaps = []
    for i in range(runs):
        rid = f"drop-{stage}-{i}"
        sock = _open(service, {"model": model, "prompt": "x"}, rid)
        if stage == "before_first_byte":
            _wait_connected(emulator, rid)
            time.sleep(0.1)
        else:
            sock.settimeout(10)
            sock.recv(65536)  # the headers and the first chunk
            time.sleep(0.05)
        closed = time.monotonic()
        sock.close()
        seen = _closed_at(emulator, rid)
        if seen is not None:
            gaps.append(seen - closed)
    return _summary(gaps)


def queued_stage(service: ServiceProcess, model: str, runs: int) -> dict[str, float]:
    """One request of `model` (limit 1) runs; the next waits and its client leaves."""
    holder = _open(service, {"model": model, "prompt": "hold"}, "drop-holder")
    holder.settimeout(10)
    holder.recv(65536)
    gaps = []
    for i in range(runs):
        rid = f"drop-queued-{i}"
        sock = _open(service, {"model": model, "prompt": "x"}, rid)
        time.sleep(0.1)
        closed = time.time()  # the access log's "time" is wall-clock, written on the drop
        sock.close()
        deadline = time.monotonic() + 5
        line = None
        while line is None and time.monotonic() < deadline:
            time.sleep(0.05)
            line = _access_line(service, rid)
        if line and line.get("outcome") == "client_gone_queued":
            logged = datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
            gaps.append(logged - closed)
    holder.close()
    return _summary(gaps)


def stream_cpu_ms(service: ServiceProcess, worker: psutil.Process, model: str, n: int) -> float:
    """Worker CPU per streamed generate of 20 chunks 5 ms apart, read to its end."""
    before = sum(worker.cpu_times()[:2])
    for i in range(n):
        sock = _open(service, {"model": model, "prompt": "x"}, f"cpu-{i}")
        sock.settimeout(10)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
    return (sum(worker.cpu_times()[:2]) - before) / n * 1000


def measure(
    service: ServiceProcess, emulator: FakeOllama, worker: psutil.Process, quick: bool
) -> dict[str, Any]:
    """All stages; expects the service's limits to give `DROP_MODEL` max_concurrency 1."""
    runs = 8 if quick else 20
    results: dict[str, Any] = {}
    # A fresh emulator state: thousands of connection records from the earlier benches make each
    # observations poll slow the emulator's own loop, which would show up as drop latency.
    emulator.reset()
    emulator.set_model(DROP_MODEL, tokens=20, tokens_per_second=200, ttft_seconds=0)
    results["stream_worker_cpu_ms"] = round(
        stream_cpu_ms(service, worker, DROP_MODEL, 60 if quick else 200), 3
    )
    emulator.set_model(DROP_MODEL, tokens=100000, tokens_per_second=5, ttft_seconds=0)
    results["queued"] = queued_stage(service, DROP_MODEL, runs)
    stages = {
        "before_first_byte": {"tokens": 20, "tokens_per_second": 200, "ttft_seconds": 30},
        "slow_mid_stream": {"tokens": 1000, "tokens_per_second": 2, "ttft_seconds": 0},
        "fast_mid_stream": {"tokens": 1000, "tokens_per_second": 100, "ttft_seconds": 0},
    }
    for stage, timing in stages.items():
        results[stage] = upstream_stage(service, emulator, DROP_MODEL, stage, runs, **timing)
    return results
