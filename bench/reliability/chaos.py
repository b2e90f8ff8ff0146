"""Chaos: the accounting load while Ollama crashes, hangs, stalls, drops streams and fails.

    python -m bench.reliability.chaos [--minutes 10]

Every 1.5-3.5 s one action: arm an emulator fault (hang, stall before the first byte, drop
mid-stream, error line, HTTP 500) for a random model, clear the cache, or reset the session;
every `--kill-every` seconds, SIGKILL the `ollama` program (supervisord restarts it) or make a
hard session reset. /health is polled throughout: each outage must show as 503 and end by
itself. Meanwhile model pulls are started, joined, cut, failed, stalled and cancelled
(bench/reliability/pulls.py), and durable jobs submitted and cancelled (bench/reliability/
jobs.py): every accepted job must end succeeded, failed with a reason, or cancelled by us.
Writes bench/results/chaos-summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import requests

from bench.reliability.jobs import JobChaos
from bench.reliability.observe import HealthTimeline, LivenessProbe
from bench.reliability.pulls import PullChaos
from bench.reliability.run import (
    Harness,
    common_arguments,
    harness,
    keep_service_log,
    report,
    write_summary,
)
from bench.reliability.stack import FIRST_BYTE_TIMEOUT_S, MODEL_LIMITS

# Pull jobs retry quickly here: a stalled attempt fails after 3 s; no disk check on this machine.
PULL_ENV = {"LLM_PULL_STALL_SECONDS": "3", "LLM_PULL_MIN_FREE_GB": "0", "LLM_PULL_RETRIES": "3"}
# Clients that stop reading are dropped after this long without write progress (the setting's
# default is 60 s; short here so that a short run sees it happen).
SEND_TIMEOUT_S = 1.5
STALL_MODEL = "llama3.2:latest"  # installed, and used by nothing else in the run
LIVENESS_P99_LIMIT_MS = 1000.0
PULL_SETTLE_S = 150.0  # four slowed attempts plus back-off, with room
JOB_SETTLE_S = 120.0  # the jobs queued behind the load, once it stopped
RECOVERY_LIMIT_S = 30.0  # from a crash to /health 200 again, supervisord's restart included
FAULT_KINDS = ("hang", "stall_first_byte", "drop_mid_stream", "error_line", "status")


class Chaos:
    def __init__(self, run: Harness, rng: random.Random, kill_every_s: float) -> None:
        self.run, self.rng, self.kill_every_s = run, rng, kill_every_s
        self.injected: Counter[str] = Counter()
        self.answers: dict[str, Counter[str]] = defaultdict(Counter)
        self.crashes: list[tuple[str, float]] = []  # (kind, monotonic time)
        # From the last collection of the dying Ollama's observations to its replacement.
        self.blind_windows: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._last_crash = time.monotonic()

    def step(self) -> None:
        stack = self.run.stack
        now = time.monotonic()
        if now - self._last_crash >= self.kill_every_s and stack.ollama_pid() is not None:
            self.run.collector.poll_now()  # what this Ollama saw dies with it
            at = time.monotonic()
            if self.rng.random() < 0.75:
                stack.kill_ollama()
                self._crashed("kill_ollama", at)
            else:
                status = self._hard_reset()
                self.answers["hard_reset"][str(status)] += 1
                self._crashed("hard_reset", at)
            self.blind_windows.append((at - 1.0, time.monotonic()))
            return
        roll = self.rng.random()
        if roll < 0.12:
            status = stack.post("/api/cache/clear", timeout=30)
            self.answers["cache_clear"][str(status)] += 1
            self.injected["cache_clear"] += 1
        elif roll < 0.2:
            status = stack.post("/api/session/reset", {}, timeout=60)
            self.answers["session_reset"][str(status)] += 1
            self.injected["session_reset"] += 1
        else:
            self._fault()

    def _hard_reset(self) -> int:
        """The reset restarts Ollama through supervisord; keep collecting until it does."""
        result: list[int] = []
        call = threading.Thread(
            target=lambda: result.append(
                self.run.stack.post("/api/session/reset", {"hard": True}, timeout=60)
            ),
            daemon=True,
        )
        call.start()
        while call.is_alive():
            with contextlib.suppress(Exception):
                self.run.collector.poll_now()
            call.join(0.2)
        return result[0] if result else 0

    def _crashed(self, kind: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        self.crashes.append((kind, at))
        self.injected[kind] += 1
        self._last_crash = at

    def _fault(self) -> None:
        kind = self.rng.choice(FAULT_KINDS)
        spec: dict[str, Any] = {
            "model": self.rng.choice(tuple(MODEL_LIMITS)),
            "times": self.rng.randint(1, 3),
        }
        if kind == "stall_first_byte":
            # Some stalls end before the proxy's first-byte timeout, some after it.
            spec["seconds"] = self.rng.choice((1.0, 2.5, FIRST_BYTE_TIMEOUT_S + 2.0))
        elif kind in ("drop_mid_stream", "error_line"):
            spec["after_chunks"] = self.rng.randint(1, 6)
        elif kind == "status":
            spec["status"] = 500
        try:
            self.run.stack.fault(kind, **spec)
        except requests.RequestException as exc:  # Ollama restarting: nothing was armed
            self.answers["fault"][type(exc).__name__] += 1
            return
        self.injected[kind if kind != "status" else "http_500"] += 1


def _outage_report(
    chaos: Chaos, health: HealthTimeline, t0: float
) -> tuple[dict[str, Any], list[str]]:
    """Match each crash to a /health outage that started after it and ended by itself."""
    failures: list[str] = []
    outages = health.outages()
    timeline = []
    for kind, at in chaos.crashes:
        span = next((o for o in outages if at - 0.5 <= o[0] <= at + 10), None)
        entry: dict[str, Any] = {"kind": kind, "at_s": round(at - t0, 1)}
        if span is None:
            failures.append(f"{kind} at {at - t0:.1f} s: /health never left 200")
        else:
            entry["health_down_at_s"] = round(span[0] - t0, 2)
            if span[1] is None:
                failures.append(f"{kind} at {at - t0:.1f} s: /health never recovered")
            else:
                entry["health_up_at_s"] = round(span[1] - t0, 2)
                entry["recovered_after_s"] = round(span[1] - at, 2)
                if span[1] - at > RECOVERY_LIMIT_S:
                    failures.append(f"{kind} at {at - t0:.1f} s: recovery took too long")
        timeline.append(entry)
    recoveries = [e["recovered_after_s"] for e in timeline if "recovered_after_s" in e]
    statuses = Counter(str(s.status) for s in health.samples)
    return {
        "polls": len(health.samples),
        "statuses": dict(sorted(statuses.items())),
        "outages": len(outages),
        "crashes": timeline,
        "recovery_s_max": max(recoveries, default=None),
        "recovery_s_median": sorted(recoveries)[len(recoveries) // 2] if recoveries else None,
    }, failures


class StallingClients:
    """Now and then a client that asks for a long stream and never reads it: the service must
    drop it (`client_stalled`) and give its slot back, whatever else the run is doing."""

    def __init__(self, stack: Any, every_s: float = 4.0) -> None:
        self.stack = stack
        self.every_s = every_s
        self.opened = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stalling-clients", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(SEND_TIMEOUT_S + 10)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._one()
            except Exception as exc:  # an emulator mid-restart: data, not a crash
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _one(self) -> None:
        # A long fast stream: far more than every socket buffer on the way holds.
        requests.post(self.stack.service.ollama + "/_fake/models", timeout=5, json={
            "model": STALL_MODEL, "ttft_seconds": 0, "tokens": 200_000,
            "tokens_per_second": 100_000,
        })  # fmt: skip
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        try:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", self.stack.proxy_port))
            body = json.dumps({"model": STALL_MODEL, "prompt": "never read", "stream": True})
            sock.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nX-Request-ID: stall-%d\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (self.opened, len(body), body.encode())
            )
            self.opened += 1
            self._stop.wait(SEND_TIMEOUT_S + 3)  # never reads
        finally:
            sock.close()


def _stalled_dropped(stack: Any) -> int:
    """Requests dropped because their client stopped reading (the worker's `client_stalled`
    warning, one per dropped connection)."""
    return sum(
        1 for line in stack.service.output().splitlines() if "client_stalled: dropped" in line
    )


def run_chaos(
    seconds: float,
    out_dir: Path,
    *,
    concurrency: int = 16,
    seed: int = 1,
    kill_every_s: float = 40.0,
    cancel_pulls_at_end: bool = False,
) -> dict[str, Any]:
    """Run chaos and write its summary; returns it (`failures` empty: passed).

    `cancel_pulls_at_end` cancels the pulls still running when the load stops, so that a short
    run does not wait for slowed downloads to finish.
    """
    rng = random.Random(seed)
    with harness(
        "chaos", concurrency=concurrency, seed=seed,
        extra_env={**PULL_ENV, "LLM_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT_S)},
        emulator_args="--pull-bytes-per-second 5e8",
    ) as run:  # fmt: skip
        health = HealthTimeline(run.stack.management)
        health.start()
        liveness = LivenessProbe(f"http://127.0.0.1:{run.stack.proxy_port}")
        liveness.start()
        stalling = StallingClients(run.stack)
        stalling.start()
        chaos = Chaos(run, rng, kill_every_s)
        pulls = PullChaos(run.stack, random.Random(seed + 1))
        jobs = JobChaos(run.stack, random.Random(seed + 2))
        run.start_load()
        pulls.start()
        jobs.start()
        end = run.t0 + seconds
        while time.monotonic() < end:
            try:
                chaos.step()
            except Exception as exc:  # one failed action must not end the run
                chaos.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(rng.uniform(1.5, 3.5))
        pulls.stop()
        jobs.stop()
        stalling.stop()
        liveness.stop()
        if cancel_pulls_at_end:
            pulls.cancel_all()
        # Quiet period: faults left armed are cleared, and Ollama must be back on its own.
        try:
            run.stack.service.wait_program_running("ollama", timeout=RECOVERY_LIMIT_S)
            requests.delete(run.stack.service.ollama + "/_fake/faults", timeout=5)
        except Exception as exc:
            chaos.errors.append(f"after the run: {type(exc).__name__}: {exc}")
        summary = run.finish(faults_allowed=True, blind_windows=chaos.blind_windows)
        recovered = _wait_healthy(health, RECOVERY_LIMIT_S)
        health.stop()
        summary["pulls"] = pulls.settle(timeout=PULL_SETTLE_S)
        summary["failures"] += summary["pulls"].pop("failures")
        chaos.injected.update(summary["pulls"]["faults_injected"])
        chaos.injected["pull_cancel"] += summary["pulls"]["actions"].get("cancel_200", 0)
        summary["jobs"] = jobs.settle(timeout=JOB_SETTLE_S)
        summary["failures"] += summary["jobs"].pop("failures")
        summary["faults_injected"] = dict(sorted(chaos.injected.items()))
        summary["faults_injected_total"] = sum(chaos.injected.values())
        summary["management_answers"] = {k: dict(v) for k, v in chaos.answers.items()}
        summary["health"], failures = _outage_report(chaos, health, run.t0)
        summary["failures"] += failures
        if not recovered:
            summary["failures"].append("/health was not 200 at the end of the run")
        # The liveness probe never waits behind work (issue 29): p99 under a second all along.
        summary["liveness"] = liveness.report()
        p99 = summary["liveness"]["p99_ms"]
        if p99 is None or p99 >= LIVENESS_P99_LIMIT_MS or summary["liveness"]["missed"]:
            summary["failures"].append(f"liveness probe: {summary['liveness']}")
        summary["stalled_clients"] = {
            "opened": stalling.opened,
            "dropped": _stalled_dropped(run.stack),
            "send_timeout_s": SEND_TIMEOUT_S,
        }
        if stalling.errors:
            summary["stalled_clients"]["errors"] = stalling.errors[:5]
        if chaos.errors:
            summary["chaos_errors"] = chaos.errors[:20]
        keep_service_log(run, summary, out_dir / "chaos-service.log")
    write_summary(summary, out_dir / "chaos-summary.json")
    return summary


def _wait_healthy(health: HealthTimeline, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health.samples and health.samples[-1].status == 200:
            return True
        time.sleep(0.25)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability.chaos", description=__doc__)
    common_arguments(parser, minutes=10, concurrency=16)
    parser.add_argument("--kill-every", type=float, default=40.0, help="seconds between crashes")
    args = parser.parse_args(argv)
    summary = run_chaos(
        args.minutes * 60, args.out, concurrency=args.concurrency, seed=args.seed,
        kill_every_s=args.kill_every,
    )  # fmt: skip
    return report(summary, args.out / "chaos-summary.json")


if __name__ == "__main__":
    sys.exit(main())
