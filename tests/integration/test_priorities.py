"""Priority classes over real HTTP: how a request's class is chosen, the order it is served in,
shedding, and what /api/limits shows (docs/limits.md#priorities-and-fair-share)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import openai
import pytest
import requests

from tests.service_harness import ServiceProcess

MODEL = "qwen3:14b-q8"


def _limits(max_queue: int = 50) -> str:
    return f"""
[defaults]
max_concurrency = 1
max_queue = 50
max_wait_seconds = 60
first_byte_timeout_seconds = 20
idle_timeout_seconds = 10
aging_seconds = 0

[[models]]
match = "{MODEL}"
max_concurrency = 1
max_queue = {max_queue}
"""


def _lines(process: ServiceProcess) -> list[dict]:
    return [
        json.loads(line.split("llm_service.access: ", 1)[1])
        for line in process.output().splitlines()
        if "llm_service.access: " in line
    ]


def _wait_lines(process: ServiceProcess, **fields: str) -> list[dict]:
    """The access lines whose fields have these values, once there is one (within 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        found = [
            line
            for line in _lines(process)
            if all(line.get(name) == value for name, value in fields.items())
        ]
        if found:
            return found
        assert time.monotonic() < deadline, f"no access line with {fields}"
        time.sleep(0.02)


def _line(process: ServiceProcess, request_id: str) -> dict:
    return _wait_lines(process, request_id=request_id)[0]


def _send(base: str, request_id: str, priority: str | None, results: dict, caller: str) -> None:
    headers = {"X-Request-ID": request_id, "X-LLM-Caller": caller}
    if priority:
        headers["X-LLM-Priority"] = priority
    response = requests.post(
        base + "/api/generate",
        json={"model": MODEL, "prompt": request_id, "stream": False},
        headers=headers,
        timeout=60,
    )
    results[request_id] = (response.status_code, time.monotonic(), response)


def test_an_interactive_request_overtakes_a_queued_batch_run(service, emulator):
    service.set_limits(_limits())
    emulator.set_model(MODEL, ttft_seconds=0.25, tokens=2, tokens_per_second=100)
    results: dict = {}
    threads = []
    for index in range(8):
        thread = threading.Thread(
            target=_send, args=(service.proxy, f"batch-{index}", "batch", results, "n8n")
        )
        thread.start()
        threads.append(thread)
        if index == 0:
            service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 7)
    counters = service.model_counters(MODEL)
    assert counters["queued_by_priority"] == {"interactive": 0, "standard": 0, "batch": 7}
    assert counters["callers_queued"] == {"n8n": 7}
    assert counters["callers_in_flight"] == {"n8n": 1}

    _send(service.proxy, "dashboard-question", "interactive", results, "dashboard")
    finished_at = results["dashboard-question"][1]
    for thread in threads:
        thread.join(30)
    assert {status for status, _, _ in results.values()} == {200}
    # It waited for the request in the slot only: at most one batch request finished first.
    batch_done_before = sum(
        1 for rid, (_, at, _) in results.items() if rid.startswith("batch") and at < finished_at
    )
    assert batch_done_before <= 1
    line = _line(service.process, "dashboard-question")
    assert (line["priority"], line["caller"]) == ("interactive", "dashboard")
    assert _line(service.process, "batch-3")["priority"] == "batch"


def test_a_full_queue_sheds_a_batch_request_for_an_interactive_one(service, emulator):
    service.set_limits(_limits(max_queue=2))
    emulator.set_model(MODEL, ttft_seconds=0.6, tokens=2, tokens_per_second=100)
    results: dict = {}
    threads = [
        threading.Thread(target=_send, args=(service.proxy, f"b{i}", "batch", results, "n8n"))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    _send(service.proxy, "urgent", "interactive", results, "dashboard")
    for thread in threads:
        thread.join(30)
    assert results["urgent"][0] == 200
    shed = [rid for rid, (status, _, _) in results.items() if status == 429]
    assert shed == ["b2"], results  # the newest batch request gave its place
    response = results["b2"][2]
    body = response.json()
    assert (body["type"], body["reason"]) == ("shed", "shed")
    assert response.headers["Retry-After"] == str(body["retry_after_seconds"])
    assert service.model_counters(MODEL)["rejected"]["shed"] == 1


def test_service_tier_through_the_openai_client(service, emulator):
    service.set_limits(_limits())
    client = openai.OpenAI(base_url=service.proxy + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        service_tier="priority",
        extra_headers={"X-Request-ID": "tier-priority"},
    )
    assert answer.choices[0].message.content
    assert _line(service.process, "tier-priority")["priority"] == "interactive"
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        service_tier="flex",
        extra_headers={"X-Request-ID": "tier-flex"},
    )
    assert _line(service.process, "tier-flex")["priority"] == "batch"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], service_tier="turbo"
        )
    assert "service_tier" in str(refused.value)


@pytest.mark.parametrize("value", ["urgent", "", "INTERACTIVE!", "1"])
def test_an_unknown_priority_header_is_refused_naming_it(service, value):
    response = requests.post(
        service.proxy + "/api/generate",
        json={"model": "llama3.2:1b", "prompt": "hi", "stream": False},
        headers={"X-LLM-Priority": value},
        timeout=10,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "invalid_priority" and "X-LLM-Priority" in body["error"]


# --- the keys file: a default class, a ceiling, a weight

DEFAULTED = "n8n-secret-0123456789abc"
CAPPED = "capped-secret-0123456789"
PERSON = "person-secret-0123456789"


@pytest.fixture(scope="module")
def keyed(emulator) -> Iterator[ServiceProcess]:
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_AUTH_MODE": "management",
        "LLM_API_KEYS": (
            f"n8n:{DEFAULTED}:user:priority=batch,capped:{CAPPED}:user:4:ceiling=standard:weight=2,"
            f"person:{PERSON}:user:priority=interactive"
        ),
    }
    with ServiceProcess(env=env) as process:
        yield process


def _keyed_generate(process: ServiceProcess, key: str, rid: str, priority: str | None = None):
    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": rid}
    if priority:
        headers["X-LLM-Priority"] = priority
    response = requests.post(
        process.proxy_url + "/api/generate",
        json={"model": "llama3.2:1b", "prompt": "hi", "stream": False},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return _line(process, rid)


def test_a_keys_default_class_and_its_ceiling(keyed):
    assert _keyed_generate(keyed, DEFAULTED, "key-default")["priority"] == "batch"
    # A request may still ask for another class...
    assert _keyed_generate(keyed, DEFAULTED, "key-asks", "interactive")["priority"] == (
        "interactive"
    )
    # ...but never above its key's ceiling: it is served at the ceiling, not refused.
    assert _keyed_generate(keyed, CAPPED, "over-ceiling", "interactive")["priority"] == ("standard")
    assert _keyed_generate(keyed, CAPPED, "under-ceiling", "batch")["priority"] == "batch"


def _wait_job(process: ServiceProcess, key: str, job_id: str) -> dict:
    deadline = time.monotonic() + 20
    while True:
        job = requests.get(process.proxy_url + f"/api/jobs/{job_id}", timeout=5,
                           headers={"Authorization": f"Bearer {key}"}).json()  # fmt: skip
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_a_job_waits_as_batch_unless_its_key_names_a_class(keyed):
    classes = {}
    for key, name in ((CAPPED, "capped"), (PERSON, "person")):
        submitted = requests.post(
            keyed.proxy_url + "/api/jobs",
            json={"route": "/api/generate", "body": {"model": "llama3.2:1b", "prompt": name}},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert submitted.status_code == 202, submitted.text
        assert _wait_job(keyed, key, submitted.json()["id"])["status"] == "succeeded"
        classes[name] = _wait_lines(keyed, caller=name, path="/api/generate")[-1]["priority"]
    assert classes == {"capped": "batch", "person": "interactive"}


def test_the_header_on_v1_infer_sets_its_branches_class(service, emulator):
    service.set_limits(_limits())
    response = requests.post(
        service.proxy + "/v1/infer",
        json={"task": "expand_queries", "input": "jetson fans", "models": ["llama3.2:1b"]},
        headers={"X-LLM-Priority": "batch", "X-Request-ID": "infer-batch"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    branch = _wait_lines(service.process, request_id="infer-batch", path="/api/generate")[0]
    assert branch["priority"] == "batch"
    refused = requests.post(
        service.proxy + "/v1/infer",
        json={"task": "expand_queries", "input": "x"},
        headers={"X-LLM-Priority": "asap"},
        timeout=10,
    )
    assert refused.status_code == 400 and "X-LLM-Priority" in refused.text
