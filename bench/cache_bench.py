"""Response cache figures: hit latency and coalescing, against the emulator.

    python -m bench.cache_bench [--quick]

Also run by ``make bench`` (bench/proxy_bench.py), which adds these figures to its table and to
bench/results/proxy.json under ``cache``. Hit latency is measured client-side over keep-alive
connections, interleaved with direct calls to the emulator and with the same request sent
through the proxy with ``Cache-Control: no-store`` (a full proxied call), so drift hits all three.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results" / "cache.json"
MODEL = "llama3.2:latest"
EMBED_MODEL = "nomic-embed-text"
# Coalesced followers wait like any queued request (they count against max_queue): a queue of
# 64 holds the 50 identical requests of the coalescing figure.
LIMITS = """
[defaults]
max_concurrency = 4
max_queue = 64
max_wait_seconds = 60
"""
GENERATE = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"temperature": 0}}
EMBED = {"model": EMBED_MODEL, "input": [f"passage number {i}" for i in range(10)]}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class _Client:
    """One keep-alive connection (http.client: a thinner client than requests, so less of the
    client's own time is in the figures)."""

    def __init__(self, url: str, path: str, body: dict, headers: dict | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.path, self.body = path, json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def send(self) -> tuple[float, str | None]:
        started = time.perf_counter()
        self.conn.request("POST", self.path, self.body, self.headers)
        response = self.conn.getresponse()
        response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"{self.path}: {response.status}")
        return elapsed, response.getheader("X-Cache")

    def close(self) -> None:
        self.conn.close()


def hit_latency(emulator: FakeOllama, service: ServiceProcess, path: str, body: dict, n: int):
    """p50/p99 of hits, of direct calls and of full proxied calls (no-store), interleaved."""
    direct = _Client(emulator.url, path, body)
    hit = _Client(service.proxy_url, path, body)
    full = _Client(service.proxy_url, path, body, {"Cache-Control": "no-store"})
    clients = (direct, hit, full)
    samples: list[list[float]] = [[], [], []]
    try:
        hit.send()  # the miss that stores it
        for _ in range(10):  # warm every path
            for client in clients:
                client.send()
        for _ in range(n):
            for client, out in zip(clients, samples, strict=True):
                elapsed, result = client.send()
                if client is hit and result != "HIT":
                    raise RuntimeError(f"expected a hit, got {result}")
                out.append(elapsed)
    finally:
        for client in clients:
            client.close()
    direct_ms, hits, proxied = samples
    return {
        "hit_p50_ms": round(statistics.median(hits), 3),
        "hit_p99_ms": round(_percentile(hits, 0.99), 3),
        "direct_p50_ms": round(statistics.median(direct_ms), 3),
        "proxied_no_store_p50_ms": round(statistics.median(proxied), 3),
    }


def coalescing(emulator: FakeOllama, service: ServiceProcess, count: int) -> dict[str, Any]:
    """`count` identical requests at once, while Ollama takes 1 s: upstream calls and results."""
    emulator.set_model(MODEL, ttft_seconds=1.0, tokens=12, tokens_per_second=200)
    body = {**GENERATE, "prompt": f"coalesce {time.time()}"}
    before = len(emulator.connections(path="/api/generate"))
    barrier = threading.Barrier(count)

    def send(_: int) -> tuple[int, str, float]:
        barrier.wait(30)
        started = time.perf_counter()
        response = requests.post(service.proxy_url + "/api/generate", json=body, timeout=60)
        elapsed = time.perf_counter() - started
        return response.status_code, response.headers.get("X-Cache", ""), elapsed

    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(send, range(count)))
    upstream = len(emulator.connections(path="/api/generate")) - before
    results: dict[str, int] = {}
    for _, result, _ in answers:
        results[result] = results.get(result, 0) + 1
    return {
        "requests": count,
        "upstream_calls": upstream,
        "status_200": sum(1 for status, _, _ in answers if status == 200),
        "results": results,
        "slowest_s": round(max(seconds for _, _, seconds in answers), 2),
    }


def run(emulator: FakeOllama, n: int, coalesce: int = 50) -> dict[str, Any]:
    """Start a service with the cache on beside `emulator` and measure."""
    limits = Path(tempfile.mkdtemp()) / "limits.toml"
    limits.write_text(LIMITS)
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(limits),
        "LLM_CACHE_MAX_MB": "64",
        "LLM_WORKER_THREADS": "128",
    }
    emulator.set_model(MODEL, tokens=12, tokens_per_second=100000, ttft_seconds=0)
    with ServiceProcess(env=env) as service:
        generate = hit_latency(emulator, service, "/api/generate", GENERATE, n)
        embed = hit_latency(emulator, service, "/api/embed", EMBED, max(20, n // 2))
        coalesced = coalescing(emulator, service, coalesce)
        stats = requests.get(service.management_url + "/api/cache", timeout=5).json()
    return {
        "samples": n,
        "generate_12_tokens": generate,
        "embed_10_items": embed,
        "coalescing": coalesced,
        "entries": stats["entries"],
        "bytes": stats["bytes"],
    }


def rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    g, e, c = results["generate_12_tokens"], results["embed_10_items"], results["coalescing"]
    return [
        ("cache hit p50 / p99, generate (12 tokens)",
         f"{g['hit_p50_ms']} / {g['hit_p99_ms']} ms (direct {g['direct_p50_ms']} ms, "
         f"proxied no-store {g['proxied_no_store_p50_ms']} ms)"),
        ("cache hit p50 / p99, embed (10 items)",
         f"{e['hit_p50_ms']} / {e['hit_p99_ms']} ms (direct {e['direct_p50_ms']} ms, "
         f"proxied no-store {e['proxied_no_store_p50_ms']} ms)"),
        (f"coalescing, {c['requests']} identical at once",
         f"{c['upstream_calls']} upstream call(s), {c['status_200']} answered 200, {c['results']}, "
         f"slowest {c['slowest_s']} s"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = parser.parse_args()
    with FakeOllama(num_parallel=64, ttft_seconds=0, load_seconds=0) as emulator:
        results = run(emulator, 100 if args.quick else 500)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    table = rows(results)
    width = max(len(name) for name, _ in table)
    for name, value in table:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
