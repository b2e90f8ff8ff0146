"""Prometheus metrics (``prometheus_client``, one process, no multiprocess mode).

Event-driven series (queue waits, request durations, time to first byte, tokens) are fed by the
limiter's and the gateway's observer hooks. State series (in-flight, queued, limits, telemetry,
Ollama up, pull jobs) are read from the services at scrape time by `StateCollector`, so they are
never stale and cost nothing between scrapes. Label values are bounded: a model label is a name
Ollama knows (installed, or named in the limits or tasks file), in canonical form; any other
name counts under ``other``. Routes come from a fixed list.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from management_api import names
from management_api.proxy.inference import INFERENCE_ROUTES, MUTATION_ROUTES
from management_api.proxy.limiter import WAIT_BUCKETS
from management_api.usage.recorder import CallerLabels, line_usage

PREFIX = "llm_service"
KNOWN_ROUTES = frozenset(INFERENCE_ROUTES) | MUTATION_ROUTES | {
    "/api/tags", "/api/ps", "/api/show", "/api/version", "/v1/models",
}  # fmt: skip
OTHER_MODEL = "other"
KnownModels = Callable[[], Container[str]]
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
MAX_HEADER_CALLERS = 32
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def model_label(model: str, known: KnownModels | None) -> str:
    """The canonical name when Ollama knows it, else ``other`` (no ``known``: the name)."""
    if known is None:
        return model
    try:
        key = names.normalize(model)
    except ValueError:
        return OTHER_MODEL
    return key if key in known() else OTHER_MODEL


def _route_label(path: str) -> str:
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/v1/llm/"):
        return "/v1/llm"
    return "other"


class Metrics:
    """The registry plus the observer hooks the limiter and the gateway call."""

    def __init__(self, known_models: KnownModels | None = None) -> None:
        # Set after construction when the catalog and config files exist (see services.py).
        self.known_models = known_models
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds", "Time admitted requests waited for a slot",
            ["model"], buckets=WAIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            f"{PREFIX}_requests", "Proxied requests by route, status class and outcome",
            ["route", "code", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Proxied request duration, queue wait included",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.ttfb = Histogram(
            f"{PREFIX}_time_to_first_byte_seconds", "From arrival to Ollama's first byte",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.cache_requests = Counter(
            f"{PREFIX}_cache_requests", "Inference requests by what the response cache did",
            ["route", "result"], registry=self.registry,
        )  # fmt: skip
        self.swaps = Counter(
            f"{PREFIX}_swaps", "Admissions that made Ollama unload a model to load this one",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.held = Histogram(
            f"{PREFIX}_held_seconds", "Time the affinity scheduler held a request back",
            ["model"], buckets=WAIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            f"{PREFIX}_generated_tokens", "Tokens generated (eval_count of final lines)",
            ["model"], registry=self.registry,
        )  # fmt: skip

        # Per caller: a key's name, ``anonymous`` and the first 32 X-LLM-Caller names; the rest
        # count as ``other`` (usage/recorder.py CallerLabels).
        self.caller_label = CallerLabels(MAX_HEADER_CALLERS)
        self.caller_tokens = Counter(
            f"{PREFIX}_tokens", "Tokens by caller, model and kind (prompt or completion)",
            ["caller", "model", "kind"], registry=self.registry,
        )  # fmt: skip
        self.caller_gpu = Counter(
            f"{PREFIX}_gpu_seconds", "GPU time by caller and model (Ollama's prompt evaluation + "
            "generation; on OpenAI routes the time the slot was held)",
            ["caller", "model"], registry=self.registry,
        )  # fmt: skip

        # /v1/infer (tasks/orchestrator.py's TaskObserver); labels come from the tasks file.
        self.infer_requests = Counter(
            f"{PREFIX}_infer_requests", "Task requests by task, strategy and outcome",
            ["task", "strategy", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.infer_duration = Histogram(
            f"{PREFIX}_infer_duration_seconds", "Task request duration",
            ["task", "strategy"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.branches = Counter(
            f"{PREFIX}_branch", "Task branches by model, role and outcome",
            ["task", "model", "role", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.hedges = Counter(
            f"{PREFIX}_hedges", "Hedged branches of fastest tasks by outcome",
            ["task", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.agreement = Histogram(
            f"{PREFIX}_agreement", "Share of answers that agreed with the chosen one",
            ["task"], buckets=(0.2, 0.34, 0.5, 0.67, 0.75, 0.9, 1.0), registry=self.registry,
        )  # fmt: skip

    def model_label(self, model: str) -> str:
        return model_label(model, self.known_models)

    # TaskObserver
    def on_infer_done(self, task: str, strategy: str, outcome: str, seconds: float) -> None:
        self.infer_requests.labels(task, strategy, outcome).inc()
        self.infer_duration.labels(task, strategy).observe(seconds)

    def on_branch_done(self, task: str, model: str, role: str, outcome: str) -> None:
        self.branches.labels(task, self.model_label(model), role, outcome).inc()

    def on_hedge(self, task: str, outcome: str) -> None:
        self.hedges.labels(task, outcome).inc()

    def on_agreement(self, task: str, value: float) -> None:
        self.agreement.labels(task).observe(value)

    # LimiterObserver
    def on_admit(self, model: str, wait_s: float) -> None:
        self.queue_wait.labels(self.model_label(model)).observe(wait_s)

    # CacheObserver (cache/service.py); routes are inference routes only: a bounded label
    def on_cache_result(self, route: str, result: str) -> None:
        self.cache_requests.labels(route, result.lower()).inc()  # hit, miss, bypass, coalesced

    def on_held(self, model: str, held_s: float) -> None:
        self.held.labels(self.model_label(model)).observe(held_s)

    def on_swap(self, model: str, evicted: tuple[str, ...]) -> None:
        self.swaps.labels(self.model_label(model)).inc()

    # RequestObserver
    def on_request_done(self, record: dict[str, Any]) -> None:
        route = _route_label(record.get("path", ""))
        status = int(record.get("status") or 0)
        self.requests.labels(route, f"{status // 100}xx", record.get("outcome", "")).inc()
        self.duration.labels(route).observe(record.get("duration_ms", 0) / 1000)
        if record.get("ttfb_ms") is not None:
            self.ttfb.labels(route).observe(record["ttfb_ms"] / 1000)
        model_key = record.get("model_key")
        if model_key and isinstance(record.get("eval_count"), int):
            self.tokens.labels(self.model_label(model_key)).inc(record["eval_count"])
        if record.get("model") is not None and record.get("path") in INFERENCE_ROUTES:
            usage = line_usage(record)
            caller = self.caller_label(record)
            model = self.model_label(model_key or str(record["model"]))
            if usage[1]:
                self.caller_tokens.labels(caller, model, "prompt").inc(usage[1])
            if usage[2]:
                self.caller_tokens.labels(caller, model, "completion").inc(usage[2])
            if usage[3]:
                self.caller_gpu.labels(caller, model).inc(usage[3])

    def render(self) -> bytes:
        return generate_latest(self.registry)


def kv_cache_usage(snapshot: dict[str, Any]) -> float:
    """An approximation of KV-cache use, 0-1, from the limiter's counters alone.

    Ollama allocates each loaded model's KV cache as ``OLLAMA_NUM_PARALLEL`` fixed slots, and our
    per-model ``max_concurrency`` is the number of those slots a node lets run; so the share of
    the cache holding live sequences is about running / slots. Slots are the global cap when one
    is set, else the sum of ``max_concurrency`` over the models that hold or wait for a slot now
    (a model nobody asks for has no live sequences). It says nothing about context lengths, so a
    node running one long prompt reads like one running a short one.
    """
    cap = snapshot.get("global", {}).get("max_concurrency", 0)
    running = snapshot.get("totals", {}).get("in_flight", 0)
    if cap:
        slots = cap
    else:
        slots = sum(
            entry["limits"]["max_concurrency"]
            for entry in snapshot.get("models", [])
            if entry["in_flight"] or entry["queued"]
        )
    if not slots:
        return 0.0
    return min(1.0, running / slots)


def picker_metrics(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """The three gauges an endpoint picker (Gateway API Inference Extension) scrapes: node-wide,
    unlabelled, always present (0 when idle), read from memory so a scrape never waits on
    Ollama."""
    totals = snapshot.get("totals", {})
    for name, text, value in (
        ("num_requests_waiting", "Requests queued for a slot, all models", totals.get("queued", 0)),
        ("num_requests_running", "Requests holding a slot, all models", totals.get("in_flight", 0)),
        ("kv_cache_usage_perc", "Approximate KV-cache use 0-1: running / admission slots "
         "of the busy models (docs/operations.md#several-nodes)", kv_cache_usage(snapshot)),
    ):  # fmt: skip
        family = GaugeMetricFamily(f"{PREFIX}_{name}", text)
        family.add_metric([], value)
        yield family


class StateCollector(Collector):
    """Reads current state at scrape time."""

    def __init__(
        self,
        *,
        limiter_snapshot: Callable[[], dict[str, Any]],
        telemetry: Callable[[], Any],
        ollama_up: Callable[[], bool],
        pulls: Callable[[], dict[str, int]] | None = None,
        breakers: Callable[[], dict[str, dict[str, Any]]] | None = None,
        cache: Callable[[], tuple[int, int]] | None = None,
        known_models: KnownModels | None = None,
    ) -> None:
        self._known_models = known_models
        self._limiter_snapshot = limiter_snapshot
        self._telemetry = telemetry
        self._ollama_up = ollama_up
        self.pulls = pulls
        self.breakers = breakers
        self.cache = cache

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing is collected at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._limiter_metrics()
        yield from self._telemetry_metrics()
        up = GaugeMetricFamily(f"{PREFIX}_ollama_up", "1 when Ollama answers, else 0")
        up.add_metric([], 1.0 if self._ollama_up() else 0.0)
        yield up
        if self.pulls is not None:
            jobs = GaugeMetricFamily(f"{PREFIX}_pull_jobs", "Pull jobs by state", labels=["state"])
            for state, count in self.pulls().items():
                jobs.add_metric([state], count)
            yield jobs
        if self.breakers is not None:
            breakers = GaugeMetricFamily(
                f"{PREFIX}_breaker_state",
                "Task breaker per model: 0 closed, 1 half-open, 2 open",
                labels=["model"],
            )
            for model, entry in self.breakers().items():
                breakers.add_metric([model], BREAKER_STATE_VALUES.get(entry["state"], 0))
            yield breakers
        if self.cache is not None:
            entries, size = self.cache()
            gauge = GaugeMetricFamily(f"{PREFIX}_cache_entries", "Answers in the response cache")
            gauge.add_metric([], entries)
            yield gauge
            gauge = GaugeMetricFamily(f"{PREFIX}_cache_bytes", "Bytes held by the response cache")
            gauge.add_metric([], size)
            yield gauge

    def _limiter_metrics(self) -> Iterator[Metric]:
        snapshot = self._limiter_snapshot()
        yield from picker_metrics(snapshot)
        gauges = {
            name: GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["model"])
            for name, text in (
                ("in_flight", "Requests running per model"),
                ("queued", "Requests waiting for a slot per model"),
                ("max_concurrency", "Effective concurrency limit per model"),
            )
        }
        admitted = CounterMetricFamily(
            f"{PREFIX}_admitted", "Requests admitted per model", labels=["model"]
        )
        rejected = CounterMetricFamily(
            f"{PREFIX}_rejected", "Requests refused per model and reason",
            labels=["model", "reason"],
        )  # fmt: skip
        other: dict[str, Any] = {"in_flight": 0, "queued": 0, "admitted": 0, "rejected": {}}
        for entry in snapshot.get("models", []):
            model = model_label(entry["model"], self._known_models)
            if model == OTHER_MODEL:  # summed into one row below
                for key in ("in_flight", "queued", "admitted"):
                    other[key] += entry[key]
                for reason, count in entry["rejected"].items():
                    other["rejected"][reason] = other["rejected"].get(reason, 0) + count
                continue
            gauges["in_flight"].add_metric([model], entry["in_flight"])
            gauges["queued"].add_metric([model], entry["queued"])
            gauges["max_concurrency"].add_metric([model], entry["limits"]["max_concurrency"])
            admitted.add_metric([model], entry["admitted"])
            for reason, count in entry["rejected"].items():
                rejected.add_metric([model, reason], count)
        if other["rejected"] or other["admitted"] or other["in_flight"] or other["queued"]:
            gauges["in_flight"].add_metric([OTHER_MODEL], other["in_flight"])
            gauges["queued"].add_metric([OTHER_MODEL], other["queued"])
            admitted.add_metric([OTHER_MODEL], other["admitted"])
            for reason, count in other["rejected"].items():
                rejected.add_metric([OTHER_MODEL, reason], count)
        yield from gauges.values()
        yield admitted
        yield rejected

    def _telemetry_metrics(self) -> Iterator[Metric]:
        snapshot = self._telemetry()
        if snapshot is None:
            return
        host, gpu = snapshot.host, snapshot.gpu
        values = (
            ("cpu_percent", "CPU use of the whole machine, percent", host.cpu.percent),
            ("memory_used_bytes", "Memory in use", host.memory.used_bytes),
            ("memory_total_bytes", "Memory installed", host.memory.total_bytes),
            ("swap_used_bytes", "Swap in use", host.swap.used_bytes),
            ("gpu_utilization_percent", "GPU load, percent", gpu.utilization_percent),
            ("gpu_memory_used_bytes", "GPU memory in use", gpu.memory_used_bytes),
            ("gpu_memory_total_bytes", "GPU memory (shared pool on Jetson)",
             gpu.memory_total_bytes),
            ("gpu_temperature_celsius", "GPU temperature", gpu.temperature_c),
            ("gpu_power_watts", "GPU power draw", gpu.power_w),
            ("gpu_frequency_hertz", "GPU clock",
             gpu.frequency_mhz * 1e6 if gpu.frequency_mhz is not None else None),
            ("process_resident_memory_bytes_api", "RSS of this API process", host.own_rss_bytes),
        )  # fmt: skip
        for name, text, value in values:
            if value is None:
                continue  # unknown is absent, never a fake zero
            family = GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["source"])
            family.add_metric([snapshot.gpu_source if name.startswith("gpu") else "host"], value)
            yield family
        if host.ollama is not None and host.ollama.rss_bytes is not None:
            ollama = GaugeMetricFamily(
                f"{PREFIX}_ollama_resident_memory_bytes", "RSS of the Ollama process"
            )
            ollama.add_metric([], host.ollama.rss_bytes)
            yield ollama
