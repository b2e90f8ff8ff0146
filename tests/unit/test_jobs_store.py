"""The jobs table on a real SQLite file: claiming order and caps, recovery, pruning bounds."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from management_api.jobs import store as st
from management_api.jobs.batches import Batches
from management_api.jobs.manager import JobLimits, JobManager
from management_api.jobs.store import Job, JobStore


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "state" / "jobs.sqlite3")
    yield s
    s.close()


def add(store: JobStore, job_id: str, *, caller: str = "", priority: int = 0, at: float = 0):
    store.insert(Job(id=job_id, route="/api/embed", body={"input": job_id}, caller=caller,
                     priority=priority, callback_url=None, status=st.QUEUED, attempts=0,
                     created_at=at))  # fmt: skip


def test_the_file_is_in_wal_mode_and_a_new_connection_sees_commits(store):
    add(store, "a")
    other = sqlite3.connect(store.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT id, status FROM jobs").fetchall() == [("a", "queued")]


def test_claim_takes_priority_then_age_and_respects_the_callers_cap(store):
    add(store, "old", caller="k")
    add(store, "urgent", caller="k", priority=5)
    add(store, "third", caller="k")
    add(store, "other", caller="j")
    first = store.claim(2, "me", now=1)
    second = store.claim(2, "me", now=1)
    assert (first.id, second.id) == ("urgent", "old")
    assert first.status == st.RUNNING and first.attempts == 1
    assert store.claim(2, "me", now=1).id == "other"  # k has 2 running: j goes first
    assert store.claim(2, "me", now=1) is None
    store.finish("urgent", st.SUCCEEDED, http_status=200, result={"ok": 1}, now=2)
    assert store.claim(2, "me", now=2).id == "third"


def test_a_requeued_job_waits_until_not_before(store):
    add(store, "a")
    store.claim(1, "me", now=1)
    assert store.requeue("a", not_before=10, reason="429", now=1)
    assert store.claim(1, "me", now=5) is None
    again = store.claim(1, "me", now=10)
    assert again.id == "a" and again.attempts == 2
    assert [e["event"] for e in again.history] == ["started", "requeued", "started"]


def test_recover_requeues_orphans_fails_exhausted_ones_and_leaves_live_owners(store):
    for job_id in ("orphan", "exhausted", "live", "cancelled"):
        add(store, job_id)
    for job_id in ("orphan", "exhausted", "live", "cancelled"):
        store.claim(9, f"owner-{job_id}", now=1)
    store._db.execute("UPDATE jobs SET attempts = 3 WHERE id = 'exhausted'")
    store.cancel("cancelled", now=2)
    alive = {"owner-live"}
    assert store.recover(3, now=3, alive=lambda owner: owner in alive) == (1, 1)
    assert store.get("orphan").status == st.QUEUED
    exhausted = store.get("exhausted")
    assert exhausted.status == st.FAILED and exhausted.reason.startswith("interrupted 3 times")
    assert store.get("live").status == st.RUNNING
    assert store.get("cancelled").status == st.CANCELLED


def test_prune_drops_expired_then_oldest_beyond_count_and_bytes_never_unfinished(store):
    for i in range(6):
        add(store, f"j{i}")
        store.claim(9, "me", now=i)
        store.finish(f"j{i}", st.SUCCEEDED, http_status=200, result={"x": "y" * 100}, now=100 + i)
    add(store, "waiting")
    assert store.prune(ttl_seconds=1000, max_finished=10, max_bytes=10**6, now=200) == 0
    assert store.prune(ttl_seconds=1000, max_finished=4, max_bytes=10**6, now=200) == 2
    assert store.get("j0") is None and store.get("j1") is None and store.get("j2") is not None
    size = store.get("j2").result_bytes
    assert store.prune(ttl_seconds=1000, max_finished=10, max_bytes=2 * size, now=200) == 2
    assert [j.id for j in store.list(status=st.SUCCEEDED)] == ["j5", "j4"]
    assert store.prune(ttl_seconds=1000, max_finished=10, max_bytes=10**6, now=1104.5) == 1
    assert store.get("j4") is None and store.get("j5") is not None
    assert store.prune(ttl_seconds=0.001, max_finished=0, max_bytes=0, now=10**6) == 1
    assert store.get("waiting").status == st.QUEUED  # nothing accepted is dropped


def test_a_process_identity_tells_a_reused_pid_and_a_zombie_from_the_owner():
    me = st.process_identity()
    assert st._process_alive(me)
    pid = int(me.split(":")[0])
    assert not st._process_alive(f"{pid}:1")  # same pid, another start time
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = st.process_identity(child.pid)
    while st._start_ticks(child.pid) is not None:  # exited, not yet reaped: a zombie
        pass
    assert not st._process_alive(identity)
    child.wait()


def test_ended_batches_and_old_files_are_pruned_with_their_files_on_disk(tmp_path):
    manager = JobManager(tmp_path, JobLimits(workers=1, callback_senders=0))
    manager.start()
    try:
        batches = Batches(manager)
        batches.open()
        bad = batches.create_file(b"not json\n", filename="in.jsonl", purpose="batch", caller="")
        batch = batches.create(input_file_id=bad.id, endpoint="/v1/embeddings",
                               completion_window="24h", metadata=None, caller="")  # fmt: skip
        assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 1
        error_file = batches.get_file(batch["error_file_id"])
        assert b"line 1" in batches.file_content(error_file)
        assert batches.prune(ttl_seconds=3600, now=st.now()) == 0  # young: kept
        assert batches.prune(ttl_seconds=3600, now=st.now() + 7200) == 3  # batch + 2 files
        assert batches.get(batch["id"]) is None and batches.get_file(bad.id) is None
        assert list(batches.files_dir.iterdir()) == []
    finally:
        manager.stop()
