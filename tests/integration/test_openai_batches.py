"""The OpenAI Batch API through the official ``openai`` package, against gunicorn + emulator."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator

import openai
import pytest
import requests

from tests.integration.test_jobs import FAST, _env, _folder, _wait_new_worker, _worker_pid
from tests.service_harness import ServiceProcess


@pytest.fixture(scope="module")
def batch_service(emulator, tmp_path_factory) -> Iterator[ServiceProcess]:
    folder = _folder(tmp_path_factory)
    with ServiceProcess(env=_env(folder, emulator, LLM_JOBS_MAX_CONCURRENT="4",
                                 LLM_JOBS_WORKERS="4")) as process:  # fmt: skip
        yield process


@pytest.fixture
def client(batch_service, emulator) -> openai.OpenAI:
    emulator.reset()
    return openai.OpenAI(base_url=batch_service.proxy_url + "/v1", api_key="unused",
                         max_retries=0)  # fmt: skip


def line(custom_id: str, url: str, body: dict) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)


def test_a_100_line_chat_batch_with_one_bad_line(client, emulator):
    lines = [
        line(f"req-{i}", "/v1/chat/completions",
             {"model": FAST, "messages": [{"role": "user", "content": f"question {i}"}]})
        for i in range(100)
    ]  # fmt: skip
    lines[37] = '{"custom_id": "req-37", "method": "POST", "url": "/v1/chat/completions"'  # cut
    uploaded = client.files.create(
        file=("requests.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"workflow": "n8n"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 100
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.metadata == {"workflow": "n8n"}
    assert (done.request_counts.completed, done.request_counts.failed) == (99, 1)
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(100) if i != 37]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in output)
    assert all(o["response"]["body"]["object"] == "chat.completion" for o in output)
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "invalid_request"
    assert "line 38" in errors[0]["error"]["message"]
    assert emulator.observations()["requests"].get("POST /v1/chat/completions") == 99
    assert done.id in [b.id for b in client.batches.list(limit=5).data]


def test_mixed_chat_and_embeddings_batches_and_a_failing_line(client):
    chat = client.files.create(file=("chat.jsonl", io.BytesIO("\n".join([
        line("ok", "/v1/chat/completions", {"model": FAST, "messages": [
            {"role": "user", "content": "hi"}]}),
        line("missing-model", "/v1/chat/completions", {"model": "nope:1b", "messages": [
            {"role": "user", "content": "hi"}]}),
        line("wrong-url", "/v1/embeddings", {"model": FAST, "input": "x"}),
    ]).encode())), purpose="batch")  # fmt: skip
    embed = client.files.create(file=("embed.jsonl", io.BytesIO("\n".join(
        line(f"e{i}", "/v1/embeddings", {"model": FAST, "input": f"text {i}"}) for i in range(10)
    ).encode())), purpose="batch")  # fmt: skip
    chat_batch = client.batches.create(input_file_id=chat.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")  # fmt: skip
    embed_batch = client.batches.create(input_file_id=embed.id, endpoint="/v1/embeddings",
                                        completion_window="24h")  # fmt: skip
    chat_done = wait_batch(client, chat_batch.id)
    embed_done = wait_batch(client, embed_batch.id)
    assert (chat_done.request_counts.completed, chat_done.request_counts.failed) == (1, 2)
    errors = {e["custom_id"]: e for e in map(
        json.loads, client.files.content(chat_done.error_file_id).text.splitlines())}  # fmt: skip
    assert errors["missing-model"]["response"]["status_code"] == 404
    assert errors["missing-model"]["response"]["body"]["error"]["message"]  # OpenAI envelope
    assert errors["wrong-url"]["response"] is None
    assert embed_done.request_counts.completed == 10 and embed_done.error_file_id is None
    vectors = [json.loads(x) for x in client.files.content(embed_done.output_file_id).text
               .splitlines()]  # fmt: skip
    assert [v["custom_id"] for v in vectors] == [f"e{i}" for i in range(10)]
    assert all(v["response"]["body"]["data"][0]["embedding"] for v in vectors)


def test_cancel_a_batch(client, emulator):
    emulator.set_model(FAST, tokens=20, tokens_per_second=10, ttft_seconds=0)  # 2 s each
    uploaded = client.files.create(file=("slow.jsonl", io.BytesIO("\n".join(
        line(f"s{i}", "/v1/chat/completions", {"model": FAST, "messages": [
            {"role": "user", "content": "x"}]}) for i in range(20)
    ).encode())), purpose="batch")  # fmt: skip
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    time.sleep(0.5)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, batch.id, timeout=20)
    assert done.status == "cancelled"
    assert done.request_counts.completed + done.request_counts.failed == 20
    assert done.request_counts.failed >= 16  # only what was running could still finish
    codes = {json.loads(x)["error"]["code"] for x in
             client.files.content(done.error_file_id).text.splitlines()}  # fmt: skip
    assert codes == {"cancelled"}


def test_refusals_come_in_the_openai_envelope(client, batch_service):
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                              completion_window="24h")  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    response = requests.post(batch_service.proxy_url + "/v1/files", timeout=5,
                             data={"purpose": "fine-tune"},
                             files={"file": ("x.jsonl", b"{}")})  # fmt: skip
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"


def test_a_batch_survives_a_killed_worker(emulator, tmp_path_factory):
    """Each line's answer reaches the output file once, and Ollama answered it once."""
    emulator.reset()
    emulator.set_model(FAST, tokens=10, tokens_per_second=10, ttft_seconds=0)  # 1 s each
    folder = _folder(tmp_path_factory)
    env = _env(folder, emulator, LLM_JOBS_MAX_CONCURRENT="4")
    with ServiceProcess(env=env) as process:
        client = openai.OpenAI(base_url=process.proxy_url + "/v1", api_key="x", max_retries=0)
        uploaded = client.files.create(file=("r.jsonl", io.BytesIO("\n".join(
            line(f"k{i}", "/v1/chat/completions", {"model": FAST, "messages": [
                {"role": "user", "content": "x"}]}) for i in range(8)
        ).encode())), purpose="batch")  # fmt: skip
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")  # fmt: skip
        emulator.wait_for(lambda o: o["requests"].get("POST /v1/chat/completions", 0) >= 4)
        old = _worker_pid(process)
        os.kill(old, signal.SIGKILL)
        _wait_new_worker(process, old)
        done = wait_batch(client, batch.id, timeout=30)
        assert done.status == "completed" and done.request_counts.completed == 8
        output = [json.loads(x) for x in client.files.content(done.output_file_id).text
                  .splitlines()]  # fmt: skip
        assert [o["custom_id"] for o in output] == [f"k{i}" for i in range(8)]
        records = emulator.observations()["connections"]
        for entry in output:
            job_id = entry["id"].removeprefix("batch_req_")
            completed = [c for c in records if (c["request_id"] or "").startswith(f"job-{job_id}-")
                         and c["outcome"] == "completed"]  # fmt: skip
            assert len(completed) == 1, entry
