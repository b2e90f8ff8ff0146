"""Proxy overhead, measured against a direct call to the emulator in the same run.

    python -m bench.proxy_bench [--quick]

Prints one table and writes bench/results/proxy.json. Figures are ratios or differences
against the direct path, so they compare across machines; absolute numbers are for context.
Latency samples are interleaved (direct, proxy, reference, direct, …) so that a shared
machine's drift hits every path alike. The reference is the lean Flask pass-through of
proxy-practice.md §8 (bench/lean_passthrough.py), run beside ours as a yardstick.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from bench import cache_bench, client_drop
from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ROOT, ServiceProcess, free_port

RESULTS = Path(__file__).resolve().parent / "results" / "proxy.json"
MODEL = "llama3.2:latest"
# Queues as long as the connections held ({hold}); the worker gets threads for all of them
# (concurrency + queue may not exceed what it holds: see limits_config.check_capacity).
LIMITS = """
[defaults]
max_concurrency = 64
max_queue = {hold}
max_wait_seconds = 600
[[models]]
match = "qwen3:14b-q8"
max_concurrency = 16
max_queue = {hold}
[[models]]
match = "gemma3:4b"
max_concurrency = 1
max_queue = 100
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


GENERATE = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}


def latency(session: requests.Session, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = session.post(url + "/api/generate", json=GENERATE, timeout=10)
        response.content  # noqa: B018 - read the whole body
        out.append((time.perf_counter() - started) * 1000)
    return out


def interleaved_latency(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    """`n` samples per target, taken in turn, one keep-alive session per target."""
    sessions = {name: requests.Session() for name in urls}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for _ in range(n):
            for name, url in urls.items():
                samples[name] += latency(sessions[name], url, 1)
    finally:
        for session in sessions.values():
            session.close()
    return samples


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class LeanPassthrough:
    """bench/lean_passthrough.py under gunicorn gthread, one worker (the §8 set-up)."""

    def __init__(self, upstream: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "64", "-w", "1",
             "-b", f"127.0.0.1:{self.port}", "--no-control-socket", "bench.lean_passthrough:app"],
            cwd=ROOT, env={**os.environ, "UPSTREAM_URL": upstream},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def __enter__(self) -> LeanPassthrough:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.post(self.url + "/api/generate", json=GENERATE, timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("the lean pass-through did not start")

    def __exit__(self, *_exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)

    def worker(self) -> psutil.Process:
        children = psutil.Process(self.process.pid).children()
        return children[0] if children else psutil.Process(self.process.pid)


STREAM = {"model": MODEL, "prompt": "stream", "stream": True}


def first_byte_and_gaps(
    session: requests.Session, url: str, n: int
) -> tuple[list[float], list[float]]:
    """Time to the first streamed line, and the gaps between lines, over `n` streams."""
    ttfb, gaps = [], []
    for _ in range(n):
        started = time.perf_counter()
        with session.post(url + "/api/generate", json=STREAM, stream=True, timeout=10) as r:
            last = None
            for _line in r.iter_lines():
                now = time.perf_counter()
                if last is None:
                    ttfb.append((now - started) * 1000)
                else:
                    gaps.append((now - last) * 1000)
                last = now
    return ttfb, gaps


def interleaved_first_byte(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    sessions = {name: requests.Session() for name in urls}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for _ in range(n):
            for name, url in urls.items():
                samples[name] += first_byte_and_gaps(sessions[name], url, 1)[0]
    finally:
        for session in sessions.values():
            session.close()
    return samples


def throughput(url: str, seconds: float, threads: int = 8) -> float:
    body = GENERATE
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def worker(i: int) -> None:
        with requests.Session() as session:
            while time.perf_counter() < stop:
                session.post(url + "/api/generate", json=body, timeout=10).content  # noqa: B018
                counts[i] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return sum(counts) / seconds


def worker_process(service: ServiceProcess) -> psutil.Process:
    master = psutil.Process(service.process.pid)
    children = master.children()
    return children[0] if children else master


def hold_connections(service: ServiceProcess, count: int) -> dict:
    """Open `count` streaming requests for one model (16 running, the rest queued)."""
    body = json.dumps({"model": "qwen3:14b-q8", "prompt": "hold", "stream": True}).encode()
    request = (
        f"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    worker = worker_process(service)
    rss_before = worker.memory_info().rss
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", service.proxy_port))
        sock.sendall(request)
        socks.append(sock)
    deadline = time.monotonic() + 60
    held = {}
    while time.monotonic() < deadline:
        totals = requests.get(service.management_url + "/api/limits", timeout=10).json()["totals"]
        held = totals
        if totals["in_flight"] + totals["queued"] >= count:
            break
        time.sleep(0.25)
    started = time.perf_counter()
    requests.get(service.management_url + "/health/live", timeout=10)
    health_ms = (time.perf_counter() - started) * 1000
    rss_held = worker.memory_info().rss
    threads = worker.num_threads()
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        totals = requests.get(service.management_url + "/api/limits", timeout=10).json()["totals"]
        if totals["in_flight"] == 0 and totals["queued"] == 0:
            break
        time.sleep(0.25)
    return {
        "connections": count,
        "in_flight": held.get("in_flight"),
        "queued": held.get("queued"),
        "rss_mb_before": round(rss_before / 2**20, 1),
        "rss_mb_held": round(rss_held / 2**20, 1),
        "worker_threads": threads,
        "health_live_ms_while_held": round(health_ms, 2),
        "drained": totals["in_flight"] == 0 and totals["queued"] == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = parser.parse_args()
    n = 100 if args.quick else 500
    hold = 200 if args.quick else 1000

    limits = Path(tempfile.mkdtemp()) / "limits.toml"
    limits.write_text(LIMITS.format(hold=hold))
    with FakeOllama(num_parallel=64, ttft_seconds=0, load_seconds=0) as emulator:
        emulator.set_model(MODEL, tokens=1, tokens_per_second=100000, ttft_seconds=0)
        env = {
            "OLLAMA_URL": emulator.url,
            "LLM_LIMITS_FILE": str(limits),
            "LLM_WORKER_THREADS": str(2 * hold + 128),
        }
        with ServiceProcess(env=env) as service, LeanPassthrough(emulator.url) as lean:
            urls = {"direct": emulator.url, "proxy": service.proxy_url, "lean": lean.url}
            interleaved_latency(urls, 30)  # warm every path
            ours, theirs = worker_process(service), lean.worker()
            cpu_before = cpu_seconds(ours), cpu_seconds(theirs)
            samples = interleaved_latency(urls, n)
            cpu_ms = {
                "proxy": (cpu_seconds(ours) - cpu_before[0]) / n * 1000,
                "lean": (cpu_seconds(theirs) - cpu_before[1]) / n * 1000,
            }
            d, p, ref = samples["direct"], samples["proxy"], samples["lean"]
            # First byte: short streams, interleaved like the latency samples.
            emulator.set_model(MODEL, tokens=3, tokens_per_second=100000, ttft_seconds=0)
            first = interleaved_first_byte(urls, n // 2)
            d_ttfb, p_ttfb, ref_ttfb = first["direct"], first["proxy"], first["lean"]
            # Cadence: 20 chunks at 20 ms, direct and through the proxy.
            emulator.set_model(MODEL, tokens=20, tokens_per_second=50, ttft_seconds=0)
            runs = 10 if args.quick else 20
            with requests.Session() as session:
                _, d_gaps = first_byte_and_gaps(session, emulator.url, runs)
                _, p_gaps = first_byte_and_gaps(session, service.proxy_url, runs)
            emulator.set_model(MODEL, tokens=1, tokens_per_second=100000, ttft_seconds=0)
            seconds = 2 if args.quick else 5
            d_rps = throughput(emulator.url, seconds)
            p_rps = throughput(service.proxy_url, seconds)
            drop = client_drop.measure(service, emulator, ours, args.quick)
            emulator.set_model("qwen3:14b-q8", tokens=100000, tokens_per_second=5)
            held = hold_connections(service, hold)
        # The response cache, on a second service with LLM_CACHE_MAX_MB set (bench/cache_bench.py).
        cache = cache_bench.run(emulator, n)

    added_p50 = statistics.median(p) - statistics.median(d)
    ref_added_p50 = statistics.median(ref) - statistics.median(d)
    results = {
        "samples": n,
        "added_p50_ms": round(added_p50, 3),
        "added_p99_ms": round(percentile(p, 0.99) - percentile(d, 0.99), 3),
        "direct_p50_ms": round(statistics.median(d), 3),
        "proxy_p50_ms": round(statistics.median(p), 3),
        "added_ttfb_p50_ms": round(statistics.median(p_ttfb) - statistics.median(d_ttfb), 3),
        "gap_mean_ms": {"direct": round(statistics.mean(d_gaps), 2),
                        "proxy": round(statistics.mean(p_gaps), 2)},
        "gap_p99_ms": {"direct": round(percentile(d_gaps, 0.99), 2),
                       "proxy": round(percentile(p_gaps, 0.99), 2)},
        "throughput_rps": {"direct": round(d_rps, 1), "proxy": round(p_rps, 1),
                           "ratio": round(p_rps / d_rps, 3)},
        "worker_cpu_ms_per_request": round(cpu_ms["proxy"], 3),
        "reference_lean_flask": {
            "added_p50_ms": round(ref_added_p50, 3),
            "added_ttfb_p50_ms": round(statistics.median(ref_ttfb) - statistics.median(d_ttfb), 3),
            "worker_cpu_ms_per_request": round(cpu_ms["lean"], 3),
        },
        "added_p50_vs_reference": round(added_p50 / ref_added_p50, 3) if ref_added_p50 > 0
                                  else None,
        "held": held,
        "client_drop": drop,
        "cache": cache,
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        ("added p50 latency, small non-stream generate", f"{results['added_p50_ms']} ms"),
        ("  same, lean Flask pass-through (reference)",
         f"{results['reference_lean_flask']['added_p50_ms']} ms "
         f"(ours/reference {results['added_p50_vs_reference']})"),
        ("added p99 latency", f"{results['added_p99_ms']} ms"),
        ("added time to first byte (stream), p50",
         f"{results['added_ttfb_p50_ms']} ms "
         f"(reference {results['reference_lean_flask']['added_ttfb_p50_ms']} ms)"),
        ("worker CPU per small request, ours / reference",
         f"{results['worker_cpu_ms_per_request']} / "
         f"{results['reference_lean_flask']['worker_cpu_ms_per_request']} ms"),
        ("inter-chunk gap mean direct / proxy",
         f"{results['gap_mean_ms']['direct']} / {results['gap_mean_ms']['proxy']} ms"),
        ("throughput proxy/direct (8 threads)",
         f"{results['throughput_rps']['ratio']} ({p_rps:.0f} / {d_rps:.0f} req/s)"),
        (f"{held['connections']} connections held: worker RSS",
         f"{held['rss_mb_held']} MB (idle {held['rss_mb_before']} MB), "
         f"{held['in_flight']} streaming + {held['queued']} queued"),
        ("/health/live while held", f"{held['health_live_ms_while_held']} ms"),
        ("worker CPU per 20-chunk stream", f"{drop['stream_worker_cpu_ms']} ms"),
        *[
            (f"client drop reaches Ollama, {stage.replace('_', ' ')} (p50 / max)",
             f"{drop[stage]['p50_ms']} / {drop[stage]['max_ms']} ms")
            for stage in ("before_first_byte", "slow_mid_stream", "fast_mid_stream")
        ],
        ("client drop frees its queue place, queued (p50 / max)",
         f"{drop['queued']['p50_ms']} / {drop['queued']['max_ms']} ms"),
        *cache_bench.rows(cache),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
