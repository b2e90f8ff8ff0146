"""Pull jobs against a scripted fake client (Effects seam): retries, joins, cancel, followers."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from management_api import names
from management_api.models import disk, pulls
from management_api.models.pulls import PullJob, PullManager, PullProgress
from management_api.ollama import (
    OllamaStatusError,
    OllamaStreamBroken,
    OllamaTimeout,
    OllamaUnreachable,
)

MODEL_LAYER = "sha256:" + "8bdf721a389f" + "0" * 52
LICENSE_LAYER = "sha256:" + "1fe2bd01e3a6" + "0" * 52
BLOCK = object()  # a script step: wait until the stream is aborted
Usage = namedtuple("Usage", "total used free")


def layer(digest: str, total: int, completed: int) -> dict:
    line = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
    if completed:
        line["completed"] = completed
    return line


def downloading(total: int = 1000, start: int = 0, stop: int = 1000, step: int = 250) -> list:
    return [layer(MODEL_LAYER, total, done) for done in range(start, stop + 1, step)]


def tail() -> list:
    return [
        layer(LICENSE_LAYER, 100, 100),
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]


def success() -> list:
    return [{"status": "pulling manifest"}, *downloading(), *tail()]


class ScriptedStream:
    """One upstream attempt: yields its dict steps, raises its exception steps, runs callables."""

    def __init__(self, steps: list, open_error: Exception | None = None) -> None:
        self.steps = steps
        self.open_error = open_error
        self.aborted = threading.Event()
        self.closed = False
        self.idle_timeouts: list[float] = []

    def open(self) -> None:
        if self.open_error is not None:
            raise self.open_error

    def set_idle_timeout(self, seconds: float) -> None:
        self.idle_timeouts.append(seconds)

    def __iter__(self):
        for step in self.steps:
            if step is BLOCK:
                self.aborted.wait(10)
                raise OllamaStreamBroken("the stream was cut")
            if isinstance(step, Exception):
                raise step
            if callable(step):
                step()
                continue
            yield step

    def abort(self) -> None:
        self.aborted.set()

    def close(self) -> None:
        self.closed = True


class ScriptedOllama:
    """Hands out one scripted stream per attempt (then plain successes) and records them."""

    def __init__(self, *scripts) -> None:
        self.scripts = list(scripts)
        self.streams: list[ScriptedStream] = []
        self.requests: list[tuple[str, float]] = []

    def pull_stream(self, model: str, *, idle_timeout: float) -> ScriptedStream:
        self.requests.append((model, idle_timeout))
        script = self.scripts.pop(0) if self.scripts else success()
        stream = script if isinstance(script, ScriptedStream) else ScriptedStream(script)
        self.streams.append(stream)
        return stream


class Invalidations:
    def __init__(self) -> None:
        self.count = 0

    def invalidate(self) -> None:
        self.count += 1


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def catalog() -> Invalidations:
    return Invalidations()


@pytest.fixture
def make_manager(catalog, tmp_path):
    managers: list[PullManager] = []

    def make(ollama: ScriptedOllama, **options) -> PullManager:
        settings = {
            "retries": 2,
            "stall_seconds": 5.0,
            "models_dir": tmp_path / "models",
            "min_free_bytes": 0,
            "backoff_seconds": 0.01,
            **options,
        }
        manager = PullManager(ollama, catalog, **settings)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.stop()


def finished(job: PullJob) -> PullJob:
    assert job.wait(10), f"job still {job.state}"
    return job


# --- aggregate progress


def test_progress_is_monotonic_over_layers_and_reaches_100_only_on_success():
    now = [0.0]
    progress = PullProgress(lambda: now[0])
    seen = []
    for line in [
        {"status": "pulling manifest"},
        *downloading(total=1000, step=500),
        layer(LICENSE_LAYER, 100, 0),  # a later layer grows the total
        layer(LICENSE_LAYER, 100, 100),
        {"status": "verifying sha256 digest"},
    ]:
        now[0] += 0.5
        progress.observe(line)
        seen.append(progress.percent(finished=False))
    assert seen == sorted(seen)
    assert max(seen) < 100
    assert (progress.completed_bytes, progress.total_bytes) == (1100, 1100)
    assert progress.percent(finished=True) == 100.0


def test_rate_and_eta_come_from_the_recent_window():
    now = [0.0]
    progress = PullProgress(lambda: now[0])
    for done in (0, 100, 200, 300):
        progress.observe(layer(MODEL_LAYER, 1000, done))
        now[0] += 1.0
    figures = progress.figures()
    assert figures["bytes_per_second"] == 100
    assert figures["eta_seconds"] == pytest.approx(7.0)
    now[0] += 60  # nothing for a minute: the rate is not pretending
    assert progress.figures()["bytes_per_second"] == 0
    assert progress.figures()["eta_seconds"] is None


# --- success, joining


def test_a_pull_streams_ollama_lines_with_aggregates_and_invalidates_the_catalog(
    make_manager, catalog
):
    ollama = ScriptedOllama()
    manager = make_manager(ollama)
    job, created = manager.submit("all-minilm")
    lines = list(job.follow(replay=True))
    assert created is True
    layer_lines = [line for line in lines if line.get("digest") == MODEL_LAYER]
    assert layer_lines and all(
        {"status", "digest", "total", "job_id", "attempt", "percent", "completed_bytes"} <= set(x)
        for x in layer_lines
    )
    percents = [line["percent"] for line in lines]
    assert percents == sorted(percents)
    assert lines[-1]["status"] == "success"
    assert lines[-1]["percent"] == 100.0
    assert sum(1 for line in lines if line["status"] == "success") == 1
    assert finished(job).state == "succeeded"
    assert catalog.count == 1
    assert ollama.requests == [("all-minilm", 5.0)]


def test_pulls_of_one_normalised_name_join_one_job(make_manager):
    ollama = ScriptedOllama([{"status": "pulling manifest"}, BLOCK])
    manager = make_manager(ollama)
    first, created_first = manager.submit("all-minilm")
    wait_until(lambda: len(ollama.streams) == 1)
    second, created_second = manager.submit("all-minilm:latest")
    third, created_third = manager.submit("library/ALL-MINILM")
    assert second is first and third is first
    assert (created_first, created_second, created_third) == (True, False, False)
    manager.cancel(first.id)
    assert len(ollama.requests) == 1
    fresh, created = manager.submit("all-minilm")  # a finished job is not joined
    assert created is True and fresh is not first


def test_an_invalid_name_is_refused(make_manager):
    manager = make_manager(ScriptedOllama())
    with pytest.raises(names.InvalidModelName):
        manager.submit("bad name!")


# --- retries


def test_transient_failures_are_retried_with_backoff_and_resume(make_manager):
    ollama = ScriptedOllama(
        [{"status": "pulling manifest"}, *downloading(stop=250), OllamaStreamBroken("cut")],
        [
            {"status": "pulling manifest"},
            *downloading(start=250, stop=500),
            OllamaStreamBroken("x"),
        ],
        [{"status": "pulling manifest"}, *downloading(start=500), *tail()],
    )
    manager = make_manager(ollama, backoff_seconds=0.01)
    job, _ = manager.submit("all-minilm")
    lines = list(job.follow(replay=True))
    assert finished(job).state == "succeeded"
    assert job.attempt == 3
    retries = [line for line in lines if "retry_in_seconds" in line]
    assert [r["retry_in_seconds"] for r in retries] == [0.01, 0.02]
    assert [f["attempt"] for f in job.failures] == [1, 2]
    assert "cut during the pull" in job.failures[0]["error"]
    completed = [line["completed_bytes"] for line in lines]
    assert completed == sorted(completed)


def test_a_pull_that_keeps_failing_fails_after_the_configured_retries(make_manager, catalog):
    failing = [{"status": "pulling manifest"}, {"error": "max retries exceeded: unexpected EOF"}]
    ollama = ScriptedOllama(failing, failing, failing, failing)
    manager = make_manager(ollama, retries=2)
    job, _ = manager.submit("all-minilm")
    final = list(job.follow(replay=True))[-1]
    assert finished(job).state == "failed"
    assert len(ollama.requests) == 3
    assert job.error_type == "retries_exhausted"
    assert "after 3 attempts" in job.error and "unexpected EOF" in job.error
    assert final["status"] == "error" and final["error"] == job.error
    assert len(job.failures) == 3
    assert catalog.count == 0


def test_an_unknown_model_fails_on_the_first_attempt(make_manager):
    ollama = ScriptedOllama(
        [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    )
    manager = make_manager(ollama)
    job, _ = manager.submit("no-such-model")
    assert finished(job).state == "failed"
    assert len(ollama.requests) == 1
    assert job.error == "pull model manifest: file does not exist"
    assert job.error_type == "model_not_found"


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (OllamaStatusError(400, "invalid model name"), True),
        (OllamaStatusError(500, "pull model manifest: file does not exist"), True),
        (OllamaStatusError(500, "model runner has unexpectedly stopped"), False),
        (OllamaStatusError(503, "server busy"), False),
        (OllamaStatusError(429, "too many requests"), False),
        (OllamaUnreachable("connection failed"), False),
        (OllamaTimeout("read timeout"), False),
    ],
)
def test_failures_before_the_stream_are_classified(make_manager, error, permanent):
    ollama = ScriptedOllama(ScriptedStream([], open_error=error))
    manager = make_manager(ollama, retries=1)
    job, _ = manager.submit("all-minilm")
    assert finished(job).state == ("failed" if permanent else "succeeded")
    assert len(ollama.requests) == (1 if permanent else 2)


def test_a_stream_that_ends_without_success_is_retried(make_manager):
    ollama = ScriptedOllama([{"status": "pulling manifest"}, *downloading(stop=500)])
    manager = make_manager(ollama)
    job, _ = manager.submit("all-minilm")
    assert finished(job).state == "succeeded"
    assert "ended before success" in job.failures[0]["error"]


def test_lines_without_progress_count_as_a_stall(make_manager):
    stuck = layer(MODEL_LAYER, 1000, 300)
    steps = [{"status": "pulling manifest"}, stuck]
    for _ in range(40):  # Ollama repeats the same figures every tick while a part is stuck
        steps += [lambda: time.sleep(0.01), stuck]
    ollama = ScriptedOllama(steps)
    manager = make_manager(ollama, stall_seconds=0.1)
    job, _ = manager.submit("all-minilm")
    assert finished(job).state == "succeeded"
    assert job.attempt == 2
    assert "stalled" in job.failures[0]["error"]


def test_an_idle_stream_counts_as_a_stall(make_manager):
    ollama = ScriptedOllama([{"status": "pulling manifest"}, OllamaTimeout("read timeout")])
    manager = make_manager(ollama, stall_seconds=7)
    job, _ = manager.submit("all-minilm")
    assert finished(job).state == "succeeded"
    assert job.failures[0]["error"] == "no progress for 7 s (stalled)"


def test_verification_gets_a_longer_idle_limit(make_manager):
    ollama = ScriptedOllama()
    manager = make_manager(ollama, stall_seconds=5)
    job, _ = manager.submit("all-minilm")
    finished(job)
    timeouts = ollama.streams[0].idle_timeouts
    assert timeouts[0] == 5
    assert timeouts[-1] == pulls.SLOW_PHASE_IDLE_SECONDS
    assert ollama.streams[0].closed


# --- cancel


def test_cancel_aborts_the_upstream_stream(make_manager, catalog):
    ollama = ScriptedOllama([{"status": "pulling manifest"}, *downloading(stop=250), BLOCK])
    manager = make_manager(ollama)
    job, _ = manager.submit("all-minilm")
    follower = job.follow()
    wait_until(lambda: job.snapshot()["completed_bytes"] == 250)
    assert manager.cancel(job.id) is job
    assert job.state == "cancelled"
    assert ollama.streams[0].aborted.is_set()
    assert ollama.streams[0].closed
    final = list(follower)[-1]
    assert final["status"] == "error" and final["type"] == "cancelled"
    assert catalog.count == 0
    assert manager.active_for("all-minilm") is None


def test_cancel_during_the_backoff_wait(make_manager):
    ollama = ScriptedOllama([OllamaStreamBroken("cut")])
    manager = make_manager(ollama, backoff_seconds=30)
    job, _ = manager.submit("all-minilm")
    wait_until(lambda: job.state == "retrying")
    manager.cancel(job.id, wait_seconds=5)
    assert job.state == "cancelled"
    assert len(ollama.requests) == 1


def test_a_queued_job_cancelled_never_reaches_ollama(make_manager):
    ollama = ScriptedOllama([BLOCK])
    manager = make_manager(ollama, max_running=1)
    first, _ = manager.submit("all-minilm")
    wait_until(lambda: len(ollama.streams) == 1)
    second, _ = manager.submit("phi3:mini")
    assert second.state == "queued"
    manager.cancel(second.id)
    assert second.state == "cancelled"
    manager.cancel(first.id)
    assert [model for model, _ in ollama.requests] == ["all-minilm"]


def test_queued_jobs_run_when_a_slot_frees(make_manager):
    ollama = ScriptedOllama([{"status": "pulling manifest"}, BLOCK])
    manager = make_manager(ollama, max_running=1)
    first, _ = manager.submit("all-minilm")
    wait_until(lambda: len(ollama.streams) == 1)
    second, _ = manager.submit("phi3:mini")
    assert manager.counts() == {"running": 1, "queued": 1}
    manager.cancel(first.id)
    assert finished(second).state == "succeeded"


def test_too_many_pulls_are_refused(make_manager):
    ollama = ScriptedOllama([BLOCK])
    manager = make_manager(ollama, max_running=1, max_queued=1)
    manager.submit("all-minilm")
    wait_until(lambda: manager.counts()["running"] == 1)
    manager.submit("phi3:mini")
    with pytest.raises(pulls.PullQueueFull):
        manager.submit("mistral:7b")


def test_stop_cancels_active_pulls_and_refuses_new_ones(make_manager):
    ollama = ScriptedOllama([BLOCK])
    manager = make_manager(ollama)
    job, _ = manager.submit("all-minilm")
    wait_until(lambda: len(ollama.streams) == 1)
    manager.stop()
    assert job.state == "cancelled"
    with pytest.raises(pulls.PullManagerClosed):
        manager.submit("phi3:mini")


# --- disk space


def test_too_little_free_disk_refuses_before_any_upstream_call(make_manager):
    ollama = ScriptedOllama()
    usage_seen: list[Path] = []

    def usage(path: Path) -> Usage:
        usage_seen.append(path)
        return Usage(total=10 * disk.GB, used=9 * disk.GB, free=1 * disk.GB)

    manager = make_manager(ollama, min_free_bytes=2 * disk.GB, disk_usage=usage)
    with pytest.raises(disk.InsufficientDiskSpace) as caught:
        manager.submit("all-minilm")
    assert caught.value.figures() == {
        "free_bytes": disk.GB,
        "needed_bytes": 2 * disk.GB,
        "free_gb": 1.0,
        "needed_gb": 2.0,
    }
    assert ollama.requests == []
    assert usage_seen and usage_seen[0].exists()  # the nearest existing parent of models_dir


def test_a_model_bigger_than_the_free_space_fails_once_its_size_is_known(make_manager):
    def usage(path: Path) -> Usage:
        return Usage(total=10 * disk.GB, used=7 * disk.GB, free=3 * disk.GB)

    big = [{"status": "pulling manifest"}, layer(MODEL_LAYER, 5 * disk.GB, 0), BLOCK]
    ollama = ScriptedOllama(big)
    manager = make_manager(ollama, min_free_bytes=disk.GB, disk_usage=usage)
    job, _ = manager.submit("all-minilm")
    assert finished(job).state == "failed"
    assert job.error_type == "insufficient_storage"
    assert len(ollama.requests) == 1


def test_a_zero_threshold_disables_the_check(make_manager):
    def usage(path: Path) -> Usage:
        raise AssertionError("the disk must not be measured")

    manager = make_manager(ScriptedOllama(), min_free_bytes=0, disk_usage=usage)
    job, _ = manager.submit("all-minilm")
    assert finished(job).state == "succeeded"


# --- followers


def make_job() -> PullJob:
    return PullJob(
        "j1",
        "all-minilm",
        "all-minilm:latest",
        max_attempts=1,
        clock=time.monotonic,
        wall_clock=time.time,
    )


def test_a_slow_follower_misses_intermediate_lines_but_gets_the_final_one():
    job = make_job()
    follower = job.follow()
    assert next(follower)["status"] == "queued"
    job.begin_attempt(1)
    for done in range(1000):  # the follower reads nothing meanwhile; the job never waits
        job.observe(layer(MODEL_LAYER, 1000, done + 1))
    job.finish(pulls.SUCCEEDED)
    rest = list(follower)
    assert len(rest) <= pulls.BUFFER_LINES + 1
    assert rest[0]["completed_bytes"] > 1  # the oldest lines were dropped for this follower
    assert rest[-1]["status"] == "success"
    assert job.subscribers == 0


def test_the_caller_who_started_a_job_replays_it_and_a_joiner_starts_from_now():
    job = make_job()
    job.begin_attempt(1)
    job.observe(layer(MODEL_LAYER, 1000, 100))
    job.observe(layer(MODEL_LAYER, 1000, 200))
    starter, joiner = job.follow(replay=True), job.follow()
    assert [next(starter)["completed"], next(starter)["completed"]] == [100, 200]
    now = next(joiner)
    assert (now["status"], now["completed_bytes"]) == (f"pulling {MODEL_LAYER[7:19]}", 200)
    job.finish(pulls.SUCCEEDED)
    assert [line["status"] for line in starter] == ["success"]
    assert [line["status"] for line in joiner] == ["success"]


def test_following_a_finished_job_gives_its_final_line_once():
    job = make_job()
    job.begin_attempt(1)
    job.finish(pulls.FAILED, pulls.PullFailure("boom", permanent=True))
    assert [line["status"] for line in job.follow()] == ["error"]


def test_a_follower_that_leaves_only_unsubscribes():
    job = make_job()
    gone = threading.Event()
    job.begin_attempt(1)
    first, second = job.follow(), job.follow(client_gone=gone.is_set, poll_seconds=0.01)
    next(first), next(second)
    assert job.subscribers == 2
    first.close()  # what the server does when a write to the client fails
    gone.set()
    assert list(second) == []
    assert job.subscribers == 0
    assert job.state == "running" and not job.cancel_requested


def test_an_idle_follower_gets_heartbeats():
    job = make_job()
    follower = job.follow(heartbeat_seconds=0.02, poll_seconds=0.01)
    assert next(follower)["status"] == "queued"
    assert next(follower)["status"] == "queued"  # repeated while nothing happens
    follower.close()


# --- bookkeeping


def test_finished_jobs_are_kept_in_a_bounded_history(make_manager):
    manager = make_manager(ScriptedOllama(), history=2)
    jobs = []
    for model in ("all-minilm", "phi3:mini", "mistral:7b", "gemma3:4b"):
        job, _ = manager.submit(model)
        jobs.append(finished(job))
    wait_until(lambda: len(manager.jobs()) == 2)
    assert [j.model for j in manager.jobs()] == ["gemma3:4b", "mistral:7b"]
    assert manager.get(jobs[0].id) is None


def test_a_snapshot_describes_the_outcome(make_manager):
    manager = make_manager(ScriptedOllama())
    job, _ = manager.submit("all-minilm")
    finished(job)
    snap = job.snapshot()
    assert snap["state"] == "succeeded" and snap["status"] == "success"
    assert snap["attempt"] == 1 and snap["max_attempts"] == 3
    assert snap["percent"] == 100.0
    assert snap["completed_bytes"] == snap["total_bytes"] == 1100
    assert [layer["digest"] for layer in snap["layers"]] == [MODEL_LAYER, LICENSE_LAYER]
    assert snap["duration_seconds"] >= 0
    assert all(snap[k].endswith("Z") for k in ("created_at", "started_at", "finished_at"))
    assert snap["error"] is None and snap["failures"] == []
