"""Hourly usage buckets in SQLite: one row per hour, caller, model, task, class, outcome.

WAL with ``synchronous=FULL`` like the jobs store: a flushed batch survives a killed process.
One connection under a lock; a batch is one transaction of upserts (``ON CONFLICT … DO UPDATE``
adds to the row), so several worker processes may share the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

HOUR = 3600
# The sums kept per bucket, in column order.
FIELDS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "gpu_seconds",
    "queue_wait_seconds",
    "cache_hits",
    "saved_tokens",
)
KEY_FIELDS = ("hour", "caller", "model", "task", "priority", "outcome")
Key = tuple[int, str, str, str, str, str]
Sums = list[float]

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL,
    caller TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    priority TEXT NOT NULL,
    outcome TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    gpu_seconds REAL NOT NULL DEFAULT 0,
    queue_wait_seconds REAL NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    saved_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, caller, model, task, priority, outcome)
) WITHOUT ROWID;
"""

_UPSERT = (
    f"INSERT INTO usage ({', '.join(KEY_FIELDS + FIELDS)}) "
    f"VALUES ({', '.join('?' * (len(KEY_FIELDS) + len(FIELDS)))}) "
    "ON CONFLICT (hour, caller, model, task, priority, outcome) DO UPDATE SET "
    + ", ".join(f"{name} = {name} + excluded.{name}" for name in FIELDS)
)


def hour_of(epoch_seconds: float) -> int:
    """The start of the UTC hour that holds ``epoch_seconds``."""
    return int(epoch_seconds // HOUR) * HOUR


def zero() -> Sums:
    return [0.0] * len(FIELDS)


class UsageStore:
    """The usage table. Every method is one short transaction under the store's lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, batch: Mapping[Key, Sums]) -> None:
        """Add a batch of bucket sums in one transaction (all or nothing)."""
        if not batch:
            return
        rows = [(*key, *_stored(sums)) for key, sums in batch.items()]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def rows(self, since: float, until: float) -> Iterable[tuple[Key, Sums]]:
        """Every bucket whose hour starts in [hour_of(since), until)."""
        with self._lock:
            found = self._db.execute(
                f"SELECT {', '.join(KEY_FIELDS + FIELDS)} FROM usage WHERE hour >= ? AND hour < ?",
                (hour_of(since), until),
            ).fetchall()
        return [(tuple(row[:6]), [float(v) for v in row[6:]]) for row in found]  # type: ignore[misc]

    def grouped(
        self, since: float, until: float, group_by: Sequence[str]
    ) -> list[tuple[tuple[Any, ...], str, Sums]]:
        """Sums per group and outcome of the buckets `rows` would return, summed by SQLite
        (a 90-day read then moves a few rows, not every bucket)."""
        unknown = [name for name in group_by if name not in KEY_FIELDS]
        if unknown:
            raise ValueError(f"unknown group fields {unknown}")
        columns = ", ".join([*group_by, "outcome"])
        with self._lock:
            found = self._db.execute(
                f"SELECT {columns}, {', '.join(f'SUM({f})' for f in FIELDS)} FROM usage "
                f"WHERE hour >= ? AND hour < ? GROUP BY {columns}",
                (hour_of(since), until),
            ).fetchall()
        width = len(group_by)
        return [(tuple(row[:width]), row[width], [float(v) for v in row[width + 1 :]])
                for row in found]  # fmt: skip

    def prune(self, before: float) -> int:
        """Delete the buckets of hours that ended before ``before``; how many went."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM usage WHERE hour + ? <= ?", (HOUR, before))
            return cursor.rowcount


def _stored(sums: Sums) -> list[float | int]:
    # Counts stay integers in SQLite; seconds stay real.
    return [
        value if name in ("gpu_seconds", "queue_wait_seconds") else int(value)
        for name, value in zip(FIELDS, sums, strict=True)
    ]
