"""POST /v1/infer against the emulator with scripted answers: every strategy's rule, deadlines,
cancellation (the emulator sees the branch's connection close), breakers, reload, streaming.

One service for the module, with its own tasks file; each test resets the emulator and the
tasks file. Models and their limits (conftest BASE_LIMITS): llama3.2:1b 1, gemma3:4b 4,
qwen3:14b-q8 2 (PHI below: the third model).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import BASE_LIMITS
from tests.service_harness import ServiceProcess

LLAMA, GEMMA, PHI = "llama3.2:1b", "gemma3:4b", "qwen3:14b-q8"

TASKS = """
[defaults]
deadline_ms = 8000
max_deadline_ms = 20000
max_concurrent = 48

[breaker]
window = 4
min_calls = 2
failure_rate = 0.5
open_seconds = 1

[tasks.fb]
strategy = "fallback"
models = ["qwen3:14b-q8", "gemma3:4b"]
template = "p.md"

[tasks.fast]
strategy = "fastest"
models = ["llama3.2:1b", "gemma3:4b"]
template = "p.md"
hedge_after_ms = 300

[tasks.vote]
strategy = "voting"
models = ["llama3.2:1b", "gemma3:4b", "qwen3:14b-q8"]
template = "p.md"
output = "json"
schema = "label.json"
vote_field = "label"

[tasks.vote_text]
strategy = "voting"
models = ["llama3.2:1b", "gemma3:4b", "qwen3:14b-q8"]
template = "p.md"

[tasks.weigh]
strategy = "weighted"
models = ["gemma3:4b", "llama3.2:1b", "qwen3:14b-q8"]
template = "p.md"
output = "json"
vote_field = "label"
weights = { "gemma3:4b" = 4.0 }

[tasks.cons]
strategy = "consensus"
models = ["llama3.2:1b", "gemma3:4b", "qwen3:14b-q8"]
template = "p.md"
output = "json"
vote_field = "label"
quorum = 0.6

[tasks.judged]
strategy = "judge"
models = ["llama3.2:1b", "qwen3:14b-q8"]
template = "p.md"
judge = { model = "gemma3:4b", template = "judge.md", deadline_share = 0.3 }
fallback = "fastest"
"""
PROMPT = "Answer about {{input}}.\n"
JUDGE = "Pick the best answer to: {{prompt}}\n{{candidates}}\n"
LABEL_SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}},
                "required": ["label"]}  # fmt: skip


class Tasks:
    def __init__(self, process: ServiceProcess, folder: Path, emulator) -> None:
        self.process = process
        self.folder = folder
        self.file = folder / "tasks.toml"
        self.url = process.management_url
        self.emulator = emulator

    def infer(self, task: str, timeout: float = 30, **body) -> requests.Response:
        return requests.post(
            self.url + "/v1/infer", json={"task": task, "input": "x", **body}, timeout=timeout
        )

    def reload(self, text: str) -> requests.Response:
        self.file.write_text(text)
        return requests.post(self.url + "/api/tasks/reload", timeout=5)

    def connections(self, model: str) -> list[dict]:
        return [c for c in self.emulator.connections(path="/api/generate") if c["model"] == model]

    def load(self, *models: str) -> None:
        """Put models in memory through the proxy (plain traffic, not a task)."""
        for model in models:
            r = requests.post(self.url + "/api/generate", json={"model": model}, timeout=10)
            assert r.status_code == 200, r.text

    def totals_zero(self) -> bool:
        totals = requests.get(self.url + "/api/limits", timeout=5).json()["totals"]
        running = requests.get(self.url + "/v1/tasks", timeout=5).json()["running"]
        return totals["in_flight"] == 0 and totals["queued"] == 0 and running == 0


@pytest.fixture(scope="module")
def tasks_service(emulator, tmp_path_factory) -> Iterator[tuple[ServiceProcess, Path]]:
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "limits.toml").write_text(BASE_LIMITS)
    (folder / "tasks.toml").write_text(TASKS)
    (folder / "p.md").write_text(PROMPT)
    (folder / "judge.md").write_text(JUDGE)
    (folder / "label.json").write_text(json.dumps(LABEL_SCHEMA))
    (folder / "ollama.log").write_text("")
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(folder / "limits.toml"),
        "LLM_TASKS_FILE": str(folder / "tasks.toml"),
        "LLM_LIMITS_RELOAD_SECONDS": "0.2",
        "LLM_OLLAMA_LOG_FILE": str(folder / "ollama.log"),
        "LLM_UPSTREAM_GRACE_SECONDS": "0.5",
        "LLM_MODEL_CACHE_TTL": "1",
        "LLM_WORKER_THREADS": "512",
    }
    with ServiceProcess(env=env) as process:
        yield process, folder


@pytest.fixture
def svc(tasks_service, emulator) -> Iterator[Tasks]:
    process, folder = tasks_service
    emulator.reset()
    helper = Tasks(process, folder, emulator)
    assert helper.reload(TASKS).status_code == 200
    # /api/ps is cached for 1 s; GET /v1/tasks reads it afresh (the reset unloaded everything).
    assert requests.get(helper.url + "/v1/tasks", timeout=5).json()["loaded_models"] == []
    yield helper
    process.assert_alive()
    # A leak never returns to zero; what is left behind legitimately (a losing branch still
    # queued) ends within max_wait_seconds (30 in BASE_LIMITS) plus a first byte (10). 10 s was
    # not enough once, after the 240-request load test under a parallel run.
    deadline = time.monotonic() + 40
    while not helper.totals_zero():
        assert time.monotonic() < deadline, "a slot or a task place leaked"
        time.sleep(0.05)


def statuses(body: dict) -> dict[str, str]:
    return {c["model"]: c["status"] for c in body["candidates"]}


def wait_closed(svc: Tasks, model: str, timeout: float = 3.0) -> dict:
    """The model's last generate connection, once the emulator saw it end."""
    deadline = time.monotonic() + timeout
    while True:
        records = svc.connections(model)
        if records and records[-1]["closed_at"] is not None:
            return records[-1]
        assert time.monotonic() < deadline, f"{model}: connection still open: {records}"
        time.sleep(0.02)


# --- fallback


def test_fallback_takes_the_next_model_on_error(svc):
    svc.emulator.script(PHI, status=500, message="runner crashed")
    svc.emulator.script(GEMMA, content="second model answer")
    r = svc.infer("fb")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == GEMMA and body["content"] == "second model answer"
    assert statuses(body) == {PHI: "error", GEMMA: "won"}
    assert body["agreement"] is None and body["strategy"] == "fallback"
    assert svc.connections(PHI)[-1]["status"] == 500


def test_open_breaker_skips_the_model_but_not_the_proxy(svc):
    svc.emulator.script(PHI, status=500)
    svc.emulator.script(GEMMA, content="ok")
    for _ in range(2):  # min_calls 2, both failed: open
        assert svc.infer("fb").status_code == 200
    listed = requests.get(svc.url + "/v1/tasks", timeout=5).json()
    fb = next(t for t in listed["tasks"] if t["name"] == "fb")
    assert {m["model"]: m["breaker"] for m in fb["models"]}[PHI] == "open"
    seen = len(svc.connections(PHI))
    body = svc.infer("fb").json()
    skipped = [c for c in body["candidates"] if c["model"] == PHI]
    assert skipped[0]["status"] == "skipped" and skipped[0]["error"] == "breaker_open"
    assert len(svc.connections(PHI)) == seen  # Ollama never saw it
    # The plain proxy route still passes through (and gets Ollama's own 500).
    r = requests.post(svc.url + "/api/generate",
                      json={"model": PHI, "prompt": "x", "stream": False}, timeout=10)  # fmt: skip
    assert r.status_code == 500
    metrics = requests.get(svc.url + "/metrics", timeout=5).text
    assert 'llm_service_breaker_state{model="qwen3:14b-q8"} 2.0' in metrics
    time.sleep(1.1)  # open_seconds: one probe goes through and closes it
    svc.emulator.clear_faults()
    requests.delete(svc.emulator.url + "/_fake/scripts", timeout=5)
    svc.emulator.script(PHI, content="recovered")
    body = svc.infer("fb").json()
    assert body["model"] == PHI
    assert requests.get(svc.url + "/v1/tasks", timeout=5).json()["breakers"][PHI]["state"] == (
        "closed"
    )


# --- fastest


def test_fastest_hedges_to_a_loaded_model_and_cancels_the_loser(svc):
    svc.load(GEMMA)
    svc.emulator.script(LLAMA, content="slow answer", ttft_seconds=10)
    svc.emulator.script(GEMMA, content="quick answer here")
    started = time.monotonic()
    r = svc.infer("fast")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == GEMMA and body["content"] == "quick answer here"
    assert statuses(body) == {LLAMA: "cancelled", GEMMA: "won"}
    assert [c["role"] for c in body["candidates"]] == ["candidate", "hedge"]
    assert 0.3 <= time.monotonic() - started < 5
    closed = wait_closed(svc, LLAMA)
    assert closed["outcome"] == "client_closed" and closed["first_byte_at"] is None
    metrics = requests.get(svc.url + "/metrics", timeout=5).text
    assert 'llm_service_hedges_total{outcome="won",task="fast"} 1.0' in metrics


def test_fastest_never_hedges_to_a_model_that_is_not_loaded(svc):
    svc.emulator.script(LLAMA, content="first model", ttft_seconds=0.8)
    body = svc.infer("fast").json()
    assert body["model"] == LLAMA
    gemma = [c for c in body["candidates"] if c["model"] == GEMMA]
    assert gemma == [{"model": GEMMA, "role": "hedge", "content": None, "status": "skipped",
                      "duration_ms": 0.0, "error": "not_loaded"}]  # fmt: skip
    assert svc.connections(GEMMA) == []


def test_fastest_streams_the_winners_tokens(svc):
    svc.emulator.script(LLAMA, content="one two three four", tokens_per_second=50)
    with requests.post(svc.url + "/v1/infer", json={"task": "fast", "input": "x", "stream": True},
                       stream=True, timeout=30) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith(b"data: ")]
    chunks = [e["chunk"] for e in events if "chunk" in e]
    assert len(chunks) >= 2 and "".join(chunks) == "one two three four"
    assert events[-1]["done"] is True and events[-1]["model"] == LLAMA


# --- voting, weighted, consensus


def test_voting_json_plurality_on_the_vote_field(svc):
    svc.emulator.script(LLAMA, json={"label": "a", "why": "first"})
    svc.emulator.script(GEMMA, json={"label": "a", "why": "other words"})
    svc.emulator.script(PHI, json={"label": "b"})
    body = svc.infer("vote").json()
    assert body["parsed"]["label"] == "a"
    assert body["agreement"] == pytest.approx(2 / 3, abs=1e-3)
    assert body["model"] in (LLAMA, GEMMA)
    assert statuses(body)[PHI] == "lost"


def test_voting_text_picks_the_medoid(svc):
    svc.emulator.script(LLAMA, content="the service restarts the runner after a crash")
    svc.emulator.script(GEMMA, content="the service restarts the runner after every crash")
    svc.emulator.script(PHI, content="bananas are yellow")
    body = svc.infer("vote_text").json()
    assert body["model"] in (LLAMA, GEMMA)
    assert "restarts the runner" in body["content"]
    assert body["agreement"] == pytest.approx(2 / 3, abs=1e-3)


def test_weighted_stops_once_the_leader_cannot_be_overtaken(svc):
    svc.emulator.script(GEMMA, json={"label": "x"})
    svc.emulator.script(LLAMA, json={"label": "y"}, ttft_seconds=10)
    svc.emulator.script(PHI, json={"label": "y"}, ttft_seconds=10)
    started = time.monotonic()
    body = svc.infer("weigh").json()
    assert time.monotonic() - started < 5
    assert body["model"] == GEMMA and body["parsed"] == {"label": "x"}
    assert statuses(body) == {GEMMA: "won", LLAMA: "cancelled", PHI: "cancelled"}
    for model in (LLAMA, PHI):
        assert wait_closed(svc, model)["outcome"] == "client_closed"


def test_consensus_stops_at_quorum_and_cancels_the_rest(svc):
    svc.emulator.script(LLAMA, json={"label": "same"})
    svc.emulator.script(GEMMA, json={"label": "same"})
    svc.emulator.script(PHI, json={"label": "other"}, ttft_seconds=10)
    body = svc.infer("cons").json()
    assert body["parsed"] == {"label": "same"} and body["agreement"] == 1.0
    assert statuses(body)[PHI] == "cancelled"
    assert wait_closed(svc, PHI)["outcome"] == "client_closed"


def test_no_consensus_is_a_422_with_the_candidates(svc):
    for model, label in ((LLAMA, "a"), (GEMMA, "b"), (PHI, "c")):
        svc.emulator.script(model, json={"label": label})
    r = svc.infer("cons")
    assert r.status_code == 422
    body = r.json()
    assert body["type"] == "no_consensus"
    assert sorted(c["content"] for c in body["candidates"]) == [
        '{"label": "a"}', '{"label": "b"}', '{"label": "c"}'
    ]  # fmt: skip


# --- judge


def test_judge_picks_among_anonymous_candidates_after_they_released(svc):
    svc.emulator.script(LLAMA, content="answer from the small model")
    svc.emulator.script(PHI, content="answer from phi")
    svc.emulator.script(GEMMA, json={"winner": "c2", "reason": "more precise"})
    body = svc.infer("judged").json()
    verdict = body["judge"]
    assert verdict["winner"] == "c2" and set(verdict["labels"].values()) == {LLAMA, PHI}
    assert body["model"] == verdict["labels"]["c2"]
    roles = {c["model"]: c["role"] for c in body["candidates"]}
    assert roles == {LLAMA: "candidate", PHI: "candidate", GEMMA: "judge"}
    judge_conn = svc.connections(GEMMA)[-1]
    candidates_closed = max(svc.connections(m)[-1]["closed_at"] for m in (LLAMA, PHI))
    assert judge_conn["opened_at"] >= candidates_closed


def test_judge_with_an_invalid_answer_falls_back_to_the_fastest(svc):
    svc.emulator.script(LLAMA, content="quick")
    svc.emulator.script(PHI, content="slower", ttft_seconds=0.4)
    svc.emulator.script(GEMMA, content="I cannot decide")
    body = svc.infer("judged").json()
    assert body["model"] == LLAMA and body["decided_by"] == "fastest"


def test_judge_is_not_called_for_one_valid_candidate(svc):
    svc.emulator.script(LLAMA, status=500)
    svc.emulator.script(PHI, content="the only one")
    body = svc.infer("judged").json()
    assert body["model"] == PHI and svc.connections(GEMMA) == []


# --- deadlines, errors, client


def test_deadline_cancels_open_branches_and_answers_504_in_time(svc):
    svc.emulator.script(LLAMA, json={"label": "late"}, ttft_seconds=10)
    svc.emulator.script(GEMMA, json={"label": "done"})
    svc.emulator.script(PHI, json={"label": "late"}, ttft_seconds=10)
    started = time.monotonic()
    r = svc.infer("cons", deadline_ms=700)
    elapsed = time.monotonic() - started
    # Consensus cannot decide with one answer of three; no fallback: 504 with what finished.
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["type"] == "deadline_exceeded"
    assert 700 <= body["duration_ms"] <= 900  # the deadline held within 200 ms
    assert elapsed < 3
    assert statuses(body) == {GEMMA: "lost", LLAMA: "timeout", PHI: "timeout"}
    for model in (LLAMA, PHI):
        closed = wait_closed(svc, model)
        assert closed["closed_at"] - started < 1.5


def test_client_that_leaves_cancels_every_branch(svc):
    svc.emulator.script(LLAMA, content="never", ttft_seconds=10)
    svc.emulator.script(GEMMA, content="never", ttft_seconds=10)
    svc.emulator.script(PHI, content="never", ttft_seconds=10)
    with pytest.raises(requests.exceptions.ReadTimeout):
        svc.infer("vote_text", timeout=1.0)
    opened = [m for m in (LLAMA, GEMMA, PHI) if svc.connections(m)]
    assert len(opened) >= 2  # a branch still on its way upstream is dropped before sending
    for model in opened:
        assert wait_closed(svc, model)["outcome"] == "client_closed"


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"task": "nope", "input": "x"}, 404, "task_not_found"),
        ({"task": "fb"}, 400, "invalid_input"),
        ({"task": "fb", "input": "x", "deadline_ms": 999999}, 400, "invalid_input"),
        ({"task": "fb", "input": "x", "strategy": "judge"}, 400, "invalid_input"),
        ({"task": "vote", "input": "x", "stream": True}, 400, "invalid_input"),
        ({"task": "fb", "input": "x", "models": ["no-such-model:1b"]}, 404, "model_not_found"),
        ({"task": "fb", "input": {"other": 1}, "strategy": "fallback"}, 200, None),
    ],
)
def test_bad_input_gets_a_clear_error(svc, body, status, kind):
    r = requests.post(svc.url + "/v1/infer", json=body, timeout=10)
    assert r.status_code == status, r.text
    if kind:
        assert r.json()["type"] == kind


def test_missing_template_field_is_a_400(svc):
    (svc.folder / "q.md").write_text("Query: {{query}}\n")
    assert svc.reload(TASKS + '\n[tasks.q]\nstrategy = "fallback"\nmodels = ["gemma3:4b"]\n'
                      'template = "q.md"\n').status_code == 200  # fmt: skip
    r = svc.infer("q", input={"other": "x"})
    assert r.status_code == 400 and "query" in r.json()["error"]
    assert svc.infer("q", input={"query": "x"}).status_code == 200


def test_an_input_with_lone_surrogates_is_answered(svc):
    # Sent as the escapes they came as, which Go reads as U+FFFD, as if the caller had asked
    # Ollama itself (the branch's encoding raised on them: a 500).
    r = svc.infer("fb", input="before \ud800 after \udfff")
    assert r.status_code == 200, r.text


def test_a_chunked_body_is_read_and_capped_like_one_with_a_length(svc):
    body = json.dumps({"task": "fb", "input": "chunked " * 1000}).encode()
    pieces = iter([body[:100], body[100:5000], body[5000:]])  # no Content-Length: chunked
    r = requests.post(svc.url + "/v1/infer", data=pieces, timeout=30,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text
    cap = 8 * 2**20  # LLM_INFER_MAX_INPUT_MB's default
    big = iter([b'{"task": "fb", "input": "', b"x" * cap, b'"}'])
    r = requests.post(svc.url + "/v1/infer", data=big, timeout=30,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413 and "LLM_INFER_MAX_INPUT_MB" in r.json()["error"]


def test_max_concurrent_answers_429_with_retry_after(svc):
    assert svc.reload(TASKS.replace("max_concurrent = 48", "max_concurrent = 1")).status_code == 200
    svc.emulator.script(PHI, content="held", ttft_seconds=1.5)
    holder = threading.Thread(target=svc.infer, args=("fb",))
    holder.start()
    try:
        time.sleep(0.4)
        r = svc.infer("fb")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["reason"] == "infer_limit"
        assert r.json()["retry_after_seconds"] == int(r.headers["Retry-After"])
    finally:
        holder.join(10)


# --- reload


def test_reload_good_edit_broken_edit_and_in_flight_request(svc):
    svc.emulator.script(PHI, content="old config answer", ttft_seconds=1.0)
    svc.emulator.script(GEMMA, content="new config answer")
    result: dict = {}
    running = threading.Thread(target=lambda: result.update(svc.infer("fb").json()))
    running.start()
    time.sleep(0.3)
    edited = TASKS.replace('models = ["qwen3:14b-q8", "gemma3:4b"]', 'models = ["gemma3:4b"]')
    assert svc.reload(edited).status_code == 200
    running.join(10)
    assert result["model"] == PHI  # finished on the config it started with
    assert svc.infer("fb").json()["model"] == GEMMA  # new requests use the new one

    r = svc.reload(edited.replace('strategy = "voting"', 'strategy = "votng"', 1))
    assert r.status_code == 422
    body = r.json()
    assert body["type"] == "invalid_tasks_file" and "tasks.vote.strategy" in body["error"]
    assert "one of: fallback" in body["error"] and body["status"] == "kept"
    assert svc.infer("fb").json()["model"] == GEMMA  # the last good config stays


def test_file_change_is_picked_up_once_settled(svc):
    svc.file.write_text(TASKS + '\n[tasks.extra]\nstrategy = "fallback"\nmodels = ["gemma3:4b"]\n'
                        'template = "p.md"\n')  # fmt: skip
    deadline = time.monotonic() + 5
    while True:
        names = [t["name"] for t in requests.get(svc.url + "/v1/tasks", timeout=5).json()["tasks"]]
        if "extra" in names:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert svc.infer("extra").status_code == 200


# --- load


def test_load_mixed_with_proxy_traffic_stays_within_limits(svc):
    """200 concurrent /v1/infer plus plain proxy requests: Ollama never sees more than each
    model's limit, every request ends, and every counter returns to zero."""
    for model in (LLAMA, GEMMA, PHI):
        svc.emulator.script(model, json={"label": "z"}, tokens_per_second=400)
    tasks = ["fb", "fast", "vote", "cons", "weigh", "judged"]
    results: list[int] = []
    lock = threading.Lock()

    def infer(i: int) -> None:
        task = tasks[i % len(tasks)]
        try:
            r = svc.infer(task, timeout=60, deadline_ms=15000)
            code = r.status_code
        except requests.RequestException:
            code = -1
        with lock:
            results.append(code)

    def plain(i: int) -> None:
        model = (LLAMA, GEMMA, PHI)[i % 3]
        try:
            r = requests.post(svc.url + "/api/generate",
                              json={"model": model, "prompt": "p", "stream": i % 2 == 0},
                              timeout=60)  # fmt: skip
            code = r.status_code
        except requests.RequestException:
            code = -1
        with lock:
            results.append(code)

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(200)]
    threads += [threading.Thread(target=plain, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 240 and -1 not in results
    assert set(results) <= {200, 429, 422}, sorted(set(results))
    assert results.count(200) >= 48
    seen = svc.emulator.observations()["max_in_flight"]
    assert seen.get(LLAMA, 0) <= 1 and seen.get(PHI, 0) <= 2 and seen.get(GEMMA, 0) <= 4
    svc.emulator.wait_for(lambda obs: not any(obs["in_flight"].values()), timeout=10)
