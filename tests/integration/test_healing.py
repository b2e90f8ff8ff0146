"""Cache clear, GPU recover and session reset, replayed as their callers send them."""

from __future__ import annotations

import json
import threading
import time

import requests

from tests.integration.test_proxy import MODEL, post_async, slow

OTHER = "gemma3:4b"


def loaded(emulator) -> list[str]:
    return sorted(
        m["name"] for m in requests.get(emulator.url + "/api/ps", timeout=5).json()["models"]
    )


def load(emulator, model: str) -> None:
    assert requests.post(emulator.url + "/api/generate", json={"model": model}, timeout=10).ok


def test_cache_clear_unloads_cancels_and_frees(service, emulator):
    load(emulator, OTHER)
    slow(emulator, MODEL, seconds=6, tokens=60)
    stream = requests.post(
        service.proxy + "/api/generate",
        json={"model": MODEL, "prompt": "x"},
        stream=True,
        timeout=20,
    )
    lines = stream.iter_lines()
    first = json.loads(next(lines))
    assert first["done"] is False
    assert sorted(loaded(emulator)) == sorted([MODEL, OTHER])

    waiter: dict = {}

    def clear() -> None:
        waiter["response"] = requests.post(service.management + "/api/cache/clear", timeout=15)

    clearing = threading.Thread(target=clear)
    clearing.start()
    # A request for the model arriving during the clear waits, then succeeds.
    late = post_async(
        service.proxy + "/api/generate", {"model": MODEL, "prompt": "after", "stream": False}
    )
    rest = [json.loads(line) for line in lines if line]
    clearing.join(15)
    response = waiter["response"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Cache cleared (2 models unloaded)"
    assert sorted(body["unloaded_models"]) == sorted([MODEL, OTHER])
    assert body["failed_models"] == [] and body["duration_ms"] >= 0
    assert rest[-1] == {"error": f"model '{MODEL}' was unloaded by a cache clear"}
    late[0].join(20)
    assert late[1]["status"] == 200
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0)


def test_cache_clear_with_nothing_loaded_and_no_body(service):
    response = requests.post(service.management + "/api/cache/clear", timeout=5)
    assert response.status_code == 200
    assert "Cache cleared" in response.json()["message"]
    assert response.json()["unloaded_models"] == []


def test_cache_clear_message_counts_one_model_in_the_singular(service, emulator):
    assert requests.post(service.management + "/api/cache/clear", timeout=15).ok
    load(emulator, OTHER)
    body = requests.post(service.management + "/api/cache/clear", timeout=15).json()
    assert body["unloaded_models"] == [OTHER]
    assert body["message"] == "Cache cleared (1 model unloaded)"
    again = requests.post(service.management + "/api/cache/clear", timeout=15).json()
    assert again["message"] == "Cache cleared (0 models unloaded)"


def test_gpu_recover_as_the_dashboard_sends_it(service, emulator):
    load(emulator, OTHER)
    started = time.monotonic()
    response = requests.post(
        service.management + "/api/gpu/recover",
        headers={"Content-Type": "application/json"},
        timeout=15,
    )
    assert time.monotonic() - started < 12
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "recovered"
    assert body["freed_mb"] >= 0 and isinstance(body["can_retry"], bool)
    assert "free_mb" in body and OTHER in body["unloaded_models"]
    assert loaded(emulator) == []


def test_self_healing_unload_form_while_saturated(service, emulator):
    load(emulator, OTHER)
    slow(emulator, MODEL, seconds=3)
    url = service.proxy + "/api/generate"
    threads = [post_async(url, {"model": MODEL, "prompt": "hold"})]
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 1)
    threads += [post_async(url, {"model": MODEL, "prompt": "q"}) for _ in range(2)]
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 2)
    started = time.monotonic()
    response = requests.post(
        service.management + "/api/generate", json={"model": "", "keep_alive": 0}, timeout=5
    )
    assert time.monotonic() - started < 5
    assert response.status_code in (200, 404)
    assert response.json()["done_reason"] == "unload"
    for thread, _ in threads:
        thread.join(20)


def test_session_reset_reloads_the_default_model(service, emulator):
    load(emulator, OTHER)
    response = requests.post(service.management + "/api/session/reset", timeout=15)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Session reset, reloaded llama3.2:1b"
    assert OTHER in body["unloaded_models"]
    assert loaded(emulator) == ["llama3.2:1b"]


def test_session_reset_missing_model_is_404(service):
    response = requests.post(
        service.management + "/api/session/reset", json={"model": "not-downloaded:7b"}, timeout=15
    )
    assert response.status_code == 404
    assert "pull it first" in response.json()["error"]


def test_concurrent_session_resets_one_runs_one_409(service, emulator):
    emulator.set_model("llama3.2:1b", load_seconds=1.0)
    results: list[int] = []

    def reset() -> None:
        results.append(
            requests.post(service.management + "/api/session/reset", timeout=15).status_code
        )

    threads = [threading.Thread(target=reset) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(results) == [200, 409]


def test_hard_reset_without_supervisord_is_501(service):
    response = requests.post(
        service.management + "/api/session/reset", json={"hard": True}, timeout=15
    )
    assert response.status_code == 501
    assert "supervisord" in response.json()["error"]


def test_bad_bodies_are_400(service):
    for body in (b"[1,2]", b"{bad", b'{"hard": "yes"}', b'{"model": "bad name"}'):
        response = requests.post(
            service.management + "/api/session/reset",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert response.status_code == 400, body
        assert response.json()["status"] == "error"
