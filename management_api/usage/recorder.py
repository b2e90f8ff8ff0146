"""From access-log lines to hourly usage buckets, written in batches off the request path.

`on_request_done` (the gateway's request observer hook) adds one line to an in-memory dict
keyed by bucket, under a lock held for a few dict operations; nothing on the request path
touches SQLite. One background thread moves the dict into the store every ``flush_seconds``
and at `stop`, and prunes buckets older than the retention once an hour. The dict grows with
distinct buckets only (callers, models, tasks, classes and outcomes are bounded labels), so
nothing accepted is dropped; a failed write keeps the batch and retries it with the next one.

Reads merge the table, the batch being written and the dict, under the write lock, so every
answer is exact at any moment for this process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from management_api.proxy.inference import INFERENCE_ROUTES
from management_api.usage.store import FIELDS, HOUR, Key, Sums, UsageStore, hour_of, zero

log = logging.getLogger(__name__)

OTHER = "other"
ANONYMOUS = "anonymous"
NO_TASK = ""
DEFAULT_CLASS = "standard"
CACHE_REPLAYS = frozenset({"HIT", "COALESCED"})  # answered from the cache, no GPU time
GROUPS = ("caller", "model", "task", "priority", "hour")
_INDEX = {name: i for i, name in enumerate(("hour", "caller", "model", "task", "priority"))}
PRUNE_EVERY_SECONDS = 3600.0


class CallerLabels:
    """Bounds caller names: a key's name (bounded by the keys file) and ``anonymous`` always
    count as themselves; header-named callers (X-LLM-Caller) do for the first ``limit``
    distinct names this process sees, later ones count as ``other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, line: Mapping[str, Any]) -> str:
        caller = line.get("caller") or ANONYMOUS
        if caller == ANONYMOUS or (line.get("key") is not None and line.get("key") == caller):
            return caller
        if caller in self._named:
            return caller
        with self._lock:
            if caller in self._named:
                return caller
            if len(self._named) < self._limit:
                self._named.add(caller)
                return caller
        return OTHER


def line_usage(line: Mapping[str, Any]) -> Sums:
    """What one access-log line adds to its bucket, in `FIELDS` order.

    GPU time is what Ollama reported (``gpu_ms``); on OpenAI routes Ollama reports no durations,
    so the time the request held its slot (``held_ms``) counts instead: the same charge the
    fair queue uses. A cache replay used no GPU time and saved the tokens of the answer it
    replayed (``saved_tokens``)."""
    sums = zero()
    sums[0] = 1
    sums[1] = _int(line.get("prompt_tokens"))
    sums[2] = _int(line.get("eval_count"))
    gpu_ms = line.get("gpu_ms")
    if not isinstance(gpu_ms, int | float):
        gpu_ms = line.get("held_ms") if line.get("outcome") != "cache_hit" else 0
    sums[3] = max(0.0, float(gpu_ms or 0)) / 1000
    sums[4] = max(0.0, float(line.get("queue_wait_ms") or 0)) / 1000
    if line.get("cache") in CACHE_REPLAYS and line.get("outcome") in ("cache_hit", "coalesced"):
        sums[5] = 1
        sums[6] = _int(line.get("saved_tokens"))
    return sums


def outcome_of(line: Mapping[str, Any]) -> str:
    """The access log's ``outcome``, except that an answer Ollama completed with an error status
    (a 404 for a missing model, a 500) counts as ``http_<status>``: it is not a success."""
    outcome = str(line.get("outcome") or "unknown")
    status = line.get("status")
    if outcome == "completed" and isinstance(status, int) and status >= 400:
        return f"http_{status}"
    return outcome


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class UsageRecorder:
    def __init__(
        self,
        store: UsageStore,
        *,
        model_label: Callable[[str], str],
        retention_days: float = 90,
        flush_seconds: float = 2.0,
        max_header_callers: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._model_label = model_label
        self._retention = retention_days * 86400
        self._flush_seconds = flush_seconds
        self._callers = CallerLabels(max_header_callers)
        self._clock = clock
        self._lock = threading.Lock()  # guards _pending (the request path)
        self._write_lock = threading.Lock()  # guards _writing and the store's view
        self._pending: dict[Key, Sums] = {}
        self._writing: dict[Key, Sums] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0

    # --- the request path

    def on_request_done(self, line: Mapping[str, Any]) -> None:
        if line.get("path") not in INFERENCE_ROUTES or line.get("model") is None:
            return  # not an inference request (tags, show, version, …)
        key = self.key_of(line)
        sums = line_usage(line)
        with self._lock:
            bucket = self._pending.get(key)
            if bucket is None:
                self._pending[key] = sums
            else:
                for i, value in enumerate(sums):
                    bucket[i] += value

    def key_of(self, line: Mapping[str, Any]) -> Key:
        model = line.get("model_key") or self._model_label(str(line.get("model") or ""))
        return (
            hour_of(self._clock()),
            self._callers(line),
            model,
            str(line.get("task") or NO_TASK),
            str(line.get("priority") or DEFAULT_CLASS),
            outcome_of(line),
        )

    # --- the writer

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            try:
                self.flush()
                self._maybe_prune()
            except Exception:
                log.exception("writing usage failed; the batch is kept for the next try")

    def flush(self) -> int:
        """Write what has accumulated; how many buckets were written."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            for key, sums in batch.items():  # a kept failed batch merges with the new one
                _merge(self._writing, key, sums)
            written = len(self._writing)
            self.store.add(self._writing)  # raises: _writing stays for the next flush
            self._writing = {}
            return written

    def _maybe_prune(self) -> None:
        now = self._clock()
        if now - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = now
            removed = self.store.prune(now - self._retention)
            if removed:
                log.info("usage: pruned %d hourly buckets older than the retention", removed)

    # --- reads

    def buckets(self, since: float, until: float) -> dict[Key, Sums]:
        """Every bucket of the hours from ``since`` (rounded down to its hour) to ``until``,
        written or not."""
        merged: dict[Key, Sums] = {}
        low = hour_of(since)
        with self._write_lock:
            for key, sums in self.store.rows(since, until):
                _merge(merged, key, sums)
            with self._lock:
                unwritten = [*self._writing.items(), *self._pending.items()]
                unwritten = [(k, list(s)) for k, s in unwritten if low <= k[0] < until]
        for key, sums in unwritten:
            _merge(merged, key, sums)
        return merged

    def report(self, since: float, until: float, group_by: Iterable[str]) -> list[dict[str, Any]]:
        """Sums per group (each with its requests by outcome), largest request count first:
        the table summed by SQLite, plus what is not written yet (read under the write lock,
        so a batch being written is counted exactly once)."""
        fields = list(group_by)
        low = hour_of(since)
        with self._write_lock:
            stored = self.store.grouped(since, until, fields)
            with self._lock:
                unwritten = [*self._writing.items(), *self._pending.items()]
                unwritten = [(k, list(s)) for k, s in unwritten if low <= k[0] < until]
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for ident, outcome, sums in stored:
            _add(groups, fields, ident, outcome, sums)
        for key, sums in unwritten:
            _add(groups, fields, tuple(key[_INDEX[name]] for name in fields), key[5], sums)
        rows = [_rounded(group) for group in groups.values()]
        rows.sort(key=lambda row: (-row["requests"], [str(row[f]) for f in fields]))
        return rows

    @property
    def bucket_seconds(self) -> int:
        return HOUR


def totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sums of report rows, outcomes included."""
    total: dict[str, Any] = {**dict.fromkeys(FIELDS, 0), "outcomes": {}}
    for row in rows:
        for name in FIELDS:
            total[name] += row[name]
        for outcome, count in row["outcomes"].items():
            total["outcomes"][outcome] = total["outcomes"].get(outcome, 0) + count
    return _rounded(total)


def _add(
    groups: dict[tuple[Any, ...], dict[str, Any]],
    fields: list[str],
    ident: tuple[Any, ...],
    outcome: str,
    sums: Sums,
) -> None:
    group = groups.get(ident)
    if group is None:
        group = groups[ident] = {
            **dict(zip(fields, ident, strict=True)),
            **dict.fromkeys(FIELDS, 0),
            "outcomes": {},
        }
    for name, value in zip(FIELDS, sums, strict=True):
        group[name] += value
    group["outcomes"][outcome] = group["outcomes"].get(outcome, 0) + int(sums[0])


def _merge(into: dict[Key, Sums], key: Key, sums: Sums) -> None:
    bucket = into.get(key)
    if bucket is None:
        into[key] = list(sums)
    else:
        for i, value in enumerate(sums):
            bucket[i] += value


def _rounded(group: dict[str, Any]) -> dict[str, Any]:
    for name in FIELDS:
        value = group[name]
        group[name] = round(value, 3) if name.endswith("_seconds") else round(value)
    return group
