"""Jobs in SQLite: one row per job, written before the 202 and on every change of state.

WAL mode with ``synchronous=FULL``: a commit survives a killed process and a power cut, and
readers (GET /api/jobs) never wait for the writer. One connection per store, used under a
lock: the writes are few and small, and one connection keeps SQLite's locking out of the way.
Claiming is one transaction, so a job is handed to exactly one worker.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
MAX_HISTORY = 50  # events kept per job (the latest)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    body TEXT NOT NULL,
    caller TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    callback_url TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    not_before REAL NOT NULL DEFAULT 0,
    owner TEXT,
    http_status INTEGER,
    result TEXT,
    error TEXT,
    reason TEXT,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    history TEXT NOT NULL DEFAULT '[]',
    base_url TEXT NOT NULL DEFAULT '',
    callback_state TEXT,
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_next_at REAL,
    batch_id TEXT,
    custom_id TEXT,
    batch_line INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_caller ON jobs (caller, status);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs (callback_next_at)
    WHERE callback_state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, batch_line) WHERE batch_id IS NOT NULL;
"""
# The Batch API's tables (jobs/batches.py), in the same file: a batch and its jobs commit
# together.
BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    caller TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    caller TEXT NOT NULL,
    metadata TEXT,
    created_at REAL NOT NULL,
    in_progress_at REAL,
    finalizing_at REAL,
    completed_at REAL,
    cancelling_at REAL,
    cancelled_at REAL,
    output_file_id TEXT,
    error_file_id TEXT,
    total INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    invalid TEXT NOT NULL DEFAULT '[]'
);
"""

# Columns added after the first version of the table: (name, declaration) for ALTER TABLE.
ADDED_COLUMNS = (
    ("base_url", "TEXT NOT NULL DEFAULT ''"),
    ("callback_state", "TEXT"),
    ("callback_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("callback_next_at", "REAL"),
    ("batch_id", "TEXT"),
    ("custom_id", "TEXT"),
    ("batch_line", "INTEGER"),
)
PENDING, DELIVERED, UNDELIVERED = "pending", "delivered", "failed"
# Every move to a final state queues the callback, when there is one.
_QUEUE_CALLBACK = (
    "callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, "
    "callback_next_at = ?"
)

_COLUMNS = (
    "id, route, body, caller, priority, callback_url, status, attempts, created_at, "
    "started_at, finished_at, not_before, http_status, result, error, reason, result_bytes, "
    "cancel_requested, history, base_url, callback_state, callback_attempts, batch_id, custom_id, "
    "batch_line"
)


@dataclass
class Job:
    id: str
    route: str
    body: dict[str, Any]
    caller: str
    priority: int
    callback_url: str | None
    status: str
    attempts: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float = 0.0
    http_status: int | None = None
    result: Any = None
    error: Any = None
    reason: str | None = None
    result_bytes: int = 0
    cancel_requested: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    base_url: str = ""
    callback_state: str | None = None
    callback_attempts: int = 0
    batch_id: str | None = None
    custom_id: str | None = None
    batch_line: int | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        (id_, route, body, caller, priority, callback_url, status, attempts, created_at,
         started_at, finished_at, not_before, http_status, result, error, reason, result_bytes,
         cancel_requested, history, base_url, callback_state, callback_attempts, batch_id,
         custom_id, batch_line) = row  # fmt: skip
        return cls(
            id=id_,
            route=route,
            body=json.loads(body),
            caller=caller,
            priority=priority,
            callback_url=callback_url,
            status=status,
            attempts=attempts,
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            not_before=not_before,
            http_status=http_status,
            result=json.loads(result) if result is not None else None,
            error=json.loads(error) if error is not None else None,
            reason=reason,
            result_bytes=result_bytes,
            cancel_requested=bool(cancel_requested),
            history=json.loads(history),
            base_url=base_url,
            callback_state=callback_state,
            callback_attempts=callback_attempts,
            batch_id=batch_id,
            custom_id=custom_id,
            batch_line=batch_line,
        )


@dataclass(frozen=True)
class Counts:
    by_status: dict[str, int]
    stored_bytes: int


class JobStore:
    """The jobs table. Every method is one short transaction under the store's lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA.split("CREATE INDEX IF NOT EXISTS jobs_callbacks")[0])
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, declaration in ADDED_COLUMNS:
            if name not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
        self._db.executescript(SCHEMA)
        self._db.executescript(BATCH_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _note(self, job_id: str, event: str, now: float, **detail: Any) -> None:
        """Append one event to the job's history (the caller holds the lock)."""
        row = self._db.execute("SELECT history, attempts FROM jobs WHERE id = ?", (job_id,))
        found = row.fetchone()
        if found is None:
            return
        history = json.loads(found[0])
        history.append({"at": round(now, 3), "attempt": found[1], "event": event, **detail})
        self._db.execute(
            "UPDATE jobs SET history = ? WHERE id = ?",
            (json.dumps(history[-MAX_HISTORY:], separators=(",", ":")), job_id),
        )

    def _one(self, sql: str, args: Iterable[Any] = ()) -> Job | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {sql}", tuple(args)).fetchone()
        return Job.from_row(row) if row else None

    # --- writes

    def insert(self, job: Job) -> None:
        with self._lock:
            self._insert(job)

    def _insert(self, job: Job) -> None:
        self._db.execute(
            "INSERT INTO jobs (id, route, body, caller, priority, callback_url, status, "
            "attempts, created_at, base_url, batch_id, custom_id, batch_line) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
            (job.id, job.route, json.dumps(job.body, separators=(",", ":")), job.caller,
             job.priority, job.callback_url, QUEUED, job.created_at, job.base_url, job.batch_id,
             job.custom_id, job.batch_line),
        )  # fmt: skip

    def transaction(self, work: Any) -> Any:
        """Run ``work(insert_job, execute)`` in one transaction (all or nothing, one fsync)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                outcome = work(self._insert, self._db.execute)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return outcome

    def read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (the batches module keeps its tables in this file)."""
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def batch_jobs(self, batch_id: str) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE batch_id = ? ORDER BY batch_line",
                (batch_id,),
            ).fetchall()
        return [Job.from_row(row) for row in rows]

    def claim(self, max_per_caller: int, owner: str, now: float) -> Job | None:
        """The next queued job whose caller has fewer than `max_per_caller` running, now marked
        running by `owner` (highest priority first, then oldest); None when there is none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE status = ? AND not_before <= ? AND caller NOT IN "
                    "(SELECT caller FROM jobs WHERE status = ? GROUP BY caller "
                    "HAVING COUNT(*) >= ?) ORDER BY priority DESC, seq LIMIT 1",
                    (QUEUED, now, RUNNING, max_per_caller),
                ).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute(
                    "UPDATE jobs SET status = ?, attempts = attempts + 1, started_at = ?, "
                    "owner = ? WHERE id = ?",
                    (RUNNING, now, owner, row[0]),
                )
                self._note(row[0], "started", now)
                job = self._one("id = ?", (row[0],))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return job

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        http_status: int | None,
        result: Any = None,
        error: Any = None,
        reason: str | None = None,
        now: float,
    ) -> bool:
        """Record a running job's end; False when it was no longer running (e.g. cancelled)."""
        result_text = None if result is None else json.dumps(result, separators=(",", ":"))
        error_text = None if error is None else json.dumps(error, separators=(",", ":"))
        size = len(result_text or "") + len(error_text or "")
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, http_status = ?, result = ?, error = ?, reason = ?, "
                f"result_bytes = ?, finished_at = ?, owner = NULL, {_QUEUE_CALLBACK} "
                "WHERE id = ? AND status = ?",
                (
                    status,
                    http_status,
                    result_text,
                    error_text,
                    reason,
                    size,
                    now,
                    now,
                    job_id,
                    RUNNING,
                ),
            )
            if cursor.rowcount == 1:
                self._note(job_id, status, now, http_status=http_status, reason=reason)
            return cursor.rowcount == 1

    def requeue(self, job_id: str, *, not_before: float, reason: str, now: float) -> bool:
        """Give a running job back to the queue (its attempt stays counted)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, not_before = ?, reason = ?, owner = NULL "
                "WHERE id = ? AND status = ?",
                (QUEUED, not_before, reason, job_id, RUNNING),
            )
            if cursor.rowcount == 1:
                self._note(job_id, "requeued", now, reason=reason)
            return cursor.rowcount == 1

    def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a queued job at once, or flag a running one (its worker ends it); the job as
        it is afterwards, None when there is no such job."""
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET status = ?, finished_at = ?, reason = ?, {_QUEUE_CALLBACK} "
                "WHERE id = ? AND status = ?",
                (CANCELLED, now, "cancelled before it ran", now, job_id, QUEUED),
            )
            if cursor_changed(self._db):
                self._note(job_id, CANCELLED, now, reason="cancelled before it ran")
            self._db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?",
                (job_id, RUNNING),
            )
            if cursor_changed(self._db):
                self._note(job_id, "cancel_requested", now)
            return self._one("id = ?", (job_id,))

    def recover(self, max_attempts: int, now: float, alive: Any = None) -> tuple[int, int]:
        """Running jobs whose owner process is gone (a restart, a killed worker) go back to the
        queue, or fail when they used all their attempts. Returns (requeued, failed)."""
        alive = alive or _process_alive
        me = process_identity()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, attempts, owner, cancel_requested FROM jobs WHERE status = ?",
                (RUNNING,),
            ).fetchall()
            requeued = failed = 0
            for job_id, attempts, owner, cancel_requested in rows:
                if owner is not None and (owner == me or alive(owner)):
                    continue  # this process, or another live worker (a reload), runs it
                if cancel_requested:
                    self._db.execute(
                        "UPDATE jobs SET status = ?, finished_at = ?, owner = NULL, reason = ?, "
                        f"{_QUEUE_CALLBACK} WHERE id = ?",
                        (CANCELLED, now, "cancelled; the service restarted while it ran", now,
                         job_id),
                    )  # fmt: skip
                    self._note(job_id, CANCELLED, now, reason="the service restarted")
                elif attempts >= max_attempts:
                    failed += 1
                    self._db.execute(
                        "UPDATE jobs SET status = ?, finished_at = ?, owner = NULL, reason = ?, "
                        f"{_QUEUE_CALLBACK} WHERE id = ?",
                        (FAILED, now, f"interrupted {attempts} times (the service restarted "
                         f"while it ran); max_attempts is {max_attempts}", now, job_id),
                    )  # fmt: skip
                    self._note(job_id, FAILED, now, reason="interrupted by a restart")
                else:
                    requeued += 1
                    self._db.execute(
                        "UPDATE jobs SET status = ?, owner = NULL, reason = ? WHERE id = ?",
                        (QUEUED, "interrupted: the service restarted while it ran", job_id),
                    )
                    self._note(job_id, "requeued", now, reason="interrupted by a restart")
            return requeued, failed

    def prune(self, *, ttl_seconds: float, max_finished: int, max_bytes: int, now: float) -> int:
        """Forget finished jobs past the TTL, then the oldest beyond the count and byte bounds.
        Unfinished jobs are never pruned (their bound is the one on submission)."""
        final = tuple(FINAL)
        marks = ",".join("?" * len(final))
        with self._lock:
            removed = self._db.execute(
                f"DELETE FROM jobs WHERE status IN ({marks}) AND finished_at < ? "
                "AND callback_state IS NOT 'pending' AND (batch_id IS NULL OR batch_id NOT IN "
                "(SELECT id FROM batches WHERE status IN ('in_progress', 'cancelling')))",
                (*final, now - ttl_seconds),
            ).rowcount
            count, size = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(result_bytes), 0) FROM jobs "
                f"WHERE status IN ({marks}) AND callback_state IS NOT 'pending' "
                "AND batch_id IS NULL",
                final,
            ).fetchone()
            if count <= max_finished and size <= max_bytes:
                return removed
            rows = self._db.execute(
                f"SELECT seq, result_bytes FROM jobs WHERE status IN ({marks}) "
                "AND callback_state IS NOT 'pending' AND batch_id IS NULL "
                "ORDER BY finished_at, seq",
                final,
            ).fetchall()
            doomed = []
            for seq, nbytes in rows:
                if count <= max_finished and size <= max_bytes:
                    break
                count, size = count - 1, size - nbytes
                doomed.append((seq,))
            self._db.executemany("DELETE FROM jobs WHERE seq = ?", doomed)
            removed += len(doomed)
            return removed

    # --- callbacks

    def take_callback(self, now: float, lease_seconds: float) -> Job | None:
        """A job whose callback is due, leased for `lease_seconds` (another sender skips it)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE callback_state = ? AND callback_next_at <= ? "
                    "ORDER BY callback_next_at LIMIT 1",
                    (PENDING, now),
                ).fetchone()
                job = None
                if row is not None:
                    self._db.execute(
                        "UPDATE jobs SET callback_next_at = ? WHERE id = ?",
                        (now + lease_seconds, row[0]),
                    )
                    job = self._one("id = ?", (row[0],))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return job

    def callback_attempted(
        self,
        job_id: str,
        *,
        delivered: bool,
        status: int | None,
        error: str | None,
        retry_at: float | None,
        now: float,
    ) -> None:
        """Record one delivery attempt: delivered, to be retried at `retry_at`, or given up."""
        state = DELIVERED if delivered else (PENDING if retry_at is not None else UNDELIVERED)
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET callback_state = ?, callback_attempts = callback_attempts + 1, "
                "callback_next_at = ? WHERE id = ?",
                (state, retry_at, job_id),
            )
            attempts = self._db.execute(
                "SELECT callback_attempts FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            self._note(job_id, "callback", now, callback_attempt=attempts[0] if attempts else None,
                       status=status, error=error, outcome=state)  # fmt: skip

    # --- reads

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._one("id = ?", (job_id,))

    def list(
        self, *, status: str | None = None, caller: str | None = None, limit: int = 100
    ) -> list[Job]:
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if caller is not None:
            clauses.append("caller = ?")
            args.append(caller)
        where = " AND ".join(clauses) or "1"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [Job.from_row(row) for row in rows]

    def unfinished(self) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)", (QUEUED, RUNNING)
            ).fetchone()[0]

    def counts(self) -> Counts:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            size = self._db.execute("SELECT COALESCE(SUM(result_bytes), 0) FROM jobs").fetchone()
        by_status = dict.fromkeys(STATUSES, 0)
        by_status.update(dict(rows))
        return Counts(by_status, size[0])

    def running_ids(self, owner: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status = ? AND owner = ?", (RUNNING, owner)
            ).fetchall()
        return [row[0] for row in rows]


def cursor_changed(db: sqlite3.Connection) -> bool:
    """Whether the last statement on `db` changed a row."""
    return db.execute("SELECT changes()").fetchone()[0] > 0


def process_identity(pid: int | None = None) -> str:
    """``pid:start`` of a process (its start time in clock ticks since boot, from /proc), so a
    pid reused after a restart is not taken for the process that claimed a job; ``pid:`` where
    /proc is not readable."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_ticks(pid) or ''}"


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat; None for a zombie or a process that is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may have spaces
    if fields[0] in ("Z", "X"):  # a zombie has released everything it held
        return None
    return fields[19]


def _process_alive(owner: str) -> bool:
    pid_text, _, start = str(owner).partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    ticks = _start_ticks(pid)
    return ticks is not None and (not start or ticks == start)


def now() -> float:
    return time.time()
