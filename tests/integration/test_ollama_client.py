"""The upstream client's retry policy and typed errors, against the emulator's fault injection."""

from __future__ import annotations

import pytest

from management_api.ollama import (
    OllamaClient,
    OllamaStatusError,
    OllamaTimeout,
    OllamaUnreachable,
)
from tests.service_harness import free_port


@pytest.fixture
def client(emulator):
    emulator.reset()
    sleeps: list[float] = []
    c = OllamaClient(emulator.url, connect_timeout=1, read_timeout=5, sleep=sleeps.append)
    c.sleeps = sleeps  # type: ignore[attr-defined]
    yield c
    c.close()


def requests_to(emulator, route: str) -> int:
    return emulator.observations()["requests"].get(route, 0)


def test_get_is_retried_on_503_with_backoff(client, emulator):
    emulator.fault("status", route="/api/tags", status=503, message="busy", times=2)
    models = client.tags()
    assert any(m["name"] == "llama3.2:latest" for m in models)
    assert requests_to(emulator, "GET /api/tags") == 3
    assert client.sleeps == [0.5, 1.0]


def test_get_gives_up_after_three_attempts(client, emulator):
    emulator.fault("status", route="/api/ps", status=502, message="bad gateway", times=5)
    with pytest.raises(OllamaStatusError) as info:
        client.ps()
    assert (info.value.status, info.value.message) == (502, "bad gateway")
    assert requests_to(emulator, "GET /api/ps") == 3


def test_get_is_not_retried_on_a_client_error(client, emulator):
    with pytest.raises(OllamaStatusError) as info:
        client.show("no-such-model")
    assert info.value.status == 404
    assert info.value.message == "model 'no-such-model:latest' not found"
    assert requests_to(emulator, "POST /api/show") == 1


def test_post_is_not_retried_on_read_timeout(client, emulator):
    emulator.fault("hang", route="/api/generate")
    with pytest.raises(OllamaTimeout):
        client.post_json(
            "/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False}, read_timeout=0.5
        )
    assert requests_to(emulator, "POST /api/generate") == 1


def test_post_is_not_retried_on_a_server_error(client, emulator):
    emulator.fault("status", route="/api/generate", status=503, message="busy")
    with pytest.raises(OllamaStatusError):
        client.post_json("/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False})
    assert requests_to(emulator, "POST /api/generate") == 1


def test_delete_of_a_missing_model_is_404(client, emulator):
    with pytest.raises(OllamaStatusError) as info:
        client.delete("no-such-model")
    assert info.value.status == 404
    assert info.value.message == "model 'no-such-model' not found"


def test_delete_removes_the_model(client, emulator):
    client.delete("gemma3:4b")
    assert all(m["name"] != "gemma3:4b" for m in client.tags())


def test_unreachable_is_typed_and_retried_for_reads():
    sleeps: list[float] = []
    client = OllamaClient(f"http://127.0.0.1:{free_port()}", connect_timeout=0.5,
                          sleep=sleeps.append)  # fmt: skip
    with pytest.raises(OllamaUnreachable):
        client.version()
    assert sleeps == [0.5, 1.0]
    sleeps.clear()
    with pytest.raises(OllamaUnreachable):
        client.delete("x")
    assert sleeps == [0.5, 1.0]
    sleeps.clear()
    with pytest.raises(OllamaUnreachable):
        client.post_json("/api/generate", {"model": "x"})
    assert sleeps == []


def test_version(client):
    assert client.version().count(".") == 2
