"""The accounting at the end of a run: every request once, nothing over a limit, nothing leaked."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.reliability import ledger as lg
from bench.reliability.load import LoadGenerator
from bench.reliability.observe import UpstreamCollector, UpstreamRecord
from bench.reliability.stack import MODEL_LIMITS, Stack

# The service checks the client socket every 250 ms; seconds mean a hang, not a slow check.
CANCEL_PROPAGATION_LIMIT_S = 5.0
ALWAYS_BAD = (lg.TRUNCATED, lg.BAD_429, lg.CLIENT_TIMEOUT, lg.CONNECTION_ERROR, lg.OTHER)


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


def _wait_upstream_closed(collector: UpstreamCollector, stack: Stack, timeout: float) -> None:
    """Poll until the emulator has seen every one of our connections close (or time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if collector.poll_now():
            live = collector.incarnations[-1]
            still_open = [
                r for r in collector.records.values() if r.incarnation == live and not r.closed_at
            ]
            if not still_open and not any(collector.in_flight.values()):
                return
        time.sleep(0.3)


def _describe_overlap(
    model: str, group: Sequence[UpstreamRecord], access: dict[str, list[dict[str, Any]]]
) -> str:
    """One failure line per moment Ollama held too many: who held a slot then, with the
    emulator's times (relative to the first) and what our access log says of each."""
    t0 = min(r.opened_at for r in group)

    def rel(at: float | None) -> str:
        return "-" if at is None else f"{at - t0:+.3f}"

    parts = []
    for r in group:
        line = (access.get(r.request_id) or [{}])[0]
        parts.append(
            f"{r.request_id} {r.path} opened {rel(r.opened_at)} slot {rel(r.slot_entered_at)}"
            f"..{rel(r.slot_left_at)} closed {rel(r.closed_at)} ({r.outcome}, fault {r.fault}; "
            f"ours: {line.get('outcome')}, released_after_ms {line.get('released_after_ms')})"
        )
    return f"overlap of {len(group)} on {model}: " + "; ".join(parts)


def account(
    load: LoadGenerator,
    collector: UpstreamCollector,
    stack: Stack,
    *,
    stuck_threads: list[str],
    faults_allowed: bool,
    blind_windows: Sequence[tuple[float, float]] = (),
) -> dict[str, Any]:
    """Check the finished run; returns the summary with `failures` (empty when it passed).

    `blind_windows` are spans in which the emulator was being restarted: what it saw just
    before dying may not have been collected, so a completed request that overlaps one and is
    missing from its observations counts as unverified, not as a failure.
    """
    ledger = load.ledger
    failures: list[str] = []
    totals = stack.wait_idle(timeout=20)
    _wait_upstream_closed(collector, stack, timeout=20)
    live = collector.incarnations[-1] if collector.incarnations else None
    results = {r.spec.request_id: r for r in ledger.snapshot()}
    outcomes = ledger.outcome_counts()

    # 1. The client side: one result per launched request.
    unrecorded = ledger.unrecorded()
    unaccounted = len(unrecorded) + len(ledger.recorded_twice)
    if unaccounted or stuck_threads:
        failures.append(
            f"unaccounted requests: {len(unrecorded)} without a result, "
            f"{len(ledger.recorded_twice)} recorded twice, stuck threads {stuck_threads}"
        )
    for outcome in ALWAYS_BAD + (() if faults_allowed else tuple(lg.FAULT_OUTCOMES)):
        if outcomes.get(outcome):
            examples = [
                f"{r.spec.request_id} {r.spec.api} {r.spec.model} stream={r.spec.stream} "
                f"status={r.status} {r.detail}"
                for r in results.values()
                if r.outcome == outcome
            ][:5]
            failures.append(f"{outcomes[outcome]} requests ended {outcome}: {examples}")
    durations = sorted(r.ended - r.started for r in results.values())
    longest = durations[-1] if durations else 0.0
    if longest > load.deadline_s + 1:
        failures.append(f"a request took {longest:.1f} s, past the {load.deadline_s} s bound")

    # 2. The service side: one access-log line per request.
    logged = stack.access_log(load.id_prefix)
    log_missing = [rid for rid in ledger.launched if rid not in logged]
    log_twice = [rid for rid, lines in logged.items() if len(lines) > 1]
    log_unknown = [rid for rid in logged if rid not in ledger.launched]
    if log_missing or log_twice or log_unknown:
        failures.append(
            f"access log: {len(log_missing)} requests missing (e.g. {log_missing[:3]}), "
            f"{len(log_twice)} logged twice (e.g. {log_twice[:3]}), {len(log_unknown)} unknown"
        )
    log_outcomes = Counter(lines[0].get("outcome") for lines in logged.values())
    # How each client outcome looked from the service: informative, not checked (a client may
    # leave just as the last line goes out, which the service rightly logs as completed).
    seen_as: dict[str, Counter[str]] = {}
    for rid, result in results.items():
        service_outcome = str(logged[rid][0].get("outcome")) if rid in logged else "-"
        seen_as.setdefault(result.outcome, Counter())[service_outcome] += 1

    # 3. Ollama's side: at most one upstream connection per request; 429s never sent; every
    #    cancelled request's connection closed (or its Ollama died, closing it).
    upstream = collector.by_request()
    duplicates = [rid for rid, records in upstream.items() if len(records) > 1]
    unknown = [rid for rid in upstream if rid not in ledger.launched]
    rejected_sent = [
        rid for rid, r in results.items() if r.outcome == lg.REJECTED_429 and rid in upstream
    ]
    unseen = [r for r in results.values() if r.outcome == lg.COMPLETED and r.spec.request_id
              not in upstream]  # fmt: skip
    unverified = [
        r.spec.request_id
        for r in unseen
        if any(r.started <= end and r.ended >= start for start, end in blind_windows)
    ]
    completed_unseen = [r.spec.request_id for r in unseen if r.spec.request_id not in unverified]
    cancelled = [r for r in results.values() if r.outcome == lg.CLIENT_CANCELLED]
    cancelled_open = [
        r.spec.request_id
        for r in cancelled
        for rec in upstream.get(r.spec.request_id, [])
        if rec.closed_at is None and rec.incarnation == live
    ]
    # How long the service took to hang up on Ollama after a client left (both clocks are the
    # machine's CLOCK_MONOTONIC). Negative: Ollama had finished before the client left.
    hang_up = sorted(
        rec.closed_at - r.ended
        for r in cancelled
        for rec in upstream.get(r.spec.request_id, [])
        if rec.closed_at is not None
    )
    slow_hang_ups = [d for d in hang_up if d > CANCEL_PROPAGATION_LIMIT_S]
    if slow_hang_ups:
        failures.append(
            f"{len(slow_hang_ups)} cancelled requests kept their upstream connection open "
            f"longer than {CANCEL_PROPAGATION_LIMIT_S} s (max {max(slow_hang_ups):.1f} s)"
        )
    for label, found in (
        ("requests sent upstream more than once", duplicates),
        ("upstream connections of unknown requests", unknown),
        ("429s that reached Ollama", rejected_sent),
        ("completed requests Ollama never saw", completed_unseen),
        ("cancelled requests whose upstream connection stayed open", cancelled_open),
    ):
        if found:
            failures.append(f"{len(found)} {label}: {found[:5]}")

    # 4. Limits held, and nothing left behind.
    models: dict[str, dict[str, int]] = {}
    for model, limit in MODEL_LIMITS.items():
        seen = collector.max_in_flight.get(model, 0)
        models[model] = {"limit": limit, "max_in_flight": seen}
        if seen > limit:
            failures.append(f"Ollama saw {seen} requests of {model} at once; the limit is {limit}")
            for group in collector.overlaps(model, limit):
                failures.append(_describe_overlap(model, group, logged))
    leaked = int(totals["in_flight"]) + int(totals["queued"])
    if leaked:
        failures.append(f"the limiter still holds {totals} after the load stopped")
    emulator_busy = {m: n for m, n in collector.in_flight.items() if n}
    if emulator_busy:
        failures.append(f"Ollama still generating after the load stopped: {emulator_busy}")

    stages = Counter(r.cancel_stage for r in cancelled)
    by_api = Counter(r.spec.api + ("/stream" if r.spec.stream else "") for r in results.values())
    return {
        "requests": len(ledger.launched),
        "outcomes": outcomes,
        "unaccounted": unaccounted,
        "max_in_flight": {m: v["max_in_flight"] for m, v in models.items()},
        "limit": {m: v["limit"] for m, v in models.items()},
        "models": models,
        "leaked_slots": leaked,
        "limiter_totals_after": totals,
        "cancelled": {
            "before_headers": stages.get("before_headers", 0),
            "mid_stream": stages.get("mid_stream", 0),
            "reached_ollama": sum(1 for r in cancelled if r.spec.request_id in upstream),
            "upstream_left_open": len(cancelled_open),
            "upstream_closed_after_s_p50": _quantile(hang_up, 0.5),
            "upstream_closed_after_s_max": _quantile(hang_up, 1.0),
        },
        "by_api": dict(sorted(by_api.items())),
        "access_log": {
            "missing": len(log_missing),
            "duplicated": len(log_twice),
            "unknown": len(log_unknown),
            "outcomes": dict(sorted((str(k), v) for k, v in log_outcomes.items())),
            "client_outcome_vs_service_outcome": {
                k: dict(sorted(v.items())) for k, v in sorted(seen_as.items())
            },
        },
        "upstream": {
            "connections": sum(len(v) for v in upstream.values()),
            "duplicates": len(duplicates),
            "completed_unverified_in_restart": len(unverified),
            "ollama_incarnations": len(collector.incarnations),
            "poll_errors": len(collector.errors),
        },
        "duration_s": {
            "max": round(longest, 2),
            "p50": _quantile(durations, 0.5),
            "p99": _quantile(durations, 0.99),
            "client_bound": load.deadline_s,
        },
        "failures": failures,
    }
