"""Usage accounting over real HTTP: /api/usage equals the access log's sums, survives a restart,
needs an admin key when keys are on, and the per-caller counters reach /metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from management_api.proxy.inference import INFERENCE_ROUTES
from tests.fake_ollama.harness import FakeOllama
from tests.integration.conftest import BASE_LIMITS
from tests.service_harness import ServiceProcess

LLAMA, GEMMA = "llama3.2:1b", "gemma3:4b"
ADMIN_KEY = "usage-admin-0123456789"
USER_KEY = "usage-user-0123456789ab"
TASKS = """
[defaults]
deadline_ms = 8000
max_deadline_ms = 20000

[tasks.summarize]
strategy = "fallback"
models = ["gemma3:4b"]
template = "p.md"
options = { temperature = 0.4 }
"""


def _env(emulator: FakeOllama, folder: Path) -> dict[str, str]:
    return {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(folder / "limits.toml"),
        "LLM_TASKS_FILE": str(folder / "tasks.toml"),
        "LLM_CACHE_MAX_MB": "16",
        "LLM_USAGE_FLUSH_SECONDS": "0.2",
        "LLM_STATE_DIR": str(folder / "state"),  # ours: a restart reopens the same database
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("usage")
    (folder / "limits.toml").write_text(BASE_LIMITS)
    (folder / "tasks.toml").write_text(TASKS)
    (folder / "p.md").write_text("Summarize {{input}}.\n")
    return folder


def _access_lines(*processes: ServiceProcess) -> list[dict]:
    found = []
    for process in processes:
        for text in process.output().splitlines():
            if "llm_service.access: " in text:
                found.append(json.loads(text.split("llm_service.access: ", 1)[1]))
    return found


def _usage_lines(lines: list[dict]) -> list[dict]:
    """The lines usage counts: gateway lines of inference routes that name a model."""
    return [
        line
        for line in lines
        if "kind" not in line and line.get("path") in INFERENCE_ROUTES and line.get("model")
    ]


def _sums(lines: list[dict], by: str) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, float]] = {}
    for line in lines:
        group = sums.setdefault(str(line.get(by) or ""), dict.fromkeys(
            ("requests", "prompt_tokens", "completion_tokens", "gpu_seconds",
             "queue_wait_seconds", "cache_hits", "saved_tokens"), 0))  # fmt: skip
        group["requests"] += 1
        group["prompt_tokens"] += line.get("prompt_tokens") or 0
        group["completion_tokens"] += line.get("eval_count") or 0
        gpu_ms = line.get("gpu_ms")
        group["gpu_seconds"] += (gpu_ms if gpu_ms is not None else line.get("held_ms", 0)) / 1000
        group["queue_wait_seconds"] += line["queue_wait_ms"] / 1000
        if line.get("outcome") in ("cache_hit", "coalesced"):
            group["cache_hits"] += 1
            group["saved_tokens"] += line.get("saved_tokens") or 0
    return sums


def _usage(base: str, headers: dict[str, str] | None = None, **params: str) -> dict:
    response = requests.get(base + "/api/usage", params=params, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _generate(base: str, caller: str, model: str, temperature: float = 0.5) -> requests.Response:
    return requests.post(
        base + "/api/generate",
        json={"model": model, "prompt": f"hi {caller}", "stream": False,
              "options": {"temperature": temperature}},
        headers={"X-LLM-Caller": caller},
        timeout=30,
    )  # fmt: skip


def _assert_matches(report: dict, expected: dict[str, dict[str, float]], by: str) -> None:
    got = {row[by]: row for row in report["groups"]}
    assert set(got) == set(expected), (got, expected)
    for name, sums in expected.items():
        row = got[name]
        for field in ("requests", "prompt_tokens", "completion_tokens", "cache_hits",
                      "saved_tokens"):  # fmt: skip
            assert row[field] == sums[field], (name, field, row, sums)
        for field in ("gpu_seconds", "queue_wait_seconds"):
            assert row[field] == pytest.approx(sums[field], abs=0.01), (name, field, row, sums)
        assert sum(row["outcomes"].values()) == row["requests"]


def _wait_for_line(process: ServiceProcess, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(_usage_lines(_access_lines(process))) < count:
        assert time.monotonic() < deadline, "access lines missing"
        time.sleep(0.05)


def test_usage_equals_the_access_log_and_survives_a_restart(emulator, folder):
    env = _env(emulator, folder)
    with ServiceProcess(env=env) as first:
        proxy = first.proxy_url
        assert _generate(proxy, "alpha", LLAMA).status_code == 200
        assert _generate(proxy, "alpha", GEMMA).status_code == 200
        assert _generate(proxy, "alpha", "no-such-model:1b").status_code == 404  # an error
        assert _generate(proxy, "beta", LLAMA, temperature=0).status_code == 200
        hit = _generate(proxy, "beta", LLAMA, temperature=0)  # the same again: a cache hit
        assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
        client = openai.OpenAI(base_url=proxy + "/v1", api_key="unused",
                               default_headers={"X-LLM-Caller": "beta"})  # fmt: skip
        chat = client.chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": "hello"}], temperature=0.7
        )
        assert chat.usage is not None and chat.usage.completion_tokens > 0
        infer = requests.post(first.management_url + "/v1/infer",
                              json={"task": "summarize", "input": "a report"},
                              headers={"X-LLM-Caller": "beta"}, timeout=30)  # fmt: skip
        assert infer.status_code == 200, infer.text
        _wait_for_line(first, 7)

        lines = _usage_lines(_access_lines(first))
        assert len(lines) == 7
        hit_line = next(line for line in lines if line["outcome"] == "cache_hit")
        assert hit_line["saved_tokens"] > 0  # the replayed answer's prompt + completion
        (branch,) = [line for line in lines if line.get("task")]
        assert branch["task"] == "summarize" and branch["model"] == GEMMA

        # Exact at once (before the writer ran) and after it.
        by_caller = _sums(lines, "caller")
        _assert_matches(_usage(first.management_url, group_by="caller"), by_caller, "caller")
        time.sleep(0.5)
        _assert_matches(_usage(first.management_url, group_by="caller"), by_caller, "caller")
        _assert_matches(_usage(first.management_url, group_by="task"), _sums(lines, "task"),
                        "task")  # fmt: skip
        by_model = _usage(first.management_url, group_by="model")
        assert {row["model"] for row in by_model["groups"]} == {LLAMA, GEMMA, "other"}
        alpha = next(r for r in _usage(first.management_url)["groups"] if r["caller"] == "alpha")
        assert alpha["outcomes"] == {"completed": 2, "http_404": 1}

        metrics = requests.get(first.management_url + "/metrics", timeout=5).text
        prompt = sum(line.get("prompt_tokens") or 0 for line in lines
                     if line["caller"] == "alpha" and line.get("model_key") == LLAMA)  # fmt: skip
        assert (f'llm_service_tokens_total{{caller="alpha",kind="prompt",model="{LLAMA}"}} '
                f"{float(prompt)}") in metrics  # fmt: skip
        assert 'llm_service_gpu_seconds_total{caller="beta",model="gemma3:4b"}' in metrics
        before = _usage(first.management_url, group_by="caller,model,task")

    # A restart on the same LLM_STATE_DIR: every row is back.
    with ServiceProcess(env=env) as second:
        after = _usage(second.management_url, group_by="caller,model,task")
        assert after["groups"] == before["groups"]
        assert after["totals"]["requests"] == 7
        # New requests add to the rows read back.
        assert _generate(second.proxy_url, "alpha", LLAMA).status_code == 200
        _wait_for_line(second, 1)
        again = _usage(second.management_url, group_by="caller")
        assert again["totals"]["requests"] == 8


def test_long_prompts_and_large_batches_are_counted(emulator, folder, tmp_path):
    """Answers whose last line outgrows the 64 KB tail kept for the counts: a generate with a
    72,000-token prompt (its `context` is as long), a non-stream chat answer of 12,000 tokens
    and a 20-input embedding batch (178 KB).
    They counted 0 tokens and 0 GPU-seconds, and so cost their callers nothing in fair share."""
    env = {**_env(emulator, folder), "LLM_STATE_DIR": str(tmp_path), "LLM_CACHE_MAX_MB": "0"}
    prompt = " ".join(f"word{i}" for i in range(30000))
    with ServiceProcess(env=env) as process:
        expected = {"prompt_tokens": 0, "completion_tokens": 0}
        for stream in (False, True):
            body = {"model": LLAMA, "prompt": prompt, "stream": stream}
            answer = requests.post(process.proxy_url + "/api/generate", json=body, timeout=60)
            assert answer.status_code == 200, answer.text[:300]
            last = json.loads(answer.content.strip().splitlines()[-1])
            assert len(answer.content.strip().splitlines()[-1]) > 65536
            expected["prompt_tokens"] += last["prompt_eval_count"]
            expected["completion_tokens"] += last["eval_count"]
        # A non-stream chat answer past the tail: its message is the long part.
        emulator.set_model("llama3.2:latest", tokens=12000, tokens_per_second=200000)
        chat = requests.post(process.proxy_url + "/api/chat", timeout=60, json={
            "model": "llama3.2:latest", "stream": False,
            "messages": [{"role": "user", "content": "a long story"}]})  # fmt: skip
        assert chat.status_code == 200 and len(chat.content) > 65536, chat.text[:300]
        batch = requests.post(process.proxy_url + "/api/embed", timeout=60,
                              json={"model": "nomic-embed-text",
                                    "input": [f"text {i}" for i in range(20)]})  # fmt: skip
        assert batch.status_code == 200 and len(batch.content) > 65536
        _wait_for_line(process, 4)
        rows = {row["model"]: row for row in _usage(process.management_url,
                                                    group_by="model")["groups"]}  # fmt: skip
        assert rows[LLAMA]["prompt_tokens"] == expected["prompt_tokens"] > 140000
        assert rows[LLAMA]["completion_tokens"] == expected["completion_tokens"]
        assert rows[LLAMA]["gpu_seconds"] > 0
        long_chat = rows["llama3.2:latest"]
        assert long_chat["completion_tokens"] == chat.json()["eval_count"] >= 12000
        assert long_chat["prompt_tokens"] == chat.json()["prompt_eval_count"]
        embed = rows["nomic-embed-text:latest"]
        assert embed["prompt_tokens"] == batch.json()["prompt_eval_count"] > 0
        assert embed["gpu_seconds"] > 0


def test_bad_parameters_are_refused_naming_them(emulator, folder, tmp_path):
    env = {**_env(emulator, folder), "LLM_STATE_DIR": str(tmp_path)}
    with ServiceProcess(env=env) as process:
        for params, name in (
            ({"since": "last week"}, "since"),
            ({"until": "2026-13-01"}, "until"),
            ({"group_by": "colour"}, "group_by"),
        ):
            response = requests.get(process.management_url + "/api/usage", params=params,
                                    timeout=5)  # fmt: skip
            assert response.status_code == 400, response.text
            assert name in response.json()["error"] and response.json()["field"] == name
        window = _usage(process.management_url, since="2026-01-01T00:00:00Z", until="1767312000")
        assert (window["since"], window["until"]) == (
            "2026-01-01T00:00:00+00:00",
            "2026-01-02T00:00:00+00:00",
        )
        assert window["groups"] == [] and window["totals"]["requests"] == 0


@pytest.fixture(scope="module")
def keyed(emulator, folder, tmp_path_factory) -> Iterator[ServiceProcess]:
    env = {
        **_env(emulator, folder),
        "LLM_STATE_DIR": str(tmp_path_factory.mktemp("keyed-state")),
        "LLM_AUTH_MODE": "management",
        "LLM_API_KEYS": f"ops:{ADMIN_KEY}:admin,dashboard:{USER_KEY}:user",
    }
    with ServiceProcess(env=env) as process:
        yield process


def test_usage_needs_an_admin_key_when_keys_are_on(keyed):
    url = keyed.management_url + "/api/usage"
    assert requests.get(url, timeout=5).status_code == 401
    refused = requests.get(url, headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=5)
    assert refused.status_code == 403 and "read usage" in refused.text
    # A key's name is its caller: it counts under its name, with no header.
    answered = requests.post(
        keyed.proxy_url + "/api/generate",
        json={"model": LLAMA, "prompt": "x", "stream": False},
        headers={"Authorization": f"Bearer {USER_KEY}"},
        timeout=30,
    )
    assert answered.status_code == 200
    deadline = time.monotonic() + 5
    while True:
        report = _usage(keyed.management_url, {"Authorization": f"Bearer {ADMIN_KEY}"})
        if report["groups"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(r["caller"], r["requests"]) for r in report["groups"]] == [("dashboard", 1)]
