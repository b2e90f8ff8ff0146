"""The endpoint-picker gauges from a limiter snapshot (docs/operations.md#several-nodes)."""

from __future__ import annotations

from management_api import names
from management_api.metrics import kv_cache_usage, picker_metrics
from management_api.proxy.limiter import Limiter
from management_api.proxy.limits_config import parse_limits


def _snapshot(models: list[tuple[int, int, int]], cap: int = 0) -> dict:
    """models: (max_concurrency, in_flight, queued) per model."""
    return {
        "global": {"max_concurrency": cap},
        "totals": {"in_flight": sum(m[1] for m in models), "queued": sum(m[2] for m in models)},
        "models": [
            {"limits": {"max_concurrency": c}, "in_flight": r, "queued": q} for c, r, q in models
        ],
    }


def test_idle_node_reads_zero_everywhere():
    assert kv_cache_usage(_snapshot([(2, 0, 0), (8, 0, 0)])) == 0.0
    gauges = {f.name: f.samples[0].value for f in picker_metrics(_snapshot([]))}
    assert gauges == {
        "llm_service_num_requests_waiting": 0,
        "llm_service_num_requests_running": 0,
        "llm_service_kv_cache_usage_perc": 0.0,
    }


def test_only_busy_models_count_their_slots():
    # 1 of 2 slots of the busy model; the idle 8-slot model holds no sequences.
    assert kv_cache_usage(_snapshot([(2, 1, 0), (8, 0, 0)])) == 0.5
    # A model with a queue is full; two busy models: 3 running of 2 + 4 slots.
    assert kv_cache_usage(_snapshot([(2, 2, 5), (4, 1, 0)])) == 0.5


def test_a_global_cap_is_the_node_wide_slot_count_and_the_value_never_exceeds_one():
    assert kv_cache_usage(_snapshot([(2, 1, 0), (4, 2, 0)], cap=4)) == 0.75
    # Lowering the cap while requests run can leave more running than slots for a moment.
    assert kv_cache_usage(_snapshot([(4, 4, 0)], cap=2)) == 1.0


def test_gauges_read_a_real_limiter_snapshot():
    config = parse_limits("[defaults]\nmax_concurrency = 2\nmax_queue = 4\n")
    limiter = Limiter(config, normalize=names.normalize)

    def gauges() -> dict[str, float]:
        return {f.name: f.samples[0].value for f in picker_metrics(limiter.snapshot())}

    assert set(gauges().values()) == {0}
    first = limiter.acquire("llama3.2:1b")
    assert gauges()["llm_service_kv_cache_usage_perc"] == 0.5
    second = limiter.acquire("llama3.2:1b")
    waiter = limiter.submit("llama3.2:1b")  # no room: queued
    assert gauges() == {
        "llm_service_num_requests_waiting": 1,
        "llm_service_num_requests_running": 2,
        "llm_service_kv_cache_usage_perc": 1.0,
    }
    first.release()
    assert waiter.slot is not None  # the freed slot went to the waiter
    second.release()
    waiter.slot.release()
    assert set(gauges().values()) == {0}
