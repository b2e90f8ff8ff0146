"""What a router or an endpoint picker reads from each node: the three node-wide gauges on both
ports' ``/metrics`` (present at 0 when idle, live while requests run and wait) and the model list
on the proxy port's ``/v1/models`` (Ollama's own, passed through), read with the OpenAI client."""

from __future__ import annotations

import threading

import openai
import requests
from prometheus_client.parser import text_string_to_metric_families

PICKER_GAUGES = (
    "llm_service_num_requests_waiting",
    "llm_service_num_requests_running",
    "llm_service_kv_cache_usage_perc",
)
MODEL = "llama3.2:1b"  # max_concurrency 1 in the integration limits


def _gauges(base_url: str) -> dict[str, float]:
    response = requests.get(base_url + "/metrics", timeout=5)
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    values = {}
    for name in PICKER_GAUGES:
        assert name in families, name
        (sample,) = families[name].samples  # one unlabelled series per node
        assert sample.labels == {}
        values[name] = sample.value
    return values


def test_picker_gauges_are_zero_when_idle_on_both_ports(service):
    for base in (service.proxy, service.management):
        assert _gauges(base) == dict.fromkeys(PICKER_GAUGES, 0.0)


def test_picker_gauges_follow_running_and_waiting_requests(service, emulator):
    # Each answer takes about 1.5 s: long enough to scrape while one runs and one waits.
    emulator.set_model(MODEL, tokens=3, tokens_per_second=100, ttft_seconds=1.5)
    statuses: list[int] = []

    def generate() -> None:
        response = requests.post(
            service.proxy + "/api/generate",
            json={"model": MODEL, "prompt": "x", "stream": False},
            timeout=30,
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for thread in threads:
        thread.start()

    def one_running_one_waiting() -> bool:
        totals = service.totals()
        return (totals["in_flight"], totals["queued"]) == (1, 1)

    service.wait_for(one_running_one_waiting)
    for base in (service.proxy, service.management):
        assert _gauges(base) == {
            "llm_service_num_requests_waiting": 1.0,
            "llm_service_num_requests_running": 1.0,
            # One of the model's one slot is in use: the node is full for this model.
            "llm_service_kv_cache_usage_perc": 1.0,
        }
    for thread in threads:
        thread.join(30)
    assert statuses == [200, 200]
    assert _gauges(service.proxy) == dict.fromkeys(PICKER_GAUGES, 0.0)


def test_kv_cache_usage_is_the_share_of_the_busy_models_slots(service, emulator):
    # gemma3:4b has 4 slots: one running request uses a quarter of them.
    emulator.set_model("gemma3:4b", tokens=3, tokens_per_second=100, ttft_seconds=1.5)
    done = threading.Event()

    def generate() -> None:
        requests.post(
            service.proxy + "/api/generate",
            json={"model": "gemma3:4b", "prompt": "x", "stream": False},
            timeout=30,
        )
        done.set()

    thread = threading.Thread(target=generate)
    thread.start()
    service.wait_for(lambda: service.totals()["in_flight"] == 1)
    assert _gauges(service.proxy)["llm_service_kv_cache_usage_perc"] == 0.25
    thread.join(30)
    assert done.is_set()


def test_openai_client_lists_the_installed_models_through_the_proxy(service, emulator):
    direct = openai.OpenAI(base_url=emulator.url + "/v1", api_key="unused")
    proxied = openai.OpenAI(base_url=service.proxy + "/v1", api_key="unused", max_retries=0)
    want = sorted(m.id for m in direct.models.list())
    got = proxied.models.list()
    assert sorted(m.id for m in got) == want
    assert MODEL in want and "gemma3:4b" in want
    assert all(m.object == "model" and m.owned_by for m in got)
    one = proxied.models.retrieve(MODEL)
    assert one.id == MODEL
    # The proxy's list is Ollama's own: every name /api/tags reports, nothing added.
    tags = requests.get(service.proxy + "/api/tags", timeout=5).json()["models"]
    assert sorted(m["name"] for m in tags) == want
    try:
        proxied.models.retrieve("no-such-model")
    except openai.NotFoundError as exc:
        assert exc.status_code == 404
    else:
        raise AssertionError("an unknown model must be 404")
