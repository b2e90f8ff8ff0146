"""Model management over real sockets: gunicorn + the Ollama emulator.

Catalog cache, loaded models, pull jobs (progress, retries, joins, disconnects, cancel, disk) and
delete, observed from both ends: our API's answers and what the emulator saw.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess, free_port

TTL = 2.0
START_MODELS = (
    "llama3.2:1b",
    "llama3.2:latest",
    "gemma3:4b",
    "nomic-embed-text:latest",
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    "myorg/tiny-model:1b",
)
SMALL = "all-minilm"  # in the emulator's registry, not installed: a 46 MB pull
SMALL_LAYER = "sha256:8bdf721a389f2cbac116384a5d58c3f2f79410f90a94ee8385c8b1d40467075d"


@pytest.fixture(scope="module")
def fake():
    with FakeOllama(models=",".join(START_MODELS)) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def service(fake):
    env = {
        "OLLAMA_URL": fake.url,
        "LLM_MODEL_CACHE_TTL": str(TTL),
        "LLM_PULL_RETRIES": "2",
        "LLM_PULL_STALL_SECONDS": "1",
        "LLM_PULL_MIN_FREE_GB": "0",
        "LLM_UPSTREAM_GRACE_SECONDS": "1",
    }
    with ServiceProcess(env=env) as process:
        yield process


class Api:
    def __init__(self, process: ServiceProcess) -> None:
        self.url = process.management_url
        self.proxy = process.proxy_url

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return requests.delete(self.url + path, timeout=30, **kwargs)

    def models(self) -> dict:
        response = self.get("/api/models")
        assert response.status_code == 200, response.text
        return response.json()

    def names(self) -> list[str]:
        return [m["name"] for m in self.models()["models"]]

    def forget_cache(self) -> None:
        # A delete, found or not, invalidates the catalog.
        response = self.delete("/api/models/delete", json={"model": "cache-buster:never"})
        assert response.status_code == 404, response.text

    def start_pull(self, model: str) -> dict:
        response = self.post("/api/models/pull", json={"model": model, "stream": False})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.get(f"/api/models/pulls/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_job(self, job_id: str, predicate=None, timeout: float = 20) -> dict:
        predicate = predicate or (lambda job: job["state"] in ("succeeded", "failed", "cancelled"))
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
            time.sleep(0.05)

    def cancel_active(self) -> None:
        for job in self.get("/api/models/pulls").json()["pulls"]:
            if job["state"] in ("queued", "running", "retrying"):
                self.delete(f"/api/models/pulls/{job['id']}")


@pytest.fixture
def api(service, fake):
    fake.reset()
    client = Api(service)
    client.forget_cache()
    yield client
    client.cancel_active()
    service.assert_alive()


def tags_calls(fake) -> int:
    return fake.observations()["requests"].get("GET /api/tags", 0)


def pull_calls(fake) -> int:
    return fake.observations()["requests"].get("POST /api/pull", 0)


def read_ndjson(response: requests.Response) -> list[dict]:
    return [json.loads(raw) for raw in response.iter_lines() if raw.strip()]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def models_when(api: Api, predicate) -> dict:
    """Poll GET /api/models until its body satisfies `predicate`; return that body."""
    found: list[dict] = []

    def check() -> bool:
        body = api.models()
        if predicate(body):
            found.append(body)
        return bool(found)

    wait_for(check)
    return found[0]


# --- catalog cache


def test_within_the_ttl_no_upstream_call_and_after_it_exactly_one(api, fake):
    before = tags_calls(fake)
    first = api.models()
    second = api.models()
    assert (first["cached"], second["cached"]) == (False, True)
    assert tags_calls(fake) == before + 1
    assert second["age_seconds"] < TTL
    assert second["ttl_seconds"] == TTL
    assert second["count"] == len(START_MODELS) == len(second["models"])
    # Polled: once the TTL has passed, the next call refreshes with one upstream call.
    refreshed = models_when(api, lambda body: not body["cached"])
    assert refreshed["age_seconds"] == 0
    assert tags_calls(fake) == before + 2


def test_metadata_of_installed_models(api):
    models = {m["name"]: m for m in api.models()["models"]}
    llama = models["llama3.2:latest"]
    assert llama["size"] > 2_000_000_000
    assert llama["format"] == "gguf"
    assert (llama["family"], llama["families"]) == ("llama", ["llama"])
    assert (llama["parameter_size"], llama["parameter_count"]) == ("3.2B", 3_200_000_000)
    assert llama["quantization"] == "Q4_K_M"
    assert len(llama["digest"]) == 64 and llama["modified_at"]


def test_100_concurrent_cold_requests_make_one_upstream_call(api, fake):
    # Ollama answers the one fetch slowly, so the others pile up behind it.
    fake.fault("stall_first_byte", route="/api/tags", seconds=1.0)
    before = tags_calls(fake)
    barrier = threading.Barrier(100)

    def call(_: int) -> tuple[int, int]:
        barrier.wait(10)
        response = api.get("/api/models")
        return response.status_code, response.json().get("count", -1)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(call, range(100)))
    assert results == [(200, len(START_MODELS))] * 100
    assert tags_calls(fake) == before + 1


def test_pull_and_delete_through_the_management_api_invalidate(api):
    assert SMALL + ":latest" not in api.names()
    job = api.start_pull(SMALL)
    assert api.wait_job(job["id"])["state"] == "succeeded"
    listing = api.models()
    assert listing["cached"] is False
    assert SMALL + ":latest" in [m["name"] for m in listing["models"]]
    assert api.delete("/api/models/delete", json={"model": SMALL}).status_code == 200
    listing = api.models()
    assert listing["cached"] is False
    assert SMALL + ":latest" not in [m["name"] for m in listing["models"]]


def test_pull_and_delete_through_the_proxy_invalidate(api):
    assert "phi3:mini" not in api.names()
    pulled = requests.post(
        api.proxy + "/api/pull", json={"model": "phi3:mini", "stream": False}, timeout=30
    )
    assert pulled.status_code == 200, pulled.text
    assert "phi3:mini" in api.names()
    deleted = requests.delete(api.proxy + "/api/delete", json={"model": "phi3:mini"}, timeout=30)
    assert deleted.status_code == 200, deleted.text
    assert "phi3:mini" not in api.names()


# --- Ollama down, disk threshold: a service whose Ollama comes and goes


@pytest.fixture(scope="module")
def offline():
    """A service pointed at a port where no Ollama runs until a test starts one there."""
    port = free_port()
    env = {
        "OLLAMA_URL": f"http://127.0.0.1:{port}",
        "LLM_MODEL_CACHE_TTL": "1",
        "LLM_PULL_MIN_FREE_GB": "1000000000",  # more than any disk has
    }
    with ServiceProcess(env=env) as process:
        yield Api(process), port


def test_ollama_down_503_without_a_copy_then_the_stale_copy(offline):
    api, port = offline
    response = api.get("/api/models")
    assert response.status_code == 503
    assert response.json()["type"] == "ollama_unavailable"
    assert response.headers["Retry-After"]
    loaded = api.get("/api/models/loaded")
    assert loaded.status_code == 200  # callers read `error`, not the status
    assert loaded.json()["loaded_models"] == [] and loaded.json()["error"]

    with FakeOllama("--port", str(port), models=",".join(START_MODELS)):
        fresh = api.models()
        assert (fresh["stale"], fresh["count"]) == (False, len(START_MODELS))

    stale = models_when(api, lambda body: body["stale"])
    assert stale["count"] == len(START_MODELS)
    assert stale["cached"] is True
    assert stale["age_seconds"] >= 1
    assert "not reachable" in stale["warning"]


def test_too_little_disk_is_507_before_any_upstream_call(offline):
    api, port = offline
    with FakeOllama("--port", str(port)) as emulator:
        response = api.post("/api/models/pull", json={"model": SMALL})
        body = response.json()
        assert response.status_code == 507
        assert body["type"] == "insufficient_storage"
        assert body["needed_bytes"] == 1_000_000_000 * 1_000_000_000
        assert 0 <= body["free_bytes"] < body["needed_bytes"]
        assert {"free_gb", "needed_gb"} <= set(body)
        assert pull_calls(emulator) == 0


# --- pulls


def test_pull_progress_is_monotonic_and_reaches_100(api, fake):
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=40_000_000)
    response = api.post("/api/models/pull", json={"model": SMALL}, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = read_ndjson(response)
    percents = [line["percent"] for line in lines]
    completed = [line["completed_bytes"] for line in lines]
    assert percents == sorted(percents) and completed == sorted(completed)
    assert any(0 < p < 100 for p in percents)  # intermediate progress was reported
    layer_lines = [line for line in lines if line.get("digest") == SMALL_LAYER]
    assert layer_lines[-1]["completed"] == layer_lines[-1]["total"]  # Ollama's own fields kept
    assert lines[-1]["status"] == "success"
    assert lines[-1]["percent"] == 100.0
    assert lines[-1]["completed_bytes"] == lines[-1]["total_bytes"] > 45_000_000
    job = api.job(response.headers["X-Pull-Job-Id"])
    assert (job["state"], job["attempt"]) == ("succeeded", 1)


def test_a_stream_cut_twice_is_retried_and_resumed(api, fake):
    fake.fault("slow_pull", route="/api/pull", times=3, bytes_per_second=40_000_000)
    fake.fault("fail_pull", route="/api/pull", times=2, after_bytes=10_000_000, mode="drop")
    response = api.post("/api/models/pull", json={"model": SMALL}, stream=True)
    lines = read_ndjson(response)
    assert lines[-1]["status"] == "success"
    assert lines[-1]["attempt"] == 3
    assert [line["attempt"] for line in lines if "retry_in_seconds" in line] == [1, 2]
    for attempt in (2, 3):  # each attempt continued where the previous one stopped
        first = next(
            line
            for line in lines
            if line["attempt"] == attempt and line.get("digest") == SMALL_LAYER
        )
        assert first["completed"] >= 10_000_000 * (attempt - 1)
    job = api.job(lines[-1]["job_id"])
    assert len(job["failures"]) == 2
    assert pull_calls(fake) == 3
    assert fake.observations()["pulls"]["started"][SMALL_LAYER] == 3


def test_a_pull_that_always_fails_gives_up_after_the_retries(api, fake):
    fake.fault("fail_pull", route="/api/pull", times=0, after_bytes=1_000_000, mode="error")
    response = api.post("/api/models/pull", json={"model": SMALL}, stream=True)
    final = read_ndjson(response)[-1]
    assert final["status"] == "error"
    assert final["type"] == "retries_exhausted"
    assert "after 3 attempts" in final["error"]
    assert "unexpected EOF" in final["error"]  # the upstream message
    assert pull_calls(fake) == 3
    assert api.job(final["job_id"])["state"] == "failed"


def test_an_unknown_model_fails_fast(api, fake):
    response = api.post("/api/models/pull", json={"model": "no-such-model:7b"}, stream=True)
    final = read_ndjson(response)[-1]
    assert final["status"] == "error"
    assert final["error"] == "pull model manifest: file does not exist"
    assert final["type"] == "model_not_found"
    assert final["attempt"] == 1
    assert pull_calls(fake) == 1


def test_a_stalled_download_counts_as_a_failed_attempt(api, fake):
    fake.fault("fail_pull", route="/api/pull", after_bytes=5_000_000, mode="stall")
    job = api.start_pull(SMALL)
    done = api.wait_job(job["id"])
    assert (done["state"], done["attempt"]) == ("succeeded", 2)
    assert "stalled" in done["failures"][0]["error"]


def test_two_concurrent_pulls_of_one_model_share_one_upstream_pull(api, fake):
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=40_000_000)
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(api.start_pull, [SMALL, SMALL + ":latest"]))
    assert answers[0]["id"] == answers[1]["id"]
    assert sorted(a["joined"] for a in answers) == [False, True]
    assert api.wait_job(answers[0]["id"])["state"] == "succeeded"
    assert pull_calls(fake) == 1


def test_a_client_that_disconnects_does_not_stop_the_job(api, fake):
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=30_000_000)
    response = api.post("/api/models/pull", json={"model": SMALL}, stream=True)
    job_id = response.headers["X-Pull-Job-Id"]
    lines = response.iter_lines()
    for _ in range(3):
        next(lines)
    response.close()
    done = api.wait_job(job_id)
    assert done["state"] == "succeeded"
    assert api.wait_job(job_id, lambda job: job["subscribers"] == 0)
    assert fake.observations()["pulls"]["downloads_cancelled"] == 0
    assert SMALL + ":latest" in api.names()


def test_cancel_closes_the_upstream_stream(api, fake):
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=2_000_000)
    job = api.start_pull(SMALL)
    api.wait_job(job["id"], lambda j: j["completed_bytes"] > 0)
    response = api.delete(f"/api/models/pulls/{job['id']}")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    upstream = wait_for(lambda: [c for c in fake.connections(path="/api/pull") if c["closed_at"]])
    assert len(upstream) == 1
    assert wait_for(lambda: fake.observations()["pulls"]["downloads_cancelled"] == 1)
    assert api.job(job["id"])["state"] == "cancelled"
    assert SMALL + ":latest" not in api.names()
    again = api.delete(f"/api/models/pulls/{job['id']}")
    assert again.status_code == 200  # cancelling a cancelled job is harmless


def test_pull_jobs_are_listed_and_finished_ones_cannot_be_cancelled(api):
    job = api.start_pull(SMALL)
    api.wait_job(job["id"])
    listing = api.get("/api/models/pulls").json()
    assert listing["pulls"][0]["id"] == job["id"]
    assert {"running", "queued", "max_running", "max_queued", "count"} <= set(listing)
    response = api.delete(f"/api/models/pulls/{job['id']}")
    assert response.status_code == 409
    assert response.json()["type"] == "pull_finished"


def test_namespaced_names_pull(api):
    job = api.start_pull("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")
    assert api.wait_job(job["id"])["state"] == "succeeded"


# --- loaded models


def test_loaded_models_show_ps_and_the_limiter_counters(api, fake):
    fake.set_model("llama3.2:1b", tokens=20, tokens_per_second=10, ttft_seconds=0)
    body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
    with ThreadPoolExecutor(max_workers=1) as pool:
        generation = pool.submit(requests.post, api.proxy + "/api/generate", json=body, timeout=30)

        def busy_row():
            rows = api.get("/api/models/loaded").json()["loaded_models"]
            return next((r for r in rows if r["name"] == "llama3.2:1b" and r["in_flight"]), None)

        row = wait_for(busy_row)
        assert generation.result().status_code == 200
    assert (row["in_flight"], row["queued"]) == (1, 0)
    assert row["size_vram"] > 0 and row["size"] > 0
    assert row["expires_at"] and row["context_length"] > 0
    answer = api.get("/api/models/loaded").json()
    assert answer["count"] == 1 and answer["timestamp"].endswith("Z")


# --- delete


def test_delete_an_installed_model(api, fake):
    size = next(m["size"] for m in api.models()["models"] if m["name"] == "gemma3:4b")
    response = api.delete("/api/models/delete", json={"model": "gemma3:4b"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Model gemma3:4b deleted successfully"
    assert (body["model"], body["freed_bytes"]) == ("gemma3:4b", size)
    assert (body["was_loaded"], body["unloaded"]) == (False, False)
    emulator_tags = requests.get(fake.url + "/api/tags", timeout=5).json()["models"]
    assert "gemma3:4b" not in [m["name"] for m in emulator_tags]


def test_delete_an_absent_model_is_404(api):
    response = api.delete("/api/models/delete", json={"model": "phi3:mini"})
    assert response.status_code == 404
    assert response.json() == {
        "error": "model 'phi3:mini' not found",
        "type": "model_not_found",
        "model": "phi3:mini",
    }


def test_delete_unloads_a_loaded_model_first(api, fake):
    loaded = requests.post(fake.url + "/api/generate", json={"model": "llama3.2:1b"}, timeout=10)
    assert loaded.status_code == 200
    assert [r["name"] for r in api.get("/api/models/loaded").json()["loaded_models"]] == [
        "llama3.2:1b"
    ]
    response = api.delete("/api/models/delete", json={"model": "llama3.2:1b"})
    assert response.status_code == 200
    assert (response.json()["was_loaded"], response.json()["unloaded"]) == (True, True)
    assert requests.get(fake.url + "/api/ps", timeout=5).json()["models"] == []
    unload = fake.connections(path="/api/generate")[-1]
    delete = fake.connections(path="/api/delete")[-1]
    assert unload["closed_at"] <= delete["opened_at"]
    assert fake.observations()["unloads"] == 1


def test_delete_during_a_pull_is_409(api, fake):
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=2_000_000)
    job = api.start_pull(SMALL)
    response = api.delete("/api/models/delete", json={"model": SMALL + ":latest"})
    assert response.status_code == 409
    assert response.json()["type"] == "pull_in_progress"
    assert response.json()["job_id"] == job["id"]
    assert fake.observations()["requests"].get("DELETE /api/delete", 0) == 0


def test_delete_during_a_pull_sent_through_the_proxy_is_409(api, fake):
    fake.fault("slow_pull", route="/api/pull", bytes_per_second=20_000_000)  # ~2.3 s
    result = {}

    def pull() -> None:
        result["r"] = requests.post(
            api.proxy + "/api/pull", json={"model": SMALL, "stream": False}, timeout=60
        )

    thread = threading.Thread(target=pull)
    thread.start()
    wait_for(lambda: pull_calls(fake) >= 1)
    response = api.delete("/api/models/delete", json={"model": SMALL})
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "pull_in_progress"
    assert response.json()["job_id"] is None
    thread.join(60)
    assert result["r"].status_code == 200
    assert api.delete("/api/models/delete", json={"model": SMALL}).status_code == 200


def test_delete_with_the_query_form_and_namespaced_names(api, fake):
    namespaced = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
    by_query = api.delete("/api/models/delete", params={"model": namespaced})
    assert by_query.status_code == 200, by_query.text
    by_name = api.delete("/api/models/delete", json={"name": "myorg/tiny-model:1b"})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["message"] == "Model myorg/tiny-model:1b deleted successfully"
    remaining = api.names()
    assert namespaced not in remaining and "myorg/tiny-model:1b" not in remaining


# --- validation: 400 with the envelope, never 500, nothing sent to Ollama

BAD_BODIES = [
    pytest.param({"data": "{", "headers": {"Content-Type": "application/json"}}, id="malformed"),
    pytest.param(
        {"data": "model=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        id="form",
    ),
    pytest.param({"json": ["llama3.2"]}, id="array"),
    pytest.param({"json": {}}, id="missing"),
    pytest.param({"json": {"model": ""}}, id="empty"),
    pytest.param({"json": {"model": 123}}, id="number"),
    pytest.param({"json": {"name": ["llama3.2"]}}, id="list-name"),
    pytest.param({"json": {"model": "a" * 1000}}, id="too-long"),
    pytest.param({"json": {"model": "bad name!"}}, id="invalid"),
    pytest.param({"json": {"model": "-leading:dash"}}, id="leading-dash"),
    pytest.param({"json": {"model": "a/b/c/d"}}, id="too-many-parts"),
]


def assert_envelope(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["type"], str) and body["type"]
    assert response.headers["X-Error-Source"] == "llm-service"
    return body


@pytest.mark.parametrize("kwargs", BAD_BODIES)
def test_bad_pull_requests_are_400(api, fake, kwargs):
    assert_envelope(api.post("/api/models/pull", **kwargs), 400)
    assert pull_calls(fake) == 0


@pytest.mark.parametrize("kwargs", BAD_BODIES)
def test_bad_delete_requests_are_400(api, fake, kwargs):
    assert_envelope(api.delete("/api/models/delete", **kwargs), 400)
    assert fake.observations()["requests"].get("DELETE /api/delete", 0) == 0


def test_more_bad_requests_are_400(api, fake):
    bad_stream = api.post("/api/models/pull", json={"model": SMALL, "stream": "yes"})
    assert assert_envelope(bad_stream, 400)["field"] == "stream"
    assert assert_envelope(api.delete("/api/models/delete"), 400)["field"] == "model"
    invalid_query = api.delete("/api/models/delete", params={"model": "bad name"})
    assert assert_envelope(invalid_query, 400)["type"] == "invalid_model_name"
    assert pull_calls(fake) == 0


@pytest.mark.parametrize("method", ["get", "delete"])
def test_an_unknown_pull_job_is_404(api, method):
    response = getattr(api, method)("/api/models/pulls/" + "f" * 300)
    assert assert_envelope(response, 404)["type"] == "pull_not_found"
