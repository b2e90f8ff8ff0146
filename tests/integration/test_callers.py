"""Who is calling: the key's name with keys on, an X-LLM-Caller name with keys off, else anonymous.

Every path that admits a request reads it the same way (the inference fast path, Flask's
pass-through, /v1/infer and its branches, durable jobs), and the access log names the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from tests.service_harness import ServiceProcess

MODEL = "llama3.2:1b"
ADMIN_KEY = "admin-secret-0123456789"
USER_KEY = "user-secret-0123456789ab"


def _access_lines(process: ServiceProcess, request_id: str) -> list[dict]:
    found = []
    for line in process.output().splitlines():
        if "llm_service.access: " in line and f'"request_id":"{request_id}"' in line:
            found.append(json.loads(line.split("llm_service.access: ", 1)[1]))
    return found


def _wait_for_lines(process: ServiceProcess, request_id: str, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 5
    while len(lines := _access_lines(process, request_id)) < count:
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.02)
    return lines


@pytest.fixture(scope="module")
def open_service(emulator) -> Iterator[ServiceProcess]:
    with ServiceProcess(env={"OLLAMA_URL": emulator.url}) as process:
        yield process


@pytest.fixture(scope="module")
def keyed_service(emulator) -> Iterator[ServiceProcess]:
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_AUTH_MODE": "management",
        "LLM_API_KEYS": f"ops:{ADMIN_KEY}:admin,dashboard:{USER_KEY}:user",
    }
    with ServiceProcess(env=env) as process:
        yield process


def _generate(base: str, request_id: str, headers: dict[str, str] | None = None):
    return requests.post(
        base + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False},
        headers={"X-Request-ID": request_id, **(headers or {})},
        timeout=30,
    )


def test_keys_off_the_header_names_the_caller_on_every_path(open_service):
    named = {"X-LLM-Caller": "n8n.invoices-flow_2"}
    assert _generate(open_service.proxy_url, "fast-named", named).status_code == 200
    line = _wait_for_lines(open_service, "fast-named")[0]
    assert line["caller"] == "n8n.invoices-flow_2"
    # What the answer cost, from Ollama's final chunk: what usage and fair share count.
    assert line["prompt_tokens"] > 0 and line["eval_count"] > 0 and line["gpu_ms"] > 0

    shown = requests.post(
        open_service.proxy_url + "/api/show",
        json={"model": MODEL},
        headers={"X-Request-ID": "flask-named", **named},
        timeout=10,
    )
    assert shown.status_code == 200
    assert _wait_for_lines(open_service, "flask-named")[0]["caller"] == "n8n.invoices-flow_2"

    assert _generate(open_service.proxy_url, "fast-anon").status_code == 200
    assert _wait_for_lines(open_service, "fast-anon")[0]["caller"] == "anonymous"


@pytest.mark.parametrize(
    "value", ["", "UpperCase", "has space", "a" * 33, "slash/name", "ümlaut", "semi;colon"]
)
def test_a_malformed_caller_name_is_refused_with_400(open_service, value):
    for path, body in (
        ("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}),
        ("/api/show", {"model": MODEL}),
        ("/v1/infer", {"task": "expand_queries", "input": "text"}),
    ):
        response = requests.post(
            open_service.proxy_url + path,
            json=body,
            headers={"X-LLM-Caller": value.encode().decode("latin-1")},
            timeout=10,
        )
        assert response.status_code == 400, (path, value, response.text)
        assert response.json()["type"] == "invalid_caller"
        assert "X-LLM-Caller" in response.json()["error"]


def test_with_keys_on_the_key_names_the_caller_and_the_header_is_not_read(keyed_service):
    base = keyed_service.proxy_url
    keyed = {"Authorization": f"Bearer {USER_KEY}", "X-LLM-Caller": "ops"}
    assert _generate(base, "keyed", keyed).status_code == 200
    line = _wait_for_lines(keyed_service, "keyed")[0]
    assert (line["key"], line["caller"]) == ("dashboard", "dashboard")

    # A keyless request cannot borrow a name, not even a malformed one: the header is not read.
    for value in ("ops", "NOT VALID"):
        request_id = f"keyless-{len(value)}"
        assert _generate(base, request_id, {"X-LLM-Caller": value}).status_code == 200
        assert _wait_for_lines(keyed_service, request_id)[0]["caller"] == "anonymous"


def test_task_branches_carry_the_caller(open_service):
    response = requests.post(
        open_service.proxy_url + "/v1/infer",
        json={"task": "expand_queries", "input": "jetson power modes", "models": [MODEL]},
        headers={"X-Request-ID": "task-named", "X-LLM-Caller": "rag-indexer"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    lines = _wait_for_lines(open_service, "task-named", count=3)
    assert {line["caller"] for line in lines} == {"rag-indexer"}
    assert {line.get("path") for line in lines} >= {"/api/generate", "/v1/infer"}
    assert any(line.get("kind") == "branch" for line in lines)


def test_a_job_runs_as_the_caller_that_submitted_it(open_service):
    submitted = requests.post(
        open_service.proxy_url + "/api/jobs",
        json={"route": "/api/generate", "body": {"model": MODEL, "prompt": "hi"}},
        headers={"X-LLM-Caller": "nightly-batch"},
        timeout=10,
    )
    assert submitted.status_code == 202, submitted.text
    job = requests.get(submitted.json()["status_url"], timeout=5).json()
    assert job["caller"] == "nightly-batch"
    deadline = time.monotonic() + 20
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = requests.get(open_service.proxy_url + f"/api/jobs/{job['id']}", timeout=5).json()
    assert job["status"] == "succeeded", job
    ran = [
        json.loads(line.split("llm_service.access: ", 1)[1])
        for line in open_service.output().splitlines()
        if "llm_service.access: " in line and '"caller":"nightly-batch"' in line
    ]
    generated = [line for line in ran if line["path"] == "/api/generate"]
    assert generated, ran
    assert generated[0]["priority"] == "batch"  # nobody waits on the line for a job
