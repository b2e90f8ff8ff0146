"""The six tasks shipped in config/tasks.toml answer on `make run`: the real service under
gunicorn, the shipped tasks and limits files, and the emulator as `make run` starts it
(default models, default timing). JSON tasks must come back with ``parsed`` filled, which
needs the emulator to honour ``format`` like Ollama's grammar does (issue 30)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from management_api.tasks.jsonschema import validate
from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ROOT, ServiceProcess

# The inputs of the README's /v1/infer examples.
CASES = {
    "recovery_plan": "ollama: CUDA out of memory",
    "expand_queries": "cinematic lounge videos",
    "enrich_metadata": "A 4K timelapse of Tokyo at night",
    "judge": {"question": "Which is a fruit?", "options": ["carrot", "apple"]},
    "rerank_candidates": {
        "query": "jetson power modes",
        "candidates": "a: nvpmodel guide\nb: cat pictures",
    },
    "site_tactics": "find the return policy on shop.example",
}
SCHEMAS = {
    "expand_queries": "expand.json",
    "enrich_metadata": "metadata.json",
    "judge": "choice.json",
    "rerank_candidates": "rerank.json",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("shipped")
    (folder / "ollama.log").write_text("")
    with FakeOllama() as fake:  # what scripts/ollama-shim starts for `make run`
        env = {
            "OLLAMA_URL": fake.url,
            "LLM_TASKS_FILE": str(ROOT / "config" / "tasks.toml"),
            "LLM_LIMITS_FILE": str(ROOT / "config" / "limits.toml"),
            "LLM_OLLAMA_LOG_FILE": str(folder / "ollama.log"),
        }
        with ServiceProcess(env=env) as process:
            yield process.management_url


def test_every_shipped_task_is_covered() -> None:
    text = (ROOT / "config" / "tasks.toml").read_text()
    shipped = {
        line[len("[tasks.") : -1] for line in text.splitlines() if line.startswith("[tasks.")
    }
    assert shipped == set(CASES)


@pytest.mark.parametrize("task", sorted(CASES))
def test_shipped_task_answers(stack: str, task: str) -> None:
    reply = requests.post(
        stack + "/v1/infer", json={"task": task, "input": CASES[task]}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["task"] == task and body["content"], body
    if task in SCHEMAS:
        schema = json.loads((ROOT / "config" / "schemas" / SCHEMAS[task]).read_text())
        assert body["parsed"] is not None, body
        assert body["parsed"] == json.loads(body["content"])
        assert validate(body["parsed"], schema) is None


def test_json_task_streams_a_valid_answer(stack: str) -> None:
    body = {"task": "expand_queries", "input": CASES["expand_queries"], "stream": True}
    with requests.post(stack + "/v1/infer", json=body, stream=True, timeout=60) as reply:
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line]
    assert len(lines) > 2, lines
