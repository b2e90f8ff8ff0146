"""Pull progress, unknown models, resumable and shared downloads."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama

MINILM_SIZE = 45_949_216  # all-minilm's GGUF layer


def pull_lines(fake: FakeOllama, model: str, timeout: float = 10) -> list[dict]:
    response = requests.post(
        fake.url + "/api/pull", json={"model": model}, stream=True, timeout=timeout
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.iter_lines() if line]


def big_layer(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line.get("total") == MINILM_SIZE]


def test_progress_lines(fake: FakeOllama) -> None:
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=100_000_000)
    lines = pull_lines(fake, "all-minilm")
    assert lines[0] == {"status": "pulling manifest"}
    assert [line["status"] for line in lines[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    layers = [line for line in lines if line["status"].startswith("pulling ") and "digest" in line]
    for line in layers:
        assert line["status"] == "pulling " + line["digest"][7:19]
        assert list(line)[:3] == ["status", "digest", "total"]
        assert "completed" not in line or line["completed"] > 0  # omitted while 0
    progress = [line.get("completed", 0) for line in big_layer(lines)]
    assert len(progress) >= 4 and progress == sorted(progress) and progress[-1] == MINILM_SIZE
    assert "all-minilm:latest" in [
        m["name"] for m in requests.get(fake.url + "/api/tags").json()["models"]
    ]


def test_present_layers_report_once_complete(fake: FakeOllama) -> None:
    lines = pull_lines(fake, "llama3.2:1b")
    layer_lines = [line for line in lines if "digest" in line]
    assert len(layer_lines) == 4
    assert all(line["completed"] == line["total"] for line in layer_lines)


def test_unknown_model_both_ways(fake: FakeOllama) -> None:
    assert pull_lines(fake, "ghost") == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    response = requests.post(fake.url + "/api/pull", json={"model": "ghost", "stream": False})
    assert (response.status_code, response.json()) == (
        500,
        {"error": "pull model manifest: file does not exist"},
    )
    assert response.headers["Content-Type"] == "application/json"
    success = requests.post(fake.url + "/api/pull", json={"model": "llama3.2:1b", "stream": False})
    assert (
        success.json() == {"status": "success"}
        and success.headers["Content-Type"] == "application/json"
    )


def test_failed_pull_resumes(fake: FakeOllama) -> None:
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=100_000_000, times=2)
    fake.fault(
        "fail_pull",
        route="/api/pull",
        after_bytes=20_000_000,
        mode="error",
        message="connection reset",
    )
    first = pull_lines(fake, "all-minilm")
    assert first[-1] == {"error": "connection reset"}
    assert "success" not in [line.get("status") for line in first]
    done = fake.observations()["pulls"]["partial"]
    ((digest, saved),) = done.items()
    assert saved >= 20_000_000
    second = pull_lines(fake, "all-minilm")
    resumed = big_layer(second)
    assert resumed[0]["completed"] >= saved and second[-1] == {"status": "success"}
    assert fake.observations()["pulls"]["started"][digest] == 2


def test_failed_pull_drop_and_stall(fake: FakeOllama) -> None:
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=100_000_000, times=2)
    fake.fault("fail_pull", route="/api/pull", after_bytes=10_000_000, mode="drop")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        pull_lines(fake, "all-minilm")
    fake.fault("fail_pull", route="/api/pull", after_bytes=10_000_000, mode="stall")
    response = requests.post(
        fake.url + "/api/pull", json={"model": "all-minilm"}, stream=True, timeout=(5, 0.5)
    )
    with pytest.raises(requests.exceptions.ConnectionError):  # read timeout while streaming
        for _ in response.iter_lines():
            pass
    pulls = fake.wait_for(lambda obs: obs["pulls"]["downloads_cancelled"] == 1 and obs["pulls"])
    assert pulls["partial"] and min(pulls["partial"].values()) >= 20_000_000


def test_concurrent_pulls_share_one_download(fake: FakeOllama) -> None:
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=60_000_000, times=2)
    results: list[list[dict]] = []
    threads = [
        threading.Thread(target=lambda: results.append(pull_lines(fake, "all-minilm")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [lines[-1] for lines in results] == [{"status": "success"}] * 2
    pulls = fake.observations()["pulls"]
    digest = big_layer(results[0])[0]["digest"]
    assert pulls["started"][digest] == 1 and pulls["max_waiters"][digest] == 2


def test_download_continues_while_one_client_remains(fake: FakeOllama) -> None:
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=60_000_000, times=2)
    results: list[list[dict]] = []
    stayer = threading.Thread(target=lambda: results.append(pull_lines(fake, "all-minilm")))
    stayer.start()
    fake.wait_for(lambda obs: obs["pulls"]["active"])
    leaver = requests.post(
        fake.url + "/api/pull", json={"model": "all-minilm"}, stream=True, timeout=10
    )
    for line in leaver.iter_lines():
        if json.loads(line).get("total") == MINILM_SIZE:
            break  # it is now a waiter of the shared download
    assert fake.observations()["pulls"]["max_waiters"]
    leaver.close()
    stayer.join()
    assert results[0][-1] == {"status": "success"}
    pulls = fake.observations()["pulls"]
    assert pulls["downloads_cancelled"] == 0 and pulls["downloads_completed"] >= 1
