"""Scheduler semantics: parallel slots, the pending queue, eviction, shared runners."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from tests.fake_ollama.harness import FakeOllama

BUSY = "server busy, please try again.  maximum pending requests exceeded"


def generate(fake: FakeOllama, model: str, **extra: object) -> requests.Response:
    body = {"model": model, "prompt": "hi", "stream": False, **extra}
    return requests.post(fake.url + "/api/generate", json=body, timeout=30)


def test_parallel_slots_cap_concurrency(fake: FakeOllama) -> None:
    fake.configure(num_parallel=2)
    fake.set_model("llama3.2:1b", tokens=10, tokens_per_second=100)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: generate(fake, "llama3.2:1b"), range(6)))
    assert [r.status_code for r in results] == [200] * 6
    observations = fake.observations()
    assert observations["max_in_flight"] == {"llama3.2:1b": 2}
    assert observations["in_flight"] == {"llama3.2:1b": 0}
    assert observations["loads"] == 1


def test_slot_wait_counts_only_in_total_duration(fake: FakeOllama) -> None:
    generate(fake, "llama3.2:1b")  # loaded: later requests take the fast path
    fake.set_model("llama3.2:1b", tokens=20, tokens_per_second=100)
    with ThreadPoolExecutor(2) as pool:
        first, second = (
            r.json() for r in pool.map(lambda _: generate(fake, "llama3.2:1b"), range(2))
        )
    waited = max(first, second, key=lambda r: r["total_duration"])
    assert waited["load_duration"] < 100_000_000  # no queue, no load
    assert waited["total_duration"] > 300_000_000  # includes the other request's 200 ms


def test_queue_overflow_is_503_only_for_loads(fake: FakeOllama) -> None:
    generate(fake, "llama3.2:1b")
    fake.configure(max_queue=0)
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: generate(fake, "llama3.2:1b"), range(8)))
    assert {r.status_code for r in loaded} == {200}  # fast path: never rejected
    rejected = generate(fake, "gemma3:4b")
    assert (rejected.status_code, rejected.json()) == (503, {"error": BUSY})
    assert rejected.headers["Content-Type"] == "application/json; charset=utf-8"
    fake.configure(max_queue=1)
    fake.set_model("qwen3:14b-q8", load_seconds=0.4)
    with ThreadPoolExecutor(5) as pool:
        burst = list(pool.map(lambda _: generate(fake, "qwen3:14b-q8", think=False), range(5)))
    statuses = sorted(r.status_code for r in burst)
    assert statuses.count(503) >= 1 and statuses.count(200) >= 2
    assert all(r.json() == {"error": BUSY} for r in burst if r.status_code == 503)
    assert fake.observations()["rejected"] == 1 + statuses.count(503)


def test_max_loaded_models_evicts_the_shortest_keep_alive(fake: FakeOllama) -> None:
    fake.configure(max_loaded_models=2)
    generate(fake, "llama3.2:1b", keep_alive="1m")
    generate(fake, "gemma3:4b", keep_alive="10m")
    generate(fake, "llama3.2:latest", keep_alive="5m")
    loaded = sorted(m["name"] for m in requests.get(fake.url + "/api/ps").json()["models"])
    assert loaded == ["gemma3:4b", "llama3.2:latest"]
    observations = fake.observations()
    assert (observations["loads"], observations["unloads"], observations["evictions"]) == (3, 1, 1)


def test_eviction_waits_for_a_busy_runner(fake: FakeOllama) -> None:
    fake.configure(max_loaded_models=1)
    fake.set_model("llama3.2:1b", tokens=30, tokens_per_second=100)
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(generate, fake, "llama3.2:1b")
        fake.wait_for(lambda obs: obs["in_flight"].get("llama3.2:1b") == 1)
        waiting = pool.submit(generate, fake, "gemma3:4b")
        assert busy.result().status_code == 200 and waiting.result().status_code == 200
    first, second = fake.connections(path="/api/generate")
    assert second["first_byte_at"] > first["closed_at"]  # head-of-line blocking
    assert waiting.result().json()["load_duration"] > 150_000_000


def test_names_sharing_a_blob_share_one_runner(fake: FakeOllama) -> None:
    requests.post(fake.url + "/api/copy", json={"source": "llama3.2:1b", "destination": "alias"})
    generate(fake, "llama3.2:1b")
    generate(fake, "alias")
    assert len(requests.get(fake.url + "/api/ps").json()["models"]) == 1
    assert fake.observations()["loads"] == 1


def test_different_runner_options_force_a_reload(fake: FakeOllama) -> None:
    generate(fake, "llama3.2:1b")
    generate(fake, "llama3.2:1b", options={"num_ctx": 8192})
    (model,) = requests.get(fake.url + "/api/ps").json()["models"]
    assert model["context_length"] == 8192
    observations = fake.observations()
    assert (observations["loads"], observations["unloads"]) == (2, 1)


def test_load_time_grows_with_model_size(fake: FakeOllama) -> None:
    fake.configure(load_seconds=0, load_seconds_per_gb=0.05, max_loaded_models=3)
    small = generate(fake, "llama3.2:1b").json()  # 1.32 GB -> 66 ms
    big = generate(fake, "qwen3:14b-q8", think=False).json()  # 15.7 GB -> 785 ms
    assert small["load_duration"] < 400_000_000
    assert big["load_duration"] >= 780_000_000
    observations = fake.observations()
    assert observations["loads"] == 2
    assert 0.84 <= observations["load_seconds"] < 2.5
    assert fake.configure()["load_seconds_per_gb"] == 0.05


def test_memory_budget_evicts_what_does_not_fit(fake: FakeOllama) -> None:
    # Runners: llama3.2:1b 1.59 GB, gemma3:4b 3.61 GB (file + KV cache); 4 GB holds one.
    fake.configure(memory_bytes=4_000_000_000, max_loaded_models=3)
    generate(fake, "llama3.2:1b")
    generate(fake, "gemma3:4b")
    loaded = [m["name"] for m in requests.get(fake.url + "/api/ps").json()["models"]]
    assert loaded == ["gemma3:4b"]
    fake.configure(memory_bytes=6_000_000_000)
    generate(fake, "llama3.2:1b")
    loaded = sorted(m["name"] for m in requests.get(fake.url + "/api/ps").json()["models"])
    assert loaded == ["gemma3:4b", "llama3.2:1b"]
    observations = fake.observations()
    assert (observations["loads"], observations["unloads"], observations["evictions"]) == (3, 1, 1)


def test_a_swap_holds_up_the_requests_behind_it(fake: FakeOllama) -> None:
    """Arrival order across models: A busy, B needs a swap, a later A waits behind B."""
    fake.configure(max_loaded_models=1, load_seconds=0.2)
    fake.set_model("llama3.2:1b", tokens=30, tokens_per_second=100)
    finished: list[str] = []

    def run(model: str) -> None:
        assert generate(fake, model, think=False).status_code == 200
        finished.append(model)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(run, "llama3.2:1b")
        fake.wait_for(lambda obs: obs["in_flight"].get("llama3.2:1b") == 1)
        swap = pool.submit(run, "gemma3:4b")
        fake.wait_for(lambda obs: obs["pending"] == 1 or obs["evictions"] == 1)
        later = pool.submit(run, "llama3.2:1b")
        for future in (first, swap, later):
            future.result()
    assert finished == ["llama3.2:1b", "gemma3:4b", "llama3.2:1b"]
    assert fake.observations()["loads"] == 3
