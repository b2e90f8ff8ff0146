"""What chaos and soak share: the stack, the load, the collector, the summary file."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.reliability.load import LoadGenerator, Mix
from bench.reliability.observe import UpstreamCollector
from bench.reliability.stack import MODEL_LIMITS, Stack
from bench.reliability.verify import account

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
# Queue wait + Ollama's restart grace + first-byte timeout + a slow stream, with room to spare:
# a request still open after this is a hang.
CLIENT_DEADLINE_S = 40.0


@dataclass
class Harness:
    stack: Stack
    load: LoadGenerator
    collector: UpstreamCollector
    started_at: str
    t0: float = 0.0

    def start_load(self) -> None:
        self.t0 = time.monotonic()
        self.load.start()

    def finish(
        self, *, faults_allowed: bool, blind_windows: list[tuple[float, float]] | None = None
    ) -> dict[str, Any]:
        """Stop the load and account for it; the summary's `failures` says what went wrong."""
        stuck = self.load.stop()
        load_seconds = time.monotonic() - self.t0
        self.collector.stop()
        summary = account(
            self.load, self.collector, self.stack, stuck_threads=stuck,
            faults_allowed=faults_allowed, blind_windows=blind_windows or [],
        )  # fmt: skip
        summary["started_at"] = self.started_at
        summary["load_seconds"] = round(load_seconds, 1)
        summary["requests_per_second"] = round(summary["requests"] / max(load_seconds, 1e-9), 1)
        summary["concurrency"] = self.load.concurrency
        return summary


@contextmanager
def harness(
    name: str,
    *,
    concurrency: int,
    seed: int,
    extra_env: dict[str, str] | None = None,
    emulator_args: str = "",
) -> Iterator[Harness]:
    stack = Stack(extra_env, emulator_args).start()
    try:
        prefix = f"{name}-{seed}-{int(time.time())}"
        load = LoadGenerator(
            "127.0.0.1", stack.proxy_port, Mix(models=tuple(MODEL_LIMITS)),
            concurrency=concurrency, deadline_s=CLIENT_DEADLINE_S, seed=seed, id_prefix=prefix,
        )  # fmt: skip
        collector = UpstreamCollector(stack, prefix)
        collector.start()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        yield Harness(stack, load, collector, started)
    finally:
        stack.stop()


def keep_service_log(run: Harness, summary: dict[str, Any], path: Path) -> None:
    """A failed run keeps everything the service printed (it is deleted with the stack); a
    passing run removes the log an earlier failure left."""
    path.unlink(missing_ok=True)
    if summary["failures"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.stack.service.output_path, path)
        summary["service_log"] = str(path)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    summary["passed"] = not summary["failures"]
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")


def common_arguments(parser: argparse.ArgumentParser, minutes: float, concurrency: int) -> None:
    parser.add_argument("--minutes", type=float, default=minutes, help="how long the load runs")
    parser.add_argument("--concurrency", type=int, default=concurrency, help="client threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results go")


def report(summary: dict[str, Any], path: Path) -> int:
    """Print the headline figures; the exit status of the run."""
    headline = ("requests", "outcomes", "unaccounted", "faults_injected", "max_in_flight",
                "limit", "leaked_slots")  # fmt: skip
    print(json.dumps({k: summary[k] for k in headline if k in summary}, indent=2))
    for failure in summary["failures"]:
        print(f"FAIL: {failure}")
    print(f"{'PASSED' if not summary['failures'] else 'FAILED'}; summary in {path}")
    return 0 if not summary["failures"] else 1
