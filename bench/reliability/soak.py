"""Soak: steady mixed load for a long time, watching the API worker for leaks.

    python -m bench.reliability.soak [--minutes 30] [--sample-seconds 10]

Samples the gunicorn worker's RSS, open descriptors and threads every 10 s, then fails if RSS
grew more than 10 MB after warm-up, descriptors or threads kept growing, or the accounting does
not add up. Writes soak-summary.json, soak-samples.csv and soak.png to bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.reliability import memory
from bench.reliability.observe import ProcessSampler
from bench.reliability.run import (
    common_arguments,
    harness,
    keep_service_log,
    report,
    write_summary,
)


def run_soak(
    seconds: float,
    out_dir: Path,
    *,
    concurrency: int = 12,
    seed: int = 1,
    sample_s: float = 10.0,
    warmup_s: float | None = None,
) -> dict[str, Any]:
    """Run the soak and write its files; returns the summary (`failures` empty: passed)."""
    warmup = warmup_s if warmup_s is not None else min(300.0, seconds / 4)
    with harness("soak", concurrency=concurrency, seed=seed) as run:
        worker = run.stack.api_worker()
        sampler = ProcessSampler(worker, interval=sample_s)
        run.start_load()
        sampler.start()
        time.sleep(seconds)
        summary = run.finish(faults_allowed=False)
        sampler.stop()
        summary["faults_injected"] = {}
        figures = memory.analyse(sampler.samples, run.t0, warmup)
        if sampler.errors:
            figures["failures"].append(f"sampling the API worker failed: {sampler.errors[:3]}")
        if run.stack.api_worker().pid != worker.pid:
            figures["failures"].append("the API worker was replaced during the soak")
        summary["failures"] += figures.pop("failures")
        summary.update(figures)
        summary["sample_seconds"] = sample_s
        rows = sampler.as_rows(run.t0)
        keep_service_log(run, summary, out_dir / "soak-service.log")
    memory.write_csv(rows, out_dir / "soak-samples.csv")
    memory.plot(rows, warmup, out_dir / "soak.png", f"API worker, {seconds / 60:g} min soak")
    write_summary(summary, out_dir / "soak-summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability.soak", description=__doc__)
    common_arguments(parser, minutes=30, concurrency=12)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    summary = run_soak(
        args.minutes * 60, args.out, concurrency=args.concurrency, seed=args.seed,
        sample_s=args.sample_seconds, warmup_s=args.warmup_seconds,
    )  # fmt: skip
    return report(summary, args.out / "soak-summary.json")


if __name__ == "__main__":
    sys.exit(main())
