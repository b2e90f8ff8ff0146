"""Whole ``/v1/infer`` results in the response cache, under gunicorn against the emulator.

"Reached Ollama once" is counted in the emulator's own connection records. One service for the
module (cache on, its own tasks file); each test resets the emulator and empties the cache.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama
from tests.integration.conftest import BASE_LIMITS
from tests.service_harness import ServiceProcess

LLAMA, GEMMA, PHI = "llama3.2:1b", "gemma3:4b", "qwen3:14b-q8"
COPIED = "mistral:7b"  # in the emulator's registry, not installed at the start

TASKS = """
[defaults]
deadline_ms = 8000
max_deadline_ms = 20000
max_concurrent = 2

[tasks.cached]
strategy = "fallback"
models = ["gemma3:4b"]
template = "p.md"
options = { temperature = 0, num_predict = 64 }
cache_ttl_seconds = 600

[tasks.warm]
strategy = "fallback"
models = ["gemma3:4b"]
template = "p.md"
options = { temperature = 0.3 }

[tasks.off]
strategy = "fallback"
models = ["gemma3:4b"]
template = "p.md"
options = { temperature = 0 }

[tasks.short]
strategy = "fallback"
models = ["gemma3:4b"]
template = "p.md"
options = { temperature = 0 }
cache_ttl_seconds = 1

[tasks.cons]
strategy = "consensus"
models = ["llama3.2:1b", "gemma3:4b", "qwen3:14b-q8"]
template = "p.md"
options = { temperature = 0 }
output = "json"
vote_field = "label"
quorum = 1.0
cache_ttl_seconds = 600

[tasks.chain]
strategy = "fallback"
models = ["qwen3:14b-q8", "gemma3:4b"]
template = "p.md"
options = { temperature = 0 }
cache_ttl_seconds = 600

[tasks.typed]
strategy = "fallback"
models = ["qwen3:14b-q8", "gemma3:4b"]
template = "p.md"
options = { temperature = 0 }
output = "json"
schema = "label.json"
cache_ttl_seconds = 600

[tasks.slow]
strategy = "fallback"
models = ["llama3.2:1b"]
template = "p.md"
options = { temperature = 0 }

[tasks.copied]
strategy = "fallback"
models = ["mistral:7b"]
template = "p.md"
options = { temperature = 0 }
cache_ttl_seconds = 600
"""
PROMPT = "Answer about {{input}}.\n"
LABEL_SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}},
                "required": ["label"]}  # fmt: skip


APP_KEY = "task-app-key-0123456789"
OTHER_KEY = "task-other-key-012345678"


@pytest.fixture(scope="module")
def cache_service(emulator: FakeOllama, tmp_path_factory) -> Iterator[tuple[ServiceProcess, Path]]:
    folder = tmp_path_factory.mktemp("task-cache")
    (folder / "limits.toml").write_text(BASE_LIMITS)
    (folder / "tasks.toml").write_text(TASKS)
    (folder / "p.md").write_text(PROMPT)
    (folder / "label.json").write_text(json.dumps(LABEL_SCHEMA))
    (folder / "ollama.log").write_text("")
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(folder / "limits.toml"),
        "LLM_TASKS_FILE": str(folder / "tasks.toml"),
        "LLM_OLLAMA_LOG_FILE": str(folder / "ollama.log"),
        "LLM_CACHE_MAX_MB": "16",
        "LLM_CACHE_TTL_SECONDS": "600",
        "LLM_MODEL_CACHE_TTL": "30",
        "LLM_WORKER_THREADS": "256",
        # Auth stays off; a caller that sends a key is still known by it (per-key entries).
        "LLM_API_KEYS": f"app:{APP_KEY}:user,other:{OTHER_KEY}:user",
    }
    with ServiceProcess(env=env) as process:
        yield process, folder
        process.assert_alive()


class Svc:
    def __init__(self, process: ServiceProcess, folder: Path, emulator: FakeOllama) -> None:
        self.url = process.management_url
        self.proxy = process.proxy_url
        self.folder = folder
        self.emulator = emulator

    def infer(self, task: str, text: str = "x", *, headers=None, **body) -> requests.Response:
        return requests.post(self.url + "/v1/infer", json={"task": task, "input": text, **body},
                             headers=headers or {}, timeout=30)  # fmt: skip

    def calls(self, model: str) -> int:
        return sum(
            1 for c in self.emulator.connections(path="/api/generate") if c["model"] == model
        )

    def cache(self) -> dict:
        return requests.get(self.url + "/api/cache", timeout=5).json()

    def running(self) -> int:
        return requests.get(self.url + "/v1/tasks", timeout=5).json()["running"]


@pytest.fixture
def svc(cache_service, emulator: FakeOllama) -> Svc:
    process, folder = cache_service
    emulator.reset()
    (folder / "tasks.toml").write_text(TASKS)
    assert requests.post(process.management_url + "/api/tasks/reload", timeout=5).ok
    assert requests.delete(process.management_url + "/api/cache", timeout=5).ok
    return Svc(process, folder, emulator)


def without(body: dict, *fields: str) -> dict:
    return {k: v for k, v in body.items() if k not in fields}


def test_a_temperature_zero_task_reaches_ollama_once(svc):
    first = svc.infer("cached", "the sea")
    second = svc.infer("cached", "the sea")
    assert first.status_code == second.status_code == 200, second.text
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert svc.calls(GEMMA) == 1
    one, two = first.json(), second.json()
    assert one["request_id"] != two["request_id"] == second.headers["X-Request-ID"]
    assert without(one, "request_id") == without(two, "request_id")  # timings: the original's
    assert one["content"] and one["model"] == GEMMA
    # Another input, strategy or model list is another entry; deadline_ms is not in the key.
    assert svc.infer("cached", "the sea", deadline_ms=5000).headers["X-Cache"] == "HIT"
    assert svc.infer("cached", "the land").headers["X-Cache"] == "MISS"
    assert svc.infer("cached", "the sea", strategy="fastest").headers["X-Cache"] == "MISS"
    assert svc.infer("cached", "the sea", models=[LLAMA]).headers["X-Cache"] == "MISS"
    assert svc.calls(GEMMA) == 3 and svc.calls(LLAMA) == 1

    status = svc.cache()
    (row,) = [r for r in status["routes"] if r["route"] == "/v1/infer"]
    assert row["model"] == "cached" and row["entries"] == 4
    assert row["requests"]["hit"] == 2 and row["requests"]["miss"] == 4
    metrics = requests.get(svc.url + "/metrics", timeout=5).text
    assert 'llm_service_cache_requests_total{result="hit",route="/v1/infer"}' in metrics

    # A changed task definition (here its template) is another entry too.
    (svc.folder / "p.md").write_text("Say something about {{input}}.\n")
    try:
        assert requests.post(svc.url + "/api/tasks/reload", timeout=5).ok
        assert svc.infer("cached", "the sea").headers["X-Cache"] == "MISS"
    finally:
        (svc.folder / "p.md").write_text(PROMPT)


def test_a_hit_takes_no_task_place_and_no_slot(svc):
    svc.emulator.script(LLAMA, content="held", ttft_seconds=1.5)
    assert svc.infer("cached", "stored").headers["X-Cache"] == "MISS"
    holders = [threading.Thread(target=svc.infer, args=("slow",)) for _ in range(2)]
    for holder in holders:
        holder.start()
    try:
        deadline = time.monotonic() + 5
        while svc.running() < 2:  # max_concurrent = 2: both places taken
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert svc.infer("cached", "not stored").status_code == 429
        hit = svc.infer("cached", "stored")
        assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
    finally:
        for holder in holders:
            holder.join(15)
    assert svc.calls(GEMMA) == 1


def test_identical_running_requests_share_one_run(svc):
    # max_concurrent = 2: eight requests that each took a place would mostly get 429.
    svc.emulator.script(GEMMA, content="shared answer", ttft_seconds=1.0)
    start = threading.Barrier(8)

    def ask(_: int) -> requests.Response:
        start.wait(10)
        return svc.infer("cached", "together")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    results = sorted(a.headers["X-Cache"] for a in answers)
    assert results.count("MISS") == 1 and set(results) <= {"MISS", "COALESCED", "HIT"}
    assert "COALESCED" in results
    assert svc.calls(GEMMA) == 1
    bodies = [a.json() for a in answers]
    assert len({b["request_id"] for b in bodies}) == 8
    assert {b["content"] for b in bodies} == {"shared answer"}


def test_tasks_without_temperature_zero_or_ttl_are_never_cached(svc):
    answers = [svc.infer(task, "same") for task in ("warm", "warm", "off", "off")]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.headers["X-Cache"] for a in answers] == ["BYPASS"] * 4
    # A stream is not cached either (its events are not stored).
    streamed = requests.post(svc.url + "/v1/infer", json={"task": "cached", "input": "s",
                             "stream": True}, timeout=30)  # fmt: skip
    assert streamed.status_code == 200 and '"done": true' in streamed.text
    assert streamed.headers["X-Cache"] == "BYPASS"
    assert svc.calls(GEMMA) == 5 and svc.cache()["entries"] == 0


def test_failed_or_failure_shaped_results_are_not_stored(svc):
    for model, label in ((LLAMA, "a"), (GEMMA, "b"), (PHI, "c")):
        svc.emulator.script(model, json={"label": label})
    refused = [svc.infer("cons", "pick") for _ in range(2)]
    assert [r.status_code for r in refused] == [422, 422]
    assert refused[0].json()["type"] == "no_consensus"
    assert [r.headers["X-Cache"] for r in refused] == ["MISS", "MISS"]
    assert svc.calls(GEMMA) == 2

    # A 200 that a failing model shaped (fallback past an error) is answered, not stored.
    assert requests.delete(svc.emulator.url + "/_fake/scripts", timeout=5).ok
    svc.emulator.script(PHI, status=500, message="runner crashed")
    chained = [svc.infer("chain", "recover") for _ in range(2)]
    assert [r.status_code for r in chained] == [200, 200]
    assert {c["model"]: c["status"] for c in chained[0].json()["candidates"]}[PHI] == "error"
    assert [r.headers["X-Cache"] for r in chained] == ["MISS", "MISS"]

    # An answer that failed the task's schema counts as such a failure.
    assert requests.delete(svc.emulator.url + "/_fake/scripts", timeout=5).ok
    svc.emulator.script(PHI, json={"labels": ["x"]})
    svc.emulator.script(GEMMA, json={"label": "ok"})
    typed = [svc.infer("typed", "classify") for _ in range(2)]
    assert [r.status_code for r in typed] == [200, 200]
    assert typed[0].json()["parsed"] == {"label": "ok"}
    phi = next(c for c in typed[0].json()["candidates"] if c["model"] == PHI)
    assert phi["status"] == "error" and phi["error"].startswith("schema:")
    assert [r.headers["X-Cache"] for r in typed] == ["MISS", "MISS"]
    assert svc.cache()["entries"] == 0


def test_no_store_and_no_cache(svc):
    assert (
        svc.infer("cached", "cc", headers={"Cache-Control": "no-store"}).headers["X-Cache"]
        == "BYPASS"
    )
    assert svc.cache()["entries"] == 0
    assert svc.infer("cached", "cc").headers["X-Cache"] == "MISS"
    assert (
        svc.infer("cached", "cc", headers={"Cache-Control": "no-store"}).headers["X-Cache"]
        == "BYPASS"
    )
    refreshed = svc.infer("cached", "cc", headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["X-Cache"] == "BYPASS"
    assert svc.calls(GEMMA) == 4
    hit = svc.infer("cached", "cc")  # the entry no-cache refreshed
    assert hit.headers["X-Cache"] == "HIT"
    assert without(hit.json(), "request_id") == without(refreshed.json(), "request_id")
    assert svc.calls(GEMMA) == 4


def _digest(emulator: FakeOllama, model: str) -> str | None:
    models = requests.get(emulator.url + "/api/tags", timeout=5).json()["models"]
    return next((m["digest"] for m in models if m["name"] == model), None)


def test_a_changed_model_digest_misses(svc, emulator):
    copied = requests.post(svc.proxy + "/api/copy",
                           json={"source": GEMMA, "destination": COPIED}, timeout=10)  # fmt: skip
    assert copied.status_code == 200
    time.sleep(0.3)  # the model list is invalidated when the copy's response closes
    assert svc.infer("copied", "d").headers["X-Cache"] == "MISS"
    assert svc.infer("copied", "d").headers["X-Cache"] == "HIT"
    before = _digest(emulator, COPIED)
    pulled = requests.post(svc.proxy + "/api/pull", json={"model": COPIED, "stream": False},
                           timeout=30)  # fmt: skip
    assert pulled.status_code == 200, pulled.text
    assert _digest(emulator, COPIED) not in (before, None)
    time.sleep(0.3)
    assert svc.infer("copied", "d").headers["X-Cache"] == "MISS"
    assert svc.calls(COPIED) == 2
    # Deleted: no digest, so nothing is looked up (and the task fails on its own).
    deleted = requests.delete(svc.proxy + "/api/delete", json={"model": COPIED}, timeout=10)
    assert deleted.status_code == 200
    time.sleep(0.3)
    gone = svc.infer("copied", "d")
    assert gone.status_code != 200 and gone.headers["X-Cache"] == "BYPASS"


def test_the_task_ttl_expires_its_entries(svc):
    assert svc.infer("short", "t").headers["X-Cache"] == "MISS"
    assert svc.infer("short", "t").headers["X-Cache"] == "HIT"
    assert svc.cache()["ttl_seconds"] == 600  # the global TTL; the task's own is 1 s
    time.sleep(1.2)
    assert svc.infer("short", "t").headers["X-Cache"] == "MISS"
    assert svc.calls(GEMMA) == 2


def test_the_access_log_says_what_the_cache_did(svc, cache_service):
    process, _ = cache_service
    svc.infer("cached", "logged")
    svc.infer("cached", "logged")
    deadline = time.monotonic() + 5
    while True:
        lines = [
            json.loads(line[line.index("{") :])
            for line in process.output().splitlines()
            if "llm_service.access" in line and re.search(r'"path":"/v1/infer"', line)
        ]
        if [entry.get("cache") for entry in lines[-2:]] == ["MISS", "HIT"]:
            break
        assert time.monotonic() < deadline, lines[-2:]
        time.sleep(0.05)


def test_results_are_per_api_key(svc):
    """Issue 28, finding 7: a HIT never tells one key what another key asked."""

    def as_key(key: str) -> str:
        headers = {"Authorization": f"Bearer {key}"}
        return svc.infer("cached", "private question", headers=headers).headers["X-Cache"]

    assert (as_key(APP_KEY), as_key(APP_KEY)) == ("MISS", "HIT")
    assert as_key(OTHER_KEY) == "MISS"
    assert svc.infer("cached", "private question").headers["X-Cache"] == "MISS"  # no key
