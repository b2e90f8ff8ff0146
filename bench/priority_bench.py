"""Priority classes and fair share, measured: who waits how long when several callers share a model.

    python -m bench.priority_bench [--service 0.25]

One model at limit 1 in front of the emulator, service time about ``--service`` seconds (the
issue's scenario uses ~1 s; the shape is the same shorter, and `make bench` stays short):

1. **Interactive behind a batch run**: an n8n-like caller queues 30 batch requests, then an
   interactive caller sends one request every 3 service times (6 of them). Its queue wait p95,
   in service times, with classes (`X-LLM-Priority`) and with `queue_order = "fifo"` (arrival
   order, as Ollama itself serves). Every batch request must still complete.
2. **Fair share**: two batch callers with backlogs of 20 and 200: the share of the service the
   small one got while both were backlogged (the first 40 completions): 50 % expected. Then
   two keyed callers with weights 2:1, backlogs of 100 each: 67 % expected for the heavier.
3. **Admission cost**: in-process, the time one release takes to hand the slot to the next of
   1,000 queued requests (8 callers, two classes).

Prints a table and writes bench/results/priority.json. `make bench` runs it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from management_api.proxy.limiter import Limiter
from management_api.proxy.limits_config import parse_limits
from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results" / "priority.json"
MODEL = "llama3.2:1b"
# With keys on, a key names its caller; the bench's callers and their fair-share weights.
CALLERS = {"n8n": 1, "dashboard": 1, "small": 1, "big": 1, "heavy": 2, "light": 1}
ADMIN_KEY = "ops-bench-key-0123456789"


def key_of(caller: str) -> str:
    return f"{caller}-bench-key-0123456789"


LIMITS = """
[defaults]
max_concurrency = 1
max_queue = 400
max_wait_seconds = 600
aging_seconds = 0
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _post(base: str, caller: str, priority: str | None, done: list) -> None:
    headers = {"Authorization": f"Bearer {key_of(caller)}"}
    if priority:
        headers["X-LLM-Priority"] = priority
    response = requests.post(
        base + "/api/generate",
        json={"model": MODEL, "prompt": "p", "stream": False},
        headers=headers,
        timeout=600,
    )
    wait = float(response.headers.get("X-Queue-Wait-Ms", "0")) / 1000
    done.append((caller, time.monotonic(), wait, response.status_code))


def _start(base: str, caller: str, priority: str | None, done: list) -> threading.Thread:
    thread = threading.Thread(target=_post, args=(base, caller, priority, done), daemon=True)
    thread.start()
    return thread


def _queued(service: ServiceProcess) -> int:
    limits = requests.get(service.management_url + "/api/limits", timeout=5).json()
    return limits["totals"]["queued"]


def interactive_behind_batch(service: ServiceProcess, service_s: float, classes: bool) -> dict:
    done: list[tuple[str, float, float, int]] = []
    threads = [
        _start(service.proxy_url, "n8n", "batch" if classes else None, done) for _ in range(30)
    ]
    deadline = time.monotonic() + 30
    while _queued(service) < 29 and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(6):
        threads.append(
            _start(service.proxy_url, "dashboard", "interactive" if classes else None, done)
        )
        time.sleep(3 * service_s)
    for thread in threads:
        thread.join(600)
    waits = [wait for caller, _, wait, _ in done if caller == "dashboard"]
    return {
        "interactive_wait_p95_s": round(percentile(waits, 0.95), 3),
        "interactive_wait_p95_service_times": round(percentile(waits, 0.95) / service_s, 2),
        "batch_completed": sum(1 for c, _, _, s in done if c == "n8n" and s == 200),
        "batch_sent": 30,
    }


def share_while_backlogged(service: ServiceProcess, backlogs: dict[str, int], window: int) -> dict:
    """Each caller's share of the first ``window`` completions (equal service times: the share
    of GPU time), both backlogged all along."""
    done: list[tuple[str, float, float, int]] = []
    # One request takes the slot first, so that both backlogs are queued before any choice.
    threads = [_start(service.proxy_url, "n8n", "batch", done)]
    time.sleep(0.1)
    for caller, count in backlogs.items():
        threads += [_start(service.proxy_url, caller, "batch", done) for _ in range(count)]
    for thread in threads:
        thread.join(600)
    order = [row[0] for row in sorted(done, key=lambda row: row[1]) if row[0] != "n8n"]
    first = order[:window]
    return {caller: round(first.count(caller) / len(first), 3) for caller in backlogs}


def admission_cost(queued: int = 1000, rounds: int = 500) -> float:
    """Microseconds one release takes to hand the slot to the next of ``queued`` waiters
    (8 callers, two classes), in process."""
    limiter = Limiter(parse_limits(LIMITS.replace("400", str(queued * 2)), "bench.toml"))
    running = limiter.submit("m", priority="batch", caller="c0")
    waiting = [
        limiter.submit("m", priority=("batch", "standard")[i % 2], caller=f"c{i % 8}")
        for i in range(queued)
    ]
    slot = running.slot
    spent = 0.0
    for _ in range(rounds):
        assert slot is not None
        started = time.perf_counter()
        slot.release()
        spent += time.perf_counter() - started
        admitted = next(t for t in waiting if t.slot is not None and not t.slot.released)
        waiting.remove(admitted)
        waiting.append(limiter.submit("m", priority="batch", caller="c1"))  # stays at 1,000
        slot = admitted.slot
    return round(spent / rounds * 1e6, 1)


def _reload(service: ServiceProcess) -> None:
    response = requests.post(
        service.management_url + "/api/limits/reload",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=5,
    )
    response.raise_for_status()


def run_all(service_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {"service_seconds": service_s}
    with FakeOllama() as fake, tempfile.TemporaryDirectory() as state:
        limits = Path(state) / "limits.toml"
        limits.write_text(LIMITS)
        fake.set_model(MODEL, ttft_seconds=service_s * 0.9, tokens=2, tokens_per_second=200)
        keys = ",".join(
            f"{caller}:{key_of(caller)}:user:weight={weight}" for caller, weight in CALLERS.items()
        )
        env = {
            "OLLAMA_URL": fake.url,
            "LLM_LIMITS_FILE": str(limits),
            "LLM_WORKER_THREADS": "512",
            "LLM_AUTH_MODE": "management",
            "LLM_API_KEYS": f"ops:{ADMIN_KEY}:admin," + keys,
        }
        with ServiceProcess(env=env) as service:
            # The baseline: arrival order, as Ollama serves (queue_order = "fifo").
            limits.write_text(LIMITS.replace("aging_seconds = 0", 'queue_order = "fifo"'))
            _reload(service)
            results["fifo"] = interactive_behind_batch(service, service_s, classes=True)
            limits.write_text(LIMITS)
            _reload(service)
            results["classes"] = interactive_behind_batch(service, service_s, classes=True)
            # Shares need many completions, not long ones: 0.1 s each.
            fake.set_model(MODEL, ttft_seconds=0.09, tokens=2, tokens_per_second=200)
            results["share_backlogs_20_200"] = share_while_backlogged(
                service, {"small": 20, "big": 200}, window=40
            )
            results["share_weights_2_1"] = share_while_backlogged(
                service, {"heavy": 100, "light": 100}, window=90
            )
    results["admission_us_with_1000_queued"] = admission_cost()
    return results


def table(results: dict[str, Any]) -> str:
    fifo, classes = results["fifo"], results["classes"]
    rows = [
        "| figure | value |",
        "|---|---|",
        f"| service time (s) | {results['service_seconds']} |",
        "| interactive queue-wait p95, service times: fifo (arrival order, as Ollama) | "
        f"{fifo['interactive_wait_p95_service_times']} |",
        "| interactive queue-wait p95, service times: classes | "
        f"{classes['interactive_wait_p95_service_times']} |",
        f"| batch completed (classes) | {classes['batch_completed']}/{classes['batch_sent']} |",
        "| small backlog's share while both backlogged (20 vs 200; 0.5 expected) | "
        f"{results['share_backlogs_20_200']['small']} |",
        "| heavier caller's share, weights 2:1 (0.667 expected) | "
        f"{results['share_weights_2_1']['heavy']} |",
        f"| admission with 1,000 queued (µs) | {results['admission_us_with_1000_queued']} |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", type=float, default=0.25, help="service time, seconds")
    args = parser.parse_args(argv)
    results = run_all(args.service)
    fifo = results["fifo"]["interactive_wait_p95_service_times"]
    classes = results["classes"]["interactive_wait_p95_service_times"]
    results["goals"] = {
        "interactive_p95_ratio_classes_vs_fifo": round(classes / max(1e-9, fifo), 3),
        "goal": "classes p95 <= 1.2 service times; shares 0.5 and 0.667 within 0.1; "
        "admission <= 100 us",
    }
    print(table(results))
    print(json.dumps(results["goals"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
