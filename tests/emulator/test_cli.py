"""The command line and the harness: --models, scheduler flags, start-up failures."""

from __future__ import annotations

import pytest
import requests

from tests.fake_ollama.harness import EmulatorStartError, FakeOllama


def test_models_and_flags_from_the_command_line() -> None:
    models = ["llama3.2:1b", "mistral:7b-instruct-q8", "mxbai-embed-large:latest", "user/custom:3b"]
    with FakeOllama(
        models=models, num_parallel=3, max_queue=7, keep_alive="90s", tokens=4, loopback_checks=True
    ) as fake:
        tags = requests.get(fake.url + "/api/tags").json()["models"]
        assert sorted(m["name"] for m in tags) == sorted(models)
        by_name = {m["name"]: m for m in tags}
        assert by_name["mistral:7b-instruct-q8"]["details"]["quantization_level"] == "Q8_0"
        assert by_name["mistral:7b-instruct-q8"]["details"]["parameter_size"] == "7B"
        assert by_name["user/custom:3b"]["details"]["parameter_size"] == "3B"
        show = requests.post(fake.url + "/api/show", json={"model": "mxbai-embed-large"}).json()
        assert show["capabilities"] == ["embedding"]
        config = requests.get(fake.url + "/_fake/config").json()
        assert (config["num_parallel"], config["max_queue"], config["keep_alive"]) == (3, 7, 90)
        assert config["loopback_checks"] is True and config["tokens"] == 4
        answer = requests.post(
            fake.url + "/api/generate",
            json={"model": "user/custom:3b", "prompt": "x", "stream": False},
        ).json()
        assert answer["eval_count"] == 4
        # Pullable again after a delete: command-line models join the registry.
        requests.delete(fake.url + "/api/delete", json={"model": "user/custom:3b"})
        pulled = requests.post(
            fake.url + "/api/pull", json={"model": "user/custom:3b", "stream": False}
        )
        assert pulled.json() == {"status": "success"}


def test_start_failure_reports_the_output() -> None:
    with pytest.raises(EmulatorStartError, match="invalid int value"):
        FakeOllama("--num-parallel", "many").start()


def test_reset_restores_start_state(fake: FakeOllama) -> None:
    fake.configure(num_parallel=4, max_queue=3)
    fake.set_model("llama3.2:1b", tokens=2)
    requests.delete(fake.url + "/api/delete", json={"model": "gemma3:4b"})
    fake.fault("status", route="/api/tags", times=0)
    fake.reset()
    config = requests.get(fake.url + "/_fake/config").json()
    assert (config["num_parallel"], config["max_queue"]) == (1, 512)
    names = [m["name"] for m in requests.get(fake.url + "/api/tags").json()["models"]]
    assert "gemma3:4b" in names
    answer = requests.post(
        fake.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "x", "stream": False}
    )
    assert answer.json()["eval_count"] == 12
    assert fake.observations()["requests"] == {"GET /api/tags": 1, "POST /api/generate": 1}
