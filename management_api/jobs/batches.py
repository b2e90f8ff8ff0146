"""The OpenAI Batch API on top of jobs: files, batches, output and error files.

A batch's input file (JSONL, one request per line) becomes one job per valid line, inserted in
one transaction, so a batch is as durable as jobs are; a bad line goes to the error file and the
others run. When the last job of a batch ends, the batch is finalized: the answers of the
succeeded lines go to the output file, everything else (bad lines, failed and cancelled ones) to
the error file, each with its ``custom_id``, in input order. File contents live under
``<state dir>/files``, their metadata and the batches in the jobs database.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from management_api.jobs import store as st
from management_api.jobs.manager import JobManager, JobsFull
from management_api.jobs.store import Job

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
COMPLETION_WINDOWS = ("24h",)
MAX_LINES = 50_000
MAX_CUSTOM_ID = 512
BATCH_PRIORITY = -1  # behind jobs submitted one by one

_BATCH_COLUMNS = (
    "id, endpoint, input_file_id, completion_window, status, caller, metadata, created_at, "
    "in_progress_at, finalizing_at, completed_at, cancelling_at, cancelled_at, output_file_id, "
    "error_file_id, total, completed, failed, invalid"
)


class BatchError(ValueError):
    """A request the Batch API refuses (400), with the parameter it concerns."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class FileRecord:
    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    caller: str

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class Batches:
    """Files and batches, sharing the jobs database; call `open` once the manager started."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager
        self._lock = threading.Lock()
        self._opened = False

    @property
    def files_dir(self) -> Path:
        return self.manager.path.parent / "files"

    def open(self) -> None:
        if self._opened:
            return
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.manager.on_job_end = self._job_ended
        self.manager.on_prune = self.prune
        self._opened = True
        for (batch_id,) in self.manager.store.read(
            "SELECT id FROM batches WHERE status IN ('in_progress', 'cancelling')"
        ):
            self.finalize_if_done(batch_id)  # a restart between the last job and finalizing

    # --- files

    def create_file(
        self, content: bytes, *, filename: str, purpose: str, caller: str
    ) -> FileRecord:
        record = FileRecord(
            id="file-" + secrets.token_hex(12),
            purpose=purpose,
            filename=filename,
            bytes=len(content),
            created_at=st.now(),
            caller=caller,
        )
        path = self.files_dir / record.id
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        self.manager.store.transaction(
            lambda _insert, execute: execute(
                "INSERT INTO files (id, purpose, filename, bytes, created_at, caller) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, purpose, filename, record.bytes, record.created_at, caller),
            )
        )
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        rows = self.manager.store.read(
            "SELECT id, purpose, filename, bytes, created_at, caller FROM files WHERE id = ?",
            (file_id,),
        )
        return FileRecord(*rows[0]) if rows else None

    def file_content(self, record: FileRecord) -> bytes:
        return (self.files_dir / record.id).read_bytes()

    # --- batches

    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        caller: str,
    ) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise BatchError("endpoint must be one of " + ", ".join(ENDPOINTS), "endpoint")
        if completion_window not in COMPLETION_WINDOWS:
            raise BatchError("completion_window must be 24h", "completion_window")
        record = self.get_file(input_file_id)
        if record is None or record.purpose != "batch":
            raise BatchError(f"no batch input file '{input_file_id[:64]}'", "input_file_id")
        lines = self.file_content(record).decode("utf-8", errors="replace").splitlines()
        valid, invalid = _parse_lines(lines, endpoint)
        if not valid and not invalid:
            raise BatchError("the input file has no requests", "input_file_id")
        limits = self.manager.limits
        if self.manager.store.unfinished() + len(valid) > limits.max_queued:
            raise JobsFull(limits.max_queued)
        batch_id = "batch_" + secrets.token_hex(12)
        now = st.now()

        def insert(insert_job: Any, execute: Any) -> None:
            execute(
                f"INSERT INTO batches ({_BATCH_COLUMNS}) VALUES "
                "(?, ?, ?, ?, 'in_progress', ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, ?, "
                "0, 0, ?)",
                (batch_id, endpoint, input_file_id, completion_window, caller,
                 json.dumps(metadata) if metadata is not None else None, now, now,
                 len(valid) + len(invalid), json.dumps(invalid)),
            )  # fmt: skip
            for line_no, custom_id, body in valid:
                insert_job(
                    Job(
                        id="job_" + secrets.token_hex(12),
                        route=endpoint,
                        body=body,
                        caller=caller,
                        priority=BATCH_PRIORITY,
                        callback_url=None,
                        status=st.QUEUED,
                        attempts=0,
                        created_at=now,
                        batch_id=batch_id,
                        custom_id=custom_id,
                        batch_line=line_no,
                    )
                )

        self.manager.store.transaction(insert)
        self.manager.wake()
        if not valid:
            self.finalize_if_done(batch_id)
        batch = self.get(batch_id)
        assert batch is not None
        return batch

    def _row(self, batch_id: str) -> dict[str, Any] | None:
        rows = self.manager.store.read(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
        )
        if not rows:
            return None
        return dict(zip(_BATCH_COLUMNS.split(", "), rows[0], strict=True))

    def get(self, batch_id: str) -> dict[str, Any] | None:
        row = self._row(batch_id)
        if row is None:
            return None
        if row["status"] in ("in_progress", "cancelling"):
            self.finalize_if_done(batch_id)
            row = self._row(batch_id)
            assert row is not None
        return self._view(row)

    def caller_of(self, batch_id: str) -> str | None:
        row = self._row(batch_id)
        return row["caller"] if row else None

    def list(self, *, caller: str | None, limit: int, after: str | None) -> dict[str, Any]:
        clauses, args = [], []
        if caller is not None:
            clauses.append("caller = ?")
            args.append(caller)
        if after is not None:
            clauses.append("seq < (SELECT seq FROM batches WHERE id = ?)")
            args.append(after)
        where = " AND ".join(clauses) or "1"
        rows = self.manager.store.read(
            f"SELECT id FROM batches WHERE {where} ORDER BY seq DESC LIMIT ?", (*args, limit + 1)
        )
        ids = [row[0] for row in rows]
        data = [b for b in (self.get(i) for i in ids[:limit]) if b is not None]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ids) > limit,
        }

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        row = self._row(batch_id)
        if row is None:
            return None
        if row["status"] == "in_progress":
            self.manager.store.transaction(
                lambda _insert, execute: execute(
                    "UPDATE batches SET status = 'cancelling', cancelling_at = ? "
                    "WHERE id = ? AND status = 'in_progress'",
                    (st.now(), batch_id),
                )
            )
            for job in self.manager.store.batch_jobs(batch_id):
                if job.status not in st.FINAL:
                    self.manager.cancel(job.id)
        return self.get(batch_id)

    def prune(self, ttl_seconds: float, now: float) -> int:
        """Forget ended batches and files older than the TTL (files still read by a running
        batch stay), with their files on disk and their jobs."""
        cutoff = now - ttl_seconds
        doomed_batches = [row[0] for row in self.manager.store.read(
            "SELECT id FROM batches WHERE status IN ('completed', 'cancelled') "
            "AND COALESCE(completed_at, cancelled_at) < ?", (cutoff,))]  # fmt: skip
        doomed_files = [row[0] for row in self.manager.store.read(
            "SELECT id FROM files WHERE created_at < ? AND id NOT IN (SELECT input_file_id FROM "
            "batches WHERE status IN ('in_progress', 'cancelling'))", (cutoff,))]  # fmt: skip

        def forget(_insert: Any, execute: Any) -> None:
            for batch_id in doomed_batches:
                execute("DELETE FROM jobs WHERE batch_id = ?", (batch_id,))
                execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            for file_id in doomed_files:
                execute("DELETE FROM files WHERE id = ?", (file_id,))

        self.manager.store.transaction(forget)
        for file_id in doomed_files:
            (self.files_dir / file_id).unlink(missing_ok=True)
        return len(doomed_batches) + len(doomed_files)

    # --- finalizing

    def _job_ended(self, job: Job) -> None:
        if job.batch_id is not None:
            self.finalize_if_done(job.batch_id)

    def finalize_if_done(self, batch_id: str) -> None:
        """Write the output and error files once every job of the batch has ended."""
        with self._lock:
            row = self._row(batch_id)
            if row is None or row["status"] not in ("in_progress", "cancelling"):
                return
            (unfinished,) = self.manager.store.read(
                "SELECT COUNT(*) FROM jobs WHERE batch_id = ? AND status IN (?, ?)",
                (batch_id, st.QUEUED, st.RUNNING),
            )[0]
            if unfinished:
                return
            jobs = self.manager.store.batch_jobs(batch_id)
            cancelling = row["status"] == "cancelling"
            output, errors = [], list(json.loads(row["invalid"]))
            for job in jobs:
                if job.status == st.SUCCEEDED:
                    output.append((job.batch_line, _output_line(job)))
                else:
                    errors.append((job.batch_line, _error_line(job)))
            output.sort(key=lambda pair: pair[0])
            errors.sort(key=lambda pair: pair[0])
            caller = row["caller"]
            output_id = error_id = None
            if output:
                output_id = self.create_file(_jsonl(output), filename=f"{batch_id}_output.jsonl",
                                             purpose="batch_output", caller=caller).id  # fmt: skip
            if errors:
                error_id = self.create_file(_jsonl(errors), filename=f"{batch_id}_error.jsonl",
                                            purpose="batch_output", caller=caller).id  # fmt: skip
            now = st.now()
            final = "cancelled" if cancelling else "completed"
            stamp = "cancelled_at" if cancelling else "completed_at"
            self.manager.store.transaction(
                lambda _insert, execute: execute(
                    f"UPDATE batches SET status = ?, finalizing_at = ?, {stamp} = ?, "
                    "output_file_id = ?, error_file_id = ?, completed = ?, failed = ? "
                    "WHERE id = ?",
                    (final, now, now, output_id, error_id, len(output), len(errors), batch_id),
                )
            )
            log.info("batch %s %s: %d answers, %d errors", batch_id, final, len(output),
                     len(errors))  # fmt: skip

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["status"] in ("in_progress", "cancelling"):
            counts = dict(
                self.manager.store.read(
                    "SELECT status, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY status",
                    (row["id"],),
                )
            )
            completed = counts.get(st.SUCCEEDED, 0)
            failed = counts.get(st.FAILED, 0) + counts.get(st.CANCELLED, 0)
            failed += len(json.loads(row["invalid"]))
        else:
            completed, failed = row["completed"], row["failed"]

        def stamp(name: str) -> int | None:
            value = row[name]
            return int(value) if value is not None else None

        return {
            "id": row["id"],
            "object": "batch",
            "endpoint": row["endpoint"],
            "errors": None,
            "input_file_id": row["input_file_id"],
            "completion_window": row["completion_window"],
            "status": row["status"],
            "output_file_id": row["output_file_id"],
            "error_file_id": row["error_file_id"],
            "created_at": stamp("created_at"),
            "in_progress_at": stamp("in_progress_at"),
            "expires_at": int(row["created_at"]) + 24 * 3600,
            "finalizing_at": stamp("finalizing_at"),
            "completed_at": stamp("completed_at"),
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": stamp("cancelling_at"),
            "cancelled_at": stamp("cancelled_at"),
            "request_counts": {"total": row["total"], "completed": completed, "failed": failed},
            "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
        }


def _parse_lines(
    lines: list[str], endpoint: str
) -> tuple[list[tuple[int, str, dict[str, Any]]], list[tuple[int, dict[str, Any]]]]:
    """(valid lines as (line number, custom_id, body), error-file entries of the bad ones)."""
    valid: list[tuple[int, str, dict[str, Any]]] = []
    invalid: list[tuple[int, dict[str, Any]]] = []
    seen: set[str] = set()
    if len(lines) > MAX_LINES:
        raise BatchError(f"the input file has more than {MAX_LINES} lines", "input_file_id")
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        custom_id = None
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("custom_id"), str):
            custom_id = entry["custom_id"]
        problem = _problem(entry, endpoint, seen)
        if problem is not None:
            invalid.append((number, {
                "id": f"batch_req_line{number}",
                "custom_id": custom_id,
                "response": None,
                "error": {"code": "invalid_request", "message": f"line {number}: {problem}"},
            }))  # fmt: skip
            continue
        assert isinstance(entry, dict) and custom_id is not None
        seen.add(custom_id)
        body = dict(entry["body"])
        if endpoint == "/v1/chat/completions":
            body["stream"] = False
        valid.append((number, custom_id, body))
    return valid, invalid


def _problem(entry: Any, endpoint: str, seen: set[str]) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
    if custom_id in seen:
        return f"custom_id '{custom_id}' appears twice"
    if entry.get("method") != "POST":
        return "method must be POST"
    if entry.get("url") != endpoint:
        return f"url must be the batch's endpoint {endpoint}"
    body = entry.get("body")
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if body.get("stream") is True:
        return "stream is not available in a batch"
    return None


def _output_line(job: Job) -> dict[str, Any]:
    return {
        "id": f"batch_req_{job.id}",
        "custom_id": job.custom_id,
        "response": {
            "status_code": job.http_status,
            "request_id": f"job-{job.id}-{job.attempts}",
            "body": job.result,
        },
        "error": None,
    }


def _error_line(job: Job) -> dict[str, Any]:
    response = None
    if job.http_status is not None:
        response = {
            "status_code": job.http_status,
            "request_id": f"job-{job.id}-{job.attempts}",
            "body": job.error,
        }
    code = "cancelled" if job.status == st.CANCELLED else "request_failed"
    return {
        "id": f"batch_req_{job.id}",
        "custom_id": job.custom_id,
        "response": response,
        "error": {"code": code, "message": job.reason or job.status},
    }


def _jsonl(entries: list[tuple[int, dict[str, Any]]]) -> bytes:
    return "".join(json.dumps(entry, separators=(",", ":")) + "\n" for _, entry in entries).encode()
