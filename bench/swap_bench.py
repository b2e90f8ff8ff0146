"""Model swaps under interleaved traffic: direct to the emulator vs the proxy with fifo / affinity.

    python -m bench.swap_bench [--requests 40] [--spread 2] [--load 0.5]

Two models that do not fit together (the emulator holds one loaded model), requests alternating
between them arriving evenly over ``--spread`` seconds, each a short generation, each model load
``--load`` seconds. Measured in one run, one after the other on a fresh emulator: number of loads,
total time to finish all, p50/p99/max latency per model, and the most requests of one model
Ollama saw at once. Prints a table and writes bench/results/swap.json. `make bench` runs it.

``alternating_run`` is also what tests/integration/test_scheduling.py drives, scaled down.
"""

from __future__ import annotations

import argparse
import json
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

RESULTS = Path(__file__).resolve().parent / "results" / "swap.json"
MODELS = ("llama3.2:1b", "gemma3:4b")


def limits_text(policy: str, max_hold_seconds: float = 20) -> str:
    """Both models: one request at a time in Ollama, long queues, one model fits at a time."""
    return f"""
[defaults]
max_concurrency = 1
max_queue = 200
max_wait_seconds = 600
[scheduler]
policy = "{policy}"
max_loaded_models = 1
max_hold_seconds = {max_hold_seconds}
"""


def prepare_emulator(fake: FakeOllama, load_seconds: float, tokens: int = 4) -> None:
    """Fresh emulator: one loaded model at most, short generations, the given load time."""
    fake.reset()
    fake.configure(max_loaded_models=1, num_parallel=4)
    for model in MODELS:
        fake.set_model(
            model, load_seconds=load_seconds, tokens=tokens, tokens_per_second=200, ttft_seconds=0
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def alternating_run(
    base_url: str, fake: FakeOllama, *, requests_total: int, spread_seconds: float
) -> dict[str, Any]:
    """Send ``requests_total`` requests alternating between the two models, evenly over
    ``spread_seconds``; wait for all; report loads, time and latencies per model."""
    before = fake.observations()
    latencies: dict[str, list[float]] = {model: [] for model in MODELS}
    statuses: list[int] = []
    lock = threading.Lock()
    started = time.monotonic()
    interval = spread_seconds / max(1, requests_total - 1)

    def one(index: int) -> None:
        model = MODELS[index % 2]
        time.sleep(max(0.0, started + index * interval - time.monotonic()))
        sent = time.monotonic()
        body = {"model": model, "prompt": f"hi {index}", "stream": False, "think": False}
        response = requests.post(base_url + "/api/generate", json=body, timeout=120)
        elapsed = time.monotonic() - sent
        with lock:
            statuses.append(response.status_code)
            latencies[model].append(elapsed)

    with ThreadPoolExecutor(requests_total) as pool:
        list(pool.map(one, range(requests_total)))
    total = time.monotonic() - started
    after = fake.observations()
    return {
        "requests": requests_total,
        "statuses": sorted(set(statuses)),
        "ok": statuses.count(200),
        "loads": after["loads"] - before["loads"],
        "load_seconds": round(after["load_seconds"] - before["load_seconds"], 3),
        "total_seconds": round(total, 3),
        "max_in_flight": after["max_in_flight"],
        "per_model": {
            model: {
                "p50": round(percentile(values, 0.5), 3),
                "p99": round(percentile(values, 0.99), 3),
                "max": round(max(values), 3),
            }
            for model, values in latencies.items()
            if values
        },
    }


def run_all(requests_total: int, spread: float, load: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with FakeOllama(max_loaded_models=1) as fake, tempfile.TemporaryDirectory() as state:
        limits = Path(state) / "limits.toml"
        limits.write_text(limits_text("fifo"))
        env = {
            "OLLAMA_URL": fake.url,
            "LLM_LIMITS_FILE": str(limits),
            "LLM_LIMITS_RELOAD_SECONDS": "0.2",
            "LLM_WORKER_THREADS": "256",
            "LLM_MODEL": MODELS[0],
        }
        prepare_emulator(fake, load)
        results["direct"] = alternating_run(
            fake.url, fake, requests_total=requests_total, spread_seconds=spread
        )
        with ServiceProcess(env=env) as service:
            for policy in ("fifo", "affinity"):
                limits.write_text(limits_text(policy))
                reload = requests.post(service.management_url + "/api/limits/reload", timeout=5)
                reload.raise_for_status()
                prepare_emulator(fake, load)
                results[f"proxy_{policy}"] = alternating_run(
                    service.proxy_url, fake, requests_total=requests_total, spread_seconds=spread
                )
    return results


def table(results: dict[str, Any]) -> str:
    header = "| path | loads | total s | " + " | ".join(f"{m} p50 / p99 / max s" for m in MODELS)
    rows = [header + " |", "|" + "---|" * (3 + len(MODELS))]
    for path, run in results.items():
        cells = [
            f"{run['per_model'][m]['p50']} / {run['per_model'][m]['p99']} / "
            f"{run['per_model'][m]['max']}"
            for m in MODELS
        ]
        rows.append(f"| {path} | {run['loads']} | {run['total_seconds']} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--spread", type=float, default=2.0, help="seconds over which they arrive")
    parser.add_argument("--load", type=float, default=0.5, help="model load seconds")
    args = parser.parse_args(argv)
    results = run_all(args.requests, args.spread, args.load)
    direct, affinity = results["direct"], results["proxy_affinity"]
    results["goals"] = {
        "loads_ratio_affinity_vs_direct": round(affinity["loads"] / max(1, direct["loads"]), 3),
        "time_ratio_affinity_vs_direct": round(
            affinity["total_seconds"] / max(1e-9, direct["total_seconds"]), 3
        ),
        "goal": "loads ratio <= 0.5 and time ratio <= 0.6",
    }
    print(table({k: v for k, v in results.items() if k != "goals"}))
    print(json.dumps(results["goals"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
