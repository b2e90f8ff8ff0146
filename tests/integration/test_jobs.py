"""Durable jobs over real sockets: gunicorn + the Ollama emulator, SQLite in a temp state dir.

Each job attempt reaches the emulator with the request id ``job-<id>-<attempt>``, so what
Ollama saw of a job (how often, and how each request ended) is read from its connection log.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import BASE_LIMITS
from tests.service_harness import ServiceProcess

SLOW = "gemma3:4b"  # max_concurrency 4 in BASE_LIMITS: the jobs' own cap is what limits it
FAST = "llama3.2:1b"
ADMIN_KEY = "ops-secret-key-000001"
USER_KEY = "n8n-secret-key-000001"
TASKS = """
[defaults]
deadline_ms = 8000
max_deadline_ms = 20000
max_concurrent = 8

[tasks.fb]
strategy = "fallback"
models = ["llama3.2:1b", "gemma3:4b"]
template = "p.md"
"""
CHAT = [{"role": "user", "content": "hello"}]
ROUTES = {
    "/api/generate": ({"model": FAST, "prompt": "hi"}, lambda r: r["done"] and r["response"]),
    "/api/chat": ({"model": FAST, "messages": CHAT}, lambda r: r["message"]["content"]),
    "/api/embed": ({"model": FAST, "input": ["a", "b"]}, lambda r: len(r["embeddings"]) == 2),
    "/v1/chat/completions": (
        {"model": FAST, "messages": CHAT},
        lambda r: r["object"] == "chat.completion" and r["choices"][0]["message"]["content"],
    ),
    "/v1/embeddings": ({"model": FAST, "input": "a"}, lambda r: r["data"][0]["embedding"]),
    "/v1/infer": ({"task": "fb", "input": "x"}, lambda r: r["task"] == "fb" and r["content"]),
}


def _env(folder: Path, emulator, **extra: str) -> dict[str, str]:
    return {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(folder / "limits.toml"),
        "LLM_TASKS_FILE": str(folder / "tasks.toml"),
        "LLM_OLLAMA_LOG_FILE": str(folder / "ollama.log"),
        "LLM_STATE_DIR": str(folder / "state"),
        "LLM_UPSTREAM_GRACE_SECONDS": "0.5",
        "LLM_MODEL_CACHE_TTL": "1",
        "LLM_AUTH_MODE": "management",
        "LLM_API_KEYS": f"ops:{ADMIN_KEY}:admin,n8n:{USER_KEY}:user",
        **extra,
    }


def _folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jobs")
    (folder / "limits.toml").write_text(BASE_LIMITS)
    (folder / "tasks.toml").write_text(TASKS)
    (folder / "p.md").write_text("Answer about {{input}}.\n")
    (folder / "ollama.log").write_text("")
    return folder


@pytest.fixture(scope="module")
def jobs_service(emulator, tmp_path_factory) -> Iterator[ServiceProcess]:
    folder = _folder(tmp_path_factory)
    with ServiceProcess(env=_env(folder, emulator, LLM_JOBS_MAX_CONCURRENT="2")) as process:
        yield process


@pytest.fixture
def svc(jobs_service, emulator) -> Iterator[ServiceProcess]:
    emulator.reset()
    yield jobs_service
    jobs_service.assert_alive()


def submit(url: str, route: str, body: dict, key: str | None = None, **extra) -> dict:
    headers = {"X-API-Key": key} if key else {}
    response = requests.post(
        url + "/api/jobs", json={"route": route, "body": body, **extra}, headers=headers, timeout=5
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"id", "status", "status_url"} and accepted["status"] == "queued"
    assert response.headers["Location"] == accepted["status_url"]
    return accepted


def job(url: str, job_id: str, key: str | None = None) -> dict:
    headers = {"X-API-Key": key} if key else {}
    response = requests.get(f"{url}/api/jobs/{job_id}", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(url: str, job_id: str, statuses: tuple[str, ...], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = job(url, job_id)
        if current["status"] in statuses:
            return current
        assert time.monotonic() < deadline, current
        time.sleep(0.03)


def at_ollama(emulator, job_id: str) -> list[dict]:
    """The emulator's records of this job's requests, oldest first."""
    return [
        c
        for c in emulator.observations()["connections"]
        if (c["request_id"] or "").startswith(f"job-{job_id}-")
    ]


def slow(emulator, model: str = SLOW, seconds: float = 3.0) -> None:
    emulator.set_model(model, tokens=30, tokens_per_second=30 / seconds, ttft_seconds=0)


# --- lifecycle


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_job_runs_once_and_keeps_the_routes_answer(svc, emulator, route):
    body, looks_right = ROUTES[route]
    accepted = submit(svc.management_url, route, body)
    done = wait_status(svc.management_url, accepted["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    assert done["http_status"] == 200 and done["error"] is None
    assert looks_right(done["result"]), done["result"]
    assert done["attempts"] == 1 and done["route"] == route and done["caller"] is None
    timings = done["timings"]
    assert 0 <= timings["queued_ms"] <= timings["total_ms"] and timings["run_ms"] > 0
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    seen = at_ollama(emulator, accepted["id"])
    if route == "/v1/infer":
        assert done["result"]["request_id"] == f"job-{accepted['id']}-1"
        assert [c["outcome"] for c in seen][:1] == ["completed"]  # fallback: the first answered
    else:
        assert [(c["path"], c["outcome"]) for c in seen] == [(route, "completed")]


def test_a_failed_job_keeps_the_routes_own_error(svc, emulator):
    native = submit(svc.management_url, "/api/generate", {"model": "nope:1b", "prompt": "x"})
    openai = submit(svc.management_url, "/v1/chat/completions", {"model": "nope:1b",
                                                                  "messages": CHAT})  # fmt: skip
    failed = wait_status(svc.management_url, native["id"], ("succeeded", "failed"))
    assert failed["status"] == "failed" and failed["http_status"] == 404
    assert "not found" in failed["error"]["error"] and failed["result"] is None
    assert failed["reason"] == failed["error"]["error"]
    envelope = wait_status(svc.management_url, openai["id"], ("succeeded", "failed"))
    assert envelope["status"] == "failed" and envelope["http_status"] == 404
    assert "not found" in envelope["error"]["error"]["message"]  # the OpenAI envelope
    assert envelope["attempts"] == 1  # a 404 is not retried


def test_bad_submissions_are_refused_with_the_field(svc):
    url = svc.management_url + "/api/jobs"
    cases = [
        ({"route": "/api/pull", "body": {}}, "route"),
        ({"route": "/api/generate", "body": "x"}, "body"),
        ({"route": "/api/generate", "body": {"model": FAST, "stream": True}}, "body"),
        ({"route": "/api/generate", "body": {}, "priority": 11}, "priority"),
        ({"route": "/api/generate", "body": {}, "priority": "high"}, "priority"),
    ]
    for payload, field in cases:
        response = requests.post(url, json=payload, timeout=5)
        assert response.status_code == 400, (payload, response.text)
        assert response.json()["field"] == field
    assert requests.get(svc.management_url + "/api/jobs/job_nope", timeout=5).status_code == 404


# --- cancel


def test_cancel_a_running_job_closes_its_ollama_request(svc, emulator):
    slow(emulator, seconds=6)
    accepted = submit(svc.management_url, "/api/generate", {"model": SLOW, "prompt": "long"})
    wait_status(svc.management_url, accepted["id"], ("running",))
    emulator.wait_for(lambda: at_ollama(emulator, accepted["id"]), timeout=5)
    started = time.monotonic()
    response = requests.delete(f"{svc.management_url}/api/jobs/{accepted['id']}", timeout=10)
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["reason"] == "cancelled while it ran"
    assert time.monotonic() - started < 3  # not after the 6 s generation
    emulator.wait_for(
        lambda: [c["outcome"] for c in at_ollama(emulator, accepted["id"])] == ["client_closed"],
        timeout=5,
    )
    again = requests.delete(f"{svc.management_url}/api/jobs/{accepted['id']}", timeout=5)
    assert again.status_code == 409 and again.json()["type"] == "job_finished"
    in_flight = lambda: requests.get(svc.management_url + "/api/limits", timeout=5).json()  # noqa: E731
    deadline = time.monotonic() + 5
    while in_flight()["totals"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight()["totals"]["in_flight"] == 0  # the slot went back


def test_cancel_a_queued_job_never_reaches_ollama(svc, emulator):
    slow(emulator, seconds=3)
    key = {"X-API-Key": USER_KEY}
    running = [submit(svc.management_url, "/api/generate", {"model": SLOW, "prompt": f"r{i}"},
                      key=USER_KEY) for i in range(2)]  # fmt: skip
    queued = submit(svc.management_url, "/api/generate", {"model": SLOW, "prompt": "q"},
                    key=USER_KEY)  # fmt: skip
    for accepted in running:
        wait_status(svc.management_url, accepted["id"], ("running",))
    assert job(svc.management_url, queued["id"], USER_KEY)["status"] == "queued"  # cap of 2
    response = requests.delete(f"{svc.management_url}/api/jobs/{queued['id']}", headers=key,
                               timeout=5)  # fmt: skip
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["reason"] == "cancelled before it ran"
    for accepted in running:
        assert wait_status(svc.management_url, accepted["id"], ("succeeded",))["attempts"] == 1
    time.sleep(0.3)
    assert at_ollama(emulator, queued["id"]) == []


# --- callers, the per-caller cap, listing


def test_each_caller_runs_at_most_max_concurrent_jobs(svc, emulator):
    slow(emulator, seconds=1.0)
    mine = [submit(svc.management_url, "/api/generate", {"model": SLOW, "prompt": f"u{i}"},
                   key=USER_KEY)["id"] for i in range(5)]  # fmt: skip
    others = [submit(svc.management_url, "/api/generate", {"model": SLOW, "prompt": f"a{i}"})["id"]
              for i in range(2)]  # fmt: skip
    for job_id in mine + others:
        assert wait_status(svc.management_url, job_id, ("succeeded",), timeout=30)
    spans = {}
    for job_id in mine:
        (record,) = at_ollama(emulator, job_id)
        spans[job_id] = (record["opened_at"], record["closed_at"])
    # At no moment did the user key have more than 2 requests at Ollama.
    for opened, _ in spans.values():
        overlapping = sum(1 for o, c in spans.values() if o <= opened < c)
        assert overlapping <= 2, spans
    # The anonymous caller is another caller: its jobs did not wait behind the key's.
    first_other = min(at_ollama(emulator, j)[0]["opened_at"] for j in others)
    last_mine = max(o for o, _ in spans.values())
    assert first_other < last_mine


def test_list_filters_by_status_and_caller_and_users_see_their_own(svc, emulator):
    mine = submit(svc.management_url, "/api/embed", {"model": FAST, "input": "a"}, key=USER_KEY)
    anon = submit(svc.management_url, "/api/embed", {"model": FAST, "input": "b"})
    for accepted in (mine, anon):
        wait_status(svc.management_url, accepted["id"], ("succeeded",))
    url = svc.management_url + "/api/jobs"
    admin = requests.get(url, params={"caller": "n8n", "status": "succeeded"},
                         headers={"X-API-Key": ADMIN_KEY}, timeout=5).json()  # fmt: skip
    ids = [j["id"] for j in admin["data"]]
    assert mine["id"] in ids and anon["id"] not in ids
    assert all(j["caller"] == "n8n" and j["status"] == "succeeded" for j in admin["data"])
    assert admin["counts"]["succeeded"] >= 2
    user = requests.get(url, headers={"X-API-Key": USER_KEY}, timeout=5).json()
    assert {j["caller"] for j in user["data"]} == {"n8n"}
    foreign = requests.get(f"{url}/{anon['id']}", headers={"X-API-Key": USER_KEY}, timeout=5)
    assert foreign.status_code == 404
    assert requests.get(url, params={"status": "done"}, timeout=5).status_code == 400


# --- restarts


def _worker_pid(process: ServiceProcess) -> int:
    assert process.process is not None
    master = process.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _wait_new_worker(process: ServiceProcess, old: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if (
                _worker_pid(process) != old
                and requests.get(process.management_url + "/health/live", timeout=1).ok
            ):
                return
        except (AssertionError, requests.RequestException):
            pass
        time.sleep(0.05)
    raise AssertionError("gunicorn did not start a new worker:\n" + process.output()[-2000:])


def test_a_killed_worker_resumes_its_jobs_after_the_restart(emulator, tmp_path_factory):
    emulator.reset()
    folder = _folder(tmp_path_factory)
    env = _env(folder, emulator, LLM_JOBS_MAX_CONCURRENT="1")
    with ServiceProcess(env=env) as process:
        url = process.management_url
        slow(emulator, seconds=2.0)
        first = submit(url, "/api/generate", {"model": SLOW, "prompt": "interrupted"})
        second = submit(url, "/api/generate", {"model": SLOW, "prompt": "waiting"})
        wait_status(url, first["id"], ("running",))
        emulator.wait_for(lambda: at_ollama(emulator, first["id"]), timeout=5)
        old = _worker_pid(process)
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        _wait_new_worker(process, old)
        resumed_at = time.monotonic()
        done_first = wait_status(url, first["id"], ("succeeded", "failed"), timeout=30)
        done_second = wait_status(url, second["id"], ("succeeded", "failed"), timeout=30)
        finished_at = time.monotonic()
        assert done_first["status"] == "succeeded" and done_first["attempts"] == 2
        events = [(e["attempt"], e["event"]) for e in done_first["history"]]
        assert events == [(1, "started"), (1, "requeued"), (2, "started"), (2, "succeeded")]
        assert done_first["history"][1]["reason"] == "interrupted by a restart"
        assert done_second["status"] == "succeeded" and done_second["attempts"] == 1
        # At Ollama: the interrupted attempt was dropped with the worker, the retry completed
        # once; the job that was still queued ran exactly once.
        first_seen = [(c["request_id"], c["outcome"]) for c in at_ollama(emulator, first["id"])]
        assert first_seen == [
            (f"job-{first['id']}-1", "client_closed"),
            (f"job-{first['id']}-2", "completed"),
        ]
        assert [c["outcome"] for c in at_ollama(emulator, second["id"])] == ["completed"]
        print(f"\nrestart-resume: new worker answering {resumed_at - killed_at:.2f} s after the "
              f"kill; both jobs done {finished_at - killed_at:.2f} s after it "
              "(2 s generations, one at a time)")  # fmt: skip


def test_a_job_interrupted_max_attempts_times_fails_with_the_reason(emulator, tmp_path_factory):
    emulator.reset()
    folder = _folder(tmp_path_factory)
    env = _env(folder, emulator, LLM_JOBS_MAX_ATTEMPTS="1")
    with ServiceProcess(env=env) as process:
        url = process.management_url
        slow(emulator, seconds=5.0)
        accepted = submit(url, "/api/generate", {"model": SLOW, "prompt": "doomed"})
        wait_status(url, accepted["id"], ("running",))
        emulator.wait_for(lambda: at_ollama(emulator, accepted["id"]), timeout=5)
        old = _worker_pid(process)
        os.kill(old, signal.SIGKILL)
        _wait_new_worker(process, old)
        failed = wait_status(url, accepted["id"], ("failed", "succeeded"), timeout=10)
        assert failed["status"] == "failed" and failed["attempts"] == 1
        assert failed["reason"].startswith("interrupted 1 times")
        assert len(at_ollama(emulator, accepted["id"])) == 1  # not run again


def test_jobs_survive_a_whole_service_restart(emulator, tmp_path_factory):
    """The container case: master and worker gone (SIGKILL), a new service on the same state."""
    emulator.reset()
    folder = _folder(tmp_path_factory)
    env = _env(folder, emulator, LLM_JOBS_MAX_CONCURRENT="1")
    slow(emulator, seconds=2.0)
    with ServiceProcess(env=env) as process:
        accepted = [submit(process.management_url, "/api/embed" if i % 2 else "/api/generate",
                           {"model": SLOW, "prompt": f"p{i}", "input": f"p{i}"})
                    for i in range(4)]  # fmt: skip
        wait_status(process.management_url, accepted[0]["id"], ("running",))
        worker = _worker_pid(process)
        assert process.process is not None
        os.kill(worker, signal.SIGKILL)
        process.process.kill()
        process.process.wait(5)
    with ServiceProcess(env=env) as again:
        for entry in accepted:
            done = wait_status(again.management_url, entry["id"], ("succeeded", "failed"), 40)
            assert done["status"] == "succeeded", done
        completed = [
            c for e in accepted for c in at_ollama(emulator, e["id"]) if c["outcome"] == "completed"
        ]
        assert len(completed) == 4  # each job's answer came from Ollama exactly once


# --- bounds


def test_the_queue_bound_answers_429_with_retry_after(emulator, tmp_path_factory):
    emulator.reset()
    folder = _folder(tmp_path_factory)
    env = _env(folder, emulator, LLM_JOBS_MAX_QUEUED="2", LLM_JOBS_MAX_CONCURRENT="1")
    slow(emulator, seconds=2.0)
    with ServiceProcess(env=env) as process:
        url = process.management_url
        for i in range(2):
            submit(url, "/api/generate", {"model": SLOW, "prompt": f"p{i}"})
        refused = requests.post(url + "/api/jobs", json={"route": "/api/generate",
                                "body": {"model": SLOW}}, timeout=5)  # fmt: skip
        assert refused.status_code == 429
        assert refused.json()["type"] == "jobs_full" and refused.json()["limit"] == 2
        assert refused.json()["retry_after_seconds"] == int(refused.headers["Retry-After"])
