"""Schemathesis over openapi.yaml against the real service under gunicorn.

* Fuzzing, with the emulator behind the service: for every operation but the pass-through ones
  (Ollama's own behaviour, tested elsewhere), generated requests must get no 5xx (the one
  exception: the documented 501 of a hard session reset, as no supervisord runs here).
* Sweeps, one well-formed request per operation, sent in parallel: with Ollama down (nothing
  listens at ``OLLAMA_URL``), where the documented 502/503/504 answers are expected and only a
  500 is a bug (each call waits out the upstream retries, ~1.5 s, too slow to fuzz); and with
  ``LLM_AUTH_MODE=all``, without a key (401) and with a user key on mutations (403).
* The 429 of admission, which one request at a time never meets, provoked once per protocol.

Everywhere, every response must have a documented status and content type, a body that matches
its schema and the documented headers (``X-Request-ID`` always, ``Retry-After`` on 429/503,
``WWW-Authenticate`` on 401). A fixed seed, no example database and a bounded example count
make every run the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import assume
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from management_api.access.auth import is_mutation
from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ROOT, ServiceProcess, free_port

SPEC_PATH = ROOT / "management_api" / "openapi.yaml"
PASSTHROUGH_TAGS = ["ollama-passthrough", "openai-passthrough"]
SEED = 20261108
MAX_EXAMPLES = 25
REQUEST_TIMEOUT_SECONDS = 30
# gunicorn answers 414 (plain text, before the app runs) to a request line over 4094 bytes;
# a long non-ASCII query value percent-encodes to that size. Not the service's contract.
MAX_REQUEST_LINE_BYTES = 4094

# Random strings are rarely installed models; half the time use names the emulator knows
# (installed, in its registry, spelt differently, embedding-only), so generation, pull, delete
# and reset get past validation and do real work.
MODEL_NAMES = [
    "llama3.2:1b",
    "LLAMA3.2:1B",
    "llama3.2",
    "gemma3:4b",
    "nomic-embed-text",
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    "all-minilm",
    "phi3:mini",
]
MODEL_BINDING = {"dictionary": "models", "probability": 0.5}
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": REQUEST_TIMEOUT_SECONDS,
        "dictionaries": {"models": {"values": MODEL_NAMES}},
        "parameters": {
            "path.model": MODEL_BINDING,
            "query.model": MODEL_BINDING,
            "body.model": MODEL_BINDING,
            "body.name": MODEL_BINDING,
        },
    }
)
full_schema = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)
schema = full_schema.exclude(tag=PASSTHROUGH_TAGS)
# Run serially, in `make test`'s pass of its own: every item of ``@schema.parametrize()`` has
# the same node id, so pytest-xdist ran 8 of the 31 operations and said nothing.
pytestmark = pytest.mark.fuzz
# Requests sent per operation by the fuzzing, checked by test_fuzzing_reached_every_operation.
FUZZED: Counter[str] = Counter()

CONFORMANCE_CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

LIMITS = """
[defaults]
max_concurrency = 2
max_queue = 4
max_wait_seconds = 5
first_byte_timeout_seconds = 10
idle_timeout_seconds = 5
"""

# One well-formed request per operation (what a caller would send), for the sweeps.
SWEEP_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/health", {}),
    ("GET", "/health/live", {}),
    ("GET", "/health/ready", {}),
    ("GET", "/api/models", {}),
    ("GET", "/api/models/loaded", {}),
    ("DELETE", "/api/models/delete", {"body": {"model": "llama3.2:1b"}}),
    ("DELETE", "/api/models/delete", {"query": {"model": "llama3.2:1b"}}),
    ("POST", "/api/models/pull", {"body": {"model": "llama3.2:1b", "stream": False}}),
    ("GET", "/api/models/pulls", {}),
    ("GET", "/api/models/pulls/{job_id}", {"path_parameters": {"job_id": "0123456789abcdef"}}),
    ("DELETE", "/api/models/pulls/{job_id}", {"path_parameters": {"job_id": "0123456789abcdef"}}),
    ("POST", "/api/cache/clear", {}),
    ("POST", "/api/gpu/recover", {}),
    ("POST", "/api/session/reset", {}),
    ("POST", "/api/session/reset", {"body": {"hard": True}}),
    ("GET", "/api/limits", {}),
    ("GET", "/api/usage", {"query": {"group_by": "caller,model", "since": "0"}}),
    ("POST", "/api/limits/reload", {}),
    ("GET", "/api/cache", {}),
    ("DELETE", "/api/cache", {}),
    ("GET", "/api/stats", {}),
    ("GET", "/api/stats/history", {"query": {"seconds": 60}}),
    ("GET", "/api/info", {}),
    ("GET", "/metrics", {}),
    ("GET", "/openapi.json", {}),
    ("POST", "/v1/llm/{model}", {"path_parameters": {"model": "llama3.2:1b"},
                                 "body": {"prompt": "hi"}}),
    ("POST", "/v1/llm/{model}/stream", {"path_parameters": {"model": "llama3.2:1b"},
                                        "body": {"prompt": "hi"}}),
    ("GET", "/v1/status", {}),
    ("POST", "/v1/infer", {"body": {"task": "recovery_plan", "input": "disk full"}}),
    ("GET", "/v1/tasks", {}),
    ("POST", "/api/tasks/reload", {}),
    ("GET", "/api/status", {}),
    ("GET", "/ui", {}),
    ("GET", "/ui/", {}),
    ("GET", "/ui/{name}", {"path_parameters": {"name": "app.js"}}),
    ("POST", "/api/jobs", {"body": {"route": "/api/embed",
                                    "body": {"model": "llama3.2:1b", "input": "hi"}}}),
    ("GET", "/api/jobs", {"query": {"status": "queued"}}),
    ("GET", "/api/jobs/{job_id}", {"path_parameters": {"job_id": "job_0123456789abcdef"}}),
    ("DELETE", "/api/jobs/{job_id}", {"path_parameters": {"job_id": "job_0123456789abcdef"}}),
    ("POST", "/v1/files", {"body": {"purpose": "batch", "file": b'{"custom_id": "a"}\n'},
                           "media_type": "multipart/form-data"}),
    ("GET", "/v1/files/{file_id}", {"path_parameters": {"file_id": "file-0123456789abcdef"}}),
    ("GET", "/v1/files/{file_id}/content", {"path_parameters": {"file_id": "file-0123"}}),
    ("POST", "/v1/batches", {"body": {"input_file_id": "file-0123", "completion_window": "24h",
                                      "endpoint": "/v1/embeddings"}}),
    ("GET", "/v1/batches", {"query": {"limit": 5}}),
    ("GET", "/v1/batches/{batch_id}", {"path_parameters": {"batch_id": "batch_0123"}}),
    ("POST", "/v1/batches/{batch_id}/cancel", {"path_parameters": {"batch_id": "batch_0123"}}),
]  # fmt: skip
# Answered without a key in every mode (the status page's files carry no data).
PUBLIC_STATUSES = {"GET /ui": 308, "GET /ui/": 200, "GET /ui/{name}": 200}


# Operations whose handler reads the body (the others answer 413 only for a chunked one).
READS_ITS_BODY = {
    ("DELETE", "/api/models/delete"),
    ("POST", "/api/models/pull"),
    ("POST", "/api/cache/clear"),
    ("POST", "/api/gpu/recover"),
    ("POST", "/api/session/reset"),
    ("POST", "/v1/llm/{model}"),
    ("POST", "/v1/llm/{model}/stream"),
    ("POST", "/v1/infer"),
    ("POST", "/api/jobs"),
    ("POST", "/v1/files"),
    ("POST", "/v1/batches"),
}


def _service_env(state: Path, ollama_url: str) -> dict[str, str]:
    limits = state / "limits.toml"
    limits.write_text(LIMITS)
    (state / "ollama.log").write_text("")
    (state / "models").mkdir()
    return {
        "OLLAMA_URL": ollama_url,
        "LLM_MODEL": "llama3.2:1b",
        "LLM_LIMITS_FILE": str(limits),
        "LLM_OLLAMA_LOG_FILE": str(state / "ollama.log"),
        "LLM_MODELS_DIR": str(state / "models"),
        "LLM_PULL_MIN_FREE_GB": "0",
        "LLM_PULL_RETRIES": "1",
        "LLM_STATS_INTERVAL": "0.5",
        "LLM_MODEL_CACHE_TTL": "1",
        "LLM_UPSTREAM_GRACE_SECONDS": "0.2",
        "LLM_CACHE_MAX_MB": "8",  # fuzzed inference requests pass through the response cache
        # No supervisord here: a hard reset must answer 501 at once.
        "LLM_SUPERVISOR_SOCKET": str(state / "no-supervisor.sock"),
    }


@dataclass
class UpTarget:
    service: ServiceProcess
    emulator: FakeOllama
    limits_file: Path

    @property
    def url(self) -> str:
        return self.service.management_url

    def set_limits(self, text: str) -> None:
        self.limits_file.write_text(text)
        response = requests.post(self.url + "/api/limits/reload", timeout=5)
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def up(tmp_path_factory) -> Iterator[UpTarget]:
    with FakeOllama(num_parallel=8, load_seconds=0.01, tokens=4) as fake:
        state = tmp_path_factory.mktemp("fuzz-up")
        with ServiceProcess(env=_service_env(state, fake.url)) as service:
            yield UpTarget(service, fake, state / "limits.toml")
            service.assert_alive()
            _cancel_pulls(service)


@pytest.fixture(scope="module")
def down_service(tmp_path_factory) -> Iterator[ServiceProcess]:
    env = _service_env(tmp_path_factory.mktemp("fuzz-down"), f"http://127.0.0.1:{free_port()}")
    env["LLM_MAX_BODY_MB"] = "1"  # so that the 413s are cheap to provoke
    with ServiceProcess(env=env) as service:
        yield service
        service.assert_alive()
        _cancel_pulls(service)


USER_KEY = "user-key-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_service(tmp_path_factory) -> Iterator[ServiceProcess]:
    env = _service_env(tmp_path_factory.mktemp("fuzz-auth"), f"http://127.0.0.1:{free_port()}")
    env["LLM_AUTH_MODE"] = "all"
    env["LLM_API_KEYS"] = f"ops:admin-key-0123456789abcdef:admin,app:{USER_KEY}:user"
    with ServiceProcess(env=env) as service:
        yield service
        service.assert_alive()


def _cancel_pulls(service: ServiceProcess) -> None:
    """Leave no pull running behind (a job outlives the request that started it)."""
    pulls = requests.get(service.management_url + "/api/models/pulls", timeout=5).json()["pulls"]
    for job in pulls:
        if job["state"] in ("queued", "running", "retrying"):
            requests.delete(service.management_url + f"/api/models/pulls/{job['id']}", timeout=5)


def no_server_error(ctx, response, case) -> None:
    """No 5xx, except the 501 a hard reset answers where no supervisord runs (as here), and
    the 504 of a task request whose caller chose a deadline too short for any answer."""
    if response.status_code == 504 and case.operation.label == "POST /v1/infer":
        body = response.json()
        assert body["type"] == "deadline_exceeded" and case.body.get("deadline_ms"), body
        return
    if response.status_code == 501 and case.operation.label == "POST /api/session/reset":
        body = response.json()
        assert body["type"] == "not_implemented" and case.body.get("hard") is True, body
        return
    not_a_server_error(ctx, response, case)


def no_internal_error(ctx, response, case) -> None:
    """With Ollama down, 502/503/504 are documented answers; a 500 is still a bug."""
    if response.status_code == 500:
        raise AssertionError(f"500 Internal Server Error on {case.operation.label}")


def request_line_fits(case, base_url: str) -> bool:
    kwargs = case.as_transport_kwargs(base_url=base_url)
    url = requests.Request("GET", kwargs["url"], params=kwargs.get("params")).prepare().path_url
    return len(f"{case.method} {url} HTTP/1.1") <= MAX_REQUEST_LINE_BYTES


@schema.parametrize()
def test_fuzz_with_ollama_up(case, up):
    assume(request_line_fits(case, up.url))
    FUZZED[case.operation.label] += 1
    case.call_and_validate(
        base_url=up.url,
        checks=[*CONFORMANCE_CHECKS],
        additional_checks=[no_server_error],
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def test_every_operation_is_swept():
    swept = {f"{method} {path}" for method, path, _ in SWEEP_REQUESTS}
    operations = {result.ok().label for result in schema.get_all_operations()}
    assert operations == swept


def _sweep(
    base_url: str,
    entries: list[tuple[str, str, dict[str, Any]]],
    *,
    headers: dict[str, str] | None = None,
    extra_checks: list[Any] | None = None,
) -> dict[str, int]:
    """One request per entry, in parallel, each held to the spec; returns the status per
    operation (``"GET /api/models"``; the last one where an operation is sent twice)."""

    def run(entry: tuple[str, str, dict[str, Any]]) -> tuple[str, int, str | None]:
        method, path, inputs = entry
        case = schema[path][method].Case(**inputs)
        try:
            response = case.call_and_validate(
                base_url=base_url,
                headers=headers,
                checks=[*CONFORMANCE_CHECKS],
                additional_checks=extra_checks or [],
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except FailureGroup as exc:
            return f"{method} {path} {inputs}", -1, str(exc)
        return f"{method} {path}", response.status_code, None

    with ThreadPoolExecutor(max_workers=len(entries)) as pool:
        results = list(pool.map(run, entries))
    failures = [f"{label}:\n{error}" for label, _, error in results if error]
    assert not failures, "\n\n".join(failures)
    return {label: status for label, status, _ in results}


def test_contract_holds_with_ollama_down(down_service):
    statuses = _sweep(down_service.management_url, SWEEP_REQUESTS, extra_checks=[no_internal_error])
    # The sweep really saw Ollama down, and the answers that say so.
    assert statuses["GET /health"] == 503
    assert statuses["GET /health/ready"] == 503
    assert statuses["GET /api/models"] == 503
    assert statuses["POST /api/cache/clear"] == 503
    assert statuses["POST /v1/llm/{model}"] == 503
    assert statuses["GET /v1/status"] == 503
    assert statuses["GET /api/models/loaded"] == 200


def test_oversized_bodies_get_the_documented_413(down_service):
    padding = "x" * (1024 * 1024 + 1)
    oversized = [
        (method, path, {**inputs, "body": {**inputs.get("body", {}), "padding": padding}})
        for method, path, inputs in SWEEP_REQUESTS
        if (method, path) in READS_ITS_BODY
    ]
    assert {(method, path) for method, path, _ in oversized} == READS_ITS_BODY
    statuses = _sweep(down_service.management_url, oversized)
    assert set(statuses.values()) == {413}, statuses


def test_contract_holds_for_refused_keys(auth_service):
    """LLM_AUTH_MODE=all: no key is a 401 everywhere but the health probes, a user key on a
    mutation a 403; both as documented (WWW-Authenticate on the 401s)."""
    statuses = _sweep(auth_service.management_url, SWEEP_REQUESTS)
    for label, status in statuses.items():
        expected = 200 if label.split()[1].startswith("/health") else 401
        expected = PUBLIC_STATUSES.get(label, expected)
        if label in ("GET /health", "GET /health/ready"):
            expected = 503  # nothing listens at OLLAMA_URL here
        assert status == expected, label
    mutations = [entry for entry in SWEEP_REQUESTS if is_mutation(entry[0], entry[1])]
    assert len(mutations) == 11  # POST /api/tasks/reload and DELETE /api/cache among them
    statuses = _sweep(auth_service.management_url, mutations, headers={"X-API-Key": USER_KEY})
    assert set(statuses.values()) == {403}, statuses


def _in_flight(url: str, model: str) -> int:
    models = requests.get(url + "/api/limits", timeout=5).json()["models"]
    return next((m["in_flight"] for m in models if m["model"] == model), 0)


def test_admission_429s_match_the_spec(up):
    """Hold the model's only slot with a stream, then each protocol's inference route must
    answer the documented 429 (native, OpenAI and Hermes envelopes), Retry-After included."""
    up.emulator.reset()
    model = "llama3.2:1b"
    up.emulator.set_model(model, tokens=40, tokens_per_second=10, ttft_seconds=0)
    up.set_limits(LIMITS.replace("max_concurrency = 2", "max_concurrency = 1").replace(
        "max_queue = 4", "max_queue = 0"))  # fmt: skip
    holder = requests.post(
        up.url + "/api/generate", json={"model": model, "prompt": "hold"}, stream=True, timeout=30
    )
    try:
        assert holder.status_code == 200
        assert _in_flight(up.url, model) == 1
        attempts = [
            ("/api/generate", {}, {"model": model, "prompt": "over"}),
            ("/api/chat", {}, {"model": model, "messages": [{"role": "user", "content": "x"}]}),
            ("/v1/chat/completions", {}, {"model": model,
                                          "messages": [{"role": "user", "content": "x"}]}),
            ("/v1/llm/{model}", {"model": model}, {"prompt": "over"}),
            ("/v1/llm/{model}/stream", {"model": model}, {"prompt": "over"}),
        ]  # fmt: skip
        for path, path_parameters, body in attempts:
            case = full_schema[path]["POST"].Case(path_parameters=path_parameters, body=body)
            response = case.call_and_validate(
                base_url=up.url, checks=[*CONFORMANCE_CHECKS], timeout=REQUEST_TIMEOUT_SECONDS
            )
            assert response.status_code == 429, (path, response.text)
            retry_after = int(response.headers["retry-after"][0])  # lower-cased, listed
            assert retry_after >= 1
            # the same number in the body, for n8n, whose error item keeps no headers
            assert response.json()["retry_after_seconds"] == retry_after, (path, response.text)
    finally:
        holder.close()  # the service sees the client leave and gives the slot back
        up.set_limits(LIMITS)
        up.emulator.reset()


def test_fuzzing_reached_every_operation(request, capsys):
    """Whatever ran the items above, every operation was fuzzed, each with max-examples at least.

    Last in the module, so it sees the counts of every fuzzing item that ran before it in this
    process (pytest-xdist's ``--dist loadfile`` keeps a module in one process too).
    """
    selected = [
        i for i in request.session.items if i.originalname == test_fuzz_with_ollama_up.__name__
    ]
    if not selected:
        pytest.skip("the fuzzing items were deselected")
    operations = {result.ok().label for result in schema.get_all_operations()}
    # Every operation of openapi.yaml but the pass-through ones, each one item.
    assert operations == {f"{method} {path}" for method, path, _ in SWEEP_REQUESTS}
    assert len(selected) == len(operations)
    with capsys.disabled():  # the counts belong in the run's output, not only on failure
        print(f"\nfuzzed {len(FUZZED)} operations, {sum(FUZZED.values())} requests: {dict(FUZZED)}")
    assert set(FUZZED) == operations, sorted(operations - set(FUZZED))
    # max-examples is what the generation phase aims at; the coverage phase adds more (with the
    # seed above: 1,493 requests, 30 to 98 per operation).
    starved = {label: n for label, n in FUZZED.items() if n < MAX_EXAMPLES}
    assert not starved, starved
