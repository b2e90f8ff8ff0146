"""Issue 28, findings 1, 2, 3 and 7: every decision is taken on what Ollama will run.

Real gunicorn, the emulator (which reads paths and bodies as Ollama v0.20.5 does: a decoded
``?`` in the target starts a query, field names match case-insensitively) and raw HTTP where a
client library would tidy the request target up. "At Ollama" means what the emulator saw.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama
from tests.integration.test_proxy import MODEL, slow
from tests.service_harness import ServiceProcess

ADMIN = "gate-admin-key-0123456789"
USER = "gate-user-key-01234567890"
OTHER = "gate-other-key-0123456789"
CHAT_MODEL = "llama3.2:1b"
EMBED_MODEL = "nomic-embed-text"
LIMITS = """
[defaults]
max_concurrency = 1
max_queue = 2
max_wait_seconds = 30
first_byte_timeout_seconds = 10
idle_timeout_seconds = 5
"""


def raw_request(
    base_url: str,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request with the target sent byte for byte as given (no client-side tidying)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, target, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def at_once(base_url: str, target: str, body: dict, count: int = 4) -> list[int]:
    """`count` identical POSTs started together; their statuses."""
    raw = json.dumps(body).encode()
    barrier = threading.Barrier(count)

    def one(_: int) -> int:
        barrier.wait(5)
        return raw_request(base_url, "POST", target, raw)[0]

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def most_open_at_once(emulator: FakeOllama, path: str) -> int:
    """The most requests for `path` the emulator had open at the same time."""
    events = []
    for record in emulator.connections(path=path):
        events.append((record["opened_at"], 1))
        events.append((record["closed_at"] or float("inf"), -1))
    most = current = 0
    for _, step in sorted(events):
        current += step
        most = max(most, current)
    return most


# --- finding 1: the path, with auth off (the shared service: limit 1 for MODEL)

REFUSED_TARGETS = [
    ("/api/generate%3F", 400),
    ("/api/generate%3f", 400),
    ("/api/generate%23", 400),
    ("/api/generate%00", 400),
    ("/api/%2e%2e/api/generate", 400),
    ("/api/%2E%2E/api/generate", 400),
    ("/api/./generate", 400),
    ("/api/x/../generate", 400),
    ("//api/generate", 400),
    ("/api/generate/", 400),
    # Flask's own routing answers these before anything could be forwarded: no route takes a
    # newline, and doubled slashes inside the path are redirected to the clean path (judged
    # anew when the client follows).
    ("/api/generate%0A", 404),
    ("/api//generate", 308),
]


@pytest.mark.parametrize(("target", "refused_with"), REFUSED_TARGETS)
def test_a_target_ollama_reads_otherwise_is_refused_and_the_limit_holds(
    service, emulator, target, refused_with
):
    slow(emulator, MODEL, seconds=1)
    body = {"model": MODEL, "prompt": "hold", "stream": False}
    statuses = at_once(service.proxy, target, body)
    assert statuses == [refused_with] * 4, statuses
    assert emulator.observations()["max_in_flight"].get(MODEL, 0) <= 1
    assert emulator.connections(method="POST") == []  # nothing reached Ollama
    if refused_with == 400:
        status, raw = raw_request(service.proxy, "POST", target, json.dumps(body).encode())
        assert status == 400
        assert isinstance(json.loads(raw)["error"], str)  # Ollama's error shape


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api%2Fgenerate", {200, 429}),  # Go decodes %2F before routing: it is /api/generate
        ("/api/generate?", {200, 429}),  # a real (empty) query
        ("/API/generate", {404}),  # gin matches case-sensitively: no route on either side
    ],
)
def test_targets_both_sides_read_alike_get_the_same_treatment(service, emulator, target, expected):
    slow(emulator, MODEL, seconds=1)
    statuses = at_once(service.proxy, target, {"model": MODEL, "prompt": "hold", "stream": False})
    assert set(statuses) <= expected, statuses
    assert emulator.observations()["max_in_flight"].get(MODEL, 0) <= 1
    assert most_open_at_once(emulator, "/api/generate") <= 1


# --- findings 1, 2, 3, 7 with keys on (management mode) and the cache on


@pytest.fixture(scope="module")
def gated(emulator: FakeOllama, tmp_path_factory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("gate")
    (state / "limits.toml").write_text(LIMITS)
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(state / "limits.toml"),
        "LLM_CACHE_MAX_MB": "64",
        "LLM_CACHE_TTL_SECONDS": "600",
        "LLM_MODEL_CACHE_TTL": "30",
        "LLM_WORKER_THREADS": "128",
        "LLM_AUTH_MODE": "management",
        "LLM_API_KEYS": f"ops:{ADMIN}:admin,app:{USER}:user,other:{OTHER}:user",
    }
    with ServiceProcess(env=env) as process:
        yield process
        process.assert_alive()


@pytest.fixture
def gate(gated: ServiceProcess, emulator: FakeOllama) -> ServiceProcess:
    emulator.reset()
    emptied = requests.delete(
        gated.management_url + "/api/cache", headers={"X-API-Key": ADMIN}, timeout=5
    )
    assert emptied.status_code == 200, emptied.text
    return gated


def _installed(emulator: FakeOllama) -> set[str]:
    tags = requests.get(emulator.url + "/api/tags", timeout=5).json()
    return {m["name"] for m in tags["models"]}


def test_an_encoded_question_mark_does_not_get_past_a_key(gate, emulator):
    body = json.dumps({"model": "qwen3:0.6b"}).encode()
    assert raw_request(gate.proxy_url, "POST", "/api/pull", body)[0] == 401
    for target in ("/api/pull%3F", "/api/pull%3f", "/api/pull%23", "/api/pull%00"):
        status, raw = raw_request(gate.proxy_url, "POST", target, body)
        assert status == 400, (target, raw)
    assert emulator.connections(path="/api/pull") == []  # nothing was pulled

    installed = _installed(emulator)
    victim = next(iter(sorted(installed)))
    body = json.dumps({"model": victim}).encode()
    user = {"Authorization": f"Bearer {USER}"}
    assert raw_request(gate.proxy_url, "DELETE", "/api/delete", body, user)[0] == 403
    assert raw_request(gate.proxy_url, "DELETE", "/api/delete%3F", body, user)[0] == 400
    assert raw_request(gate.management_url, "DELETE", "/api/delete%3F", body, user)[0] == 400
    assert victim in _installed(emulator)


# --- finding 2: the body

CAPITALISED = [
    ("/api/generate", MODEL, {"Model": MODEL, "prompt": "hold", "stream": False}),
    ("/api/chat", MODEL, {"Model": MODEL, "messages": [{"role": "user", "content": "x"}],
                          "stream": False}),
    ("/v1/chat/completions", MODEL, {"MODEL": MODEL,
                                     "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/completions", MODEL, {"mOdEl": MODEL, "prompt": "hold"}),
    ("/api/embed", EMBED_MODEL, {"Model": EMBED_MODEL, "input": "x"}),
    ("/api/embeddings", EMBED_MODEL, {"Model": EMBED_MODEL, "prompt": "x"}),
    ("/v1/embeddings", EMBED_MODEL, {"Model": EMBED_MODEL, "input": "x"}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "model", "body"), CAPITALISED)
def test_a_capitalised_model_field_is_admitted(service, emulator, path, model, body):
    slow(emulator, MODEL, seconds=1)
    emulator.set_model(EMBED_MODEL, ttft_seconds=1)
    statuses = at_once(service.proxy, path, body)
    assert 200 in statuses and 429 in statuses, statuses  # 1 runs, 2 wait, 1 is turned away
    seen = emulator.observations()["max_in_flight"]
    assert seen and max(seen.values()) == 1, (model, seen)


def test_a_body_nested_past_the_limit_is_400_not_forwarded(service, emulator):
    deep = b'{"model":"%s","prompt":"x","stream":false,"x":%s1%s}' % (
        MODEL.encode(),
        b'{"a":' * 70,
        b"}" * 70,
    )
    for path in ("/api/generate", "/v1/chat/completions"):
        status, raw = raw_request(service.proxy, "POST", path, deep)
        assert status == 400, raw
        error = json.loads(raw)["error"]
        assert "64" in (error if isinstance(error, str) else error["message"])
    for raw in (b"[" * 70 + b"]" * 70, b"not json", b'{"model": 7, "prompt": "x"}'):
        assert raw_request(service.proxy, "POST", "/api/generate", raw)[0] == 400
    assert [c["path"] for c in emulator.connections(method="POST")] == []


def test_image_generation_is_admitted(service, emulator):
    path = "/v1/images/generations"
    emulator.fault("stall_first_byte", route=path, times=4, seconds=1.5)
    body = {"model": MODEL, "prompt": "a cat"}
    statuses = at_once(service.proxy, path, body)
    assert statuses.count(429) == 1, statuses  # limit 1, queue 2: the fourth is turned away
    assert most_open_at_once(emulator, path) == 1


def test_transcription_is_admitted(service, emulator):
    path = "/v1/audio/transcriptions"
    emulator.fault("stall_first_byte", route=path, times=4, seconds=1.5)
    barrier = threading.Barrier(4)

    def one(_: int) -> int:
        barrier.wait(5)
        files = {"file": ("a.wav", b"RIFF\x00\x01", "audio/wav")}
        return requests.post(service.proxy + path, data={"model": MODEL}, files=files,
                             timeout=30).status_code  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one, range(4)))
    assert statuses.count(429) == 1, statuses
    assert most_open_at_once(emulator, path) == 1


# --- finding 3: the cache key


def _post(svc: ServiceProcess, path: str, body: dict, key: str | None = None, **headers: str):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(svc.proxy_url + path, json=body, headers=headers, timeout=30)


def _raw_post(svc: ServiceProcess, path: str, raw: bytes) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return requests.post(svc.proxy_url + path, data=raw, headers=headers, timeout=30)


def _direct(emulator: FakeOllama, path: str, body: dict) -> dict:
    return requests.post(emulator.url + path, json=body, timeout=30).json()


def _text(path: str, answer: dict) -> str:
    if path == "/v1/chat/completions":
        return answer["choices"][0]["message"]["content"]
    return answer["response"]


def test_an_empty_stop_on_an_openai_route_does_not_poison_the_plain_request(gate, emulator):
    path = "/v1/chat/completions"
    plain = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
             "temperature": 0}  # fmt: skip
    # Ollama 0.20.5 turned "" into a stop list [""] and answered ""; 0.32.15's runner drops
    # empty stop words. Either way the body keys its own entry: what it gets is what Ollama
    # answers to exactly that body, and the plain request never sees it.
    odd = {**plain, "stop": ""}
    poisoned = _post(gate, path, odd)
    assert poisoned.status_code == 200
    assert _text(path, poisoned.json()) == _text(path, _direct(emulator, path, odd))
    victim = _post(gate, path, plain)
    assert victim.headers["X-Cache"] == "MISS"
    assert _text(path, victim.json()) == _text(path, _direct(emulator, path, plain)) != ""


def test_an_empty_format_object_does_not_poison_the_plain_request(gate, emulator):
    path = "/api/generate"
    plain = {"model": CHAT_MODEL, "prompt": "hi", "stream": False,
             "options": {"temperature": 0}}  # fmt: skip
    constrained = _post(gate, path, {**plain, "format": {}})
    assert json.loads(constrained.json()["response"])  # JSON, as Ollama constrains it
    victim = _post(gate, path, plain)
    assert victim.headers["X-Cache"] == "MISS"
    assert victim.json()["response"] == _direct(emulator, path, plain)["response"]


def test_a_case_variant_duplicate_does_not_poison_the_plain_request(gate, emulator):
    path = "/api/generate"
    plain = {"model": CHAT_MODEL, "prompt": "hi", "system": "answer in French",
             "stream": False, "options": {"temperature": 0}}  # fmt: skip
    raw = json.dumps(plain)[:-1] + ', "SYSTEM": ""}'  # Go: the last spelling wins
    without_system = _raw_post(gate, path, raw.encode())
    assert without_system.status_code == 200
    expected = _direct(emulator, path, {**plain, "system": ""})["response"]
    assert without_system.json()["response"] == expected
    assert expected != _direct(emulator, path, plain)["response"]
    victim = _post(gate, path, plain)
    assert victim.headers["X-Cache"] == "MISS"
    assert victim.json()["response"] == _direct(emulator, path, plain)["response"]
    # A "Cache-Control: no-cache" request with such a body refreshes only its own entry.
    refreshed = requests.post(gate.proxy_url + path, data=raw.encode(), timeout=30,
                              headers={"Content-Type": "application/json",
                                       "Cache-Control": "no-cache"})  # fmt: skip
    assert refreshed.headers["X-Cache"] == "BYPASS"
    again = _post(gate, path, plain)
    assert again.headers["X-Cache"] == "HIT"
    assert again.json()["response"] == victim.json()["response"]


def test_go_spellings_of_the_same_request_share_an_entry(gate):
    path = "/api/generate"
    plain = {"model": CHAT_MODEL, "prompt": "hello", "stream": False,
             "options": {"temperature": 0}}  # fmt: skip
    assert _post(gate, path, plain).headers["X-Cache"] == "MISS"
    spelled = {"MODEL": CHAT_MODEL, "Prompt": "hello", "stream": False,
               "Options": {"temperature": 0}}  # fmt: skip
    assert _post(gate, path, spelled).headers["X-Cache"] == "HIT"


# --- finding 7: entries per API key


def test_cache_entries_are_per_key(gate, emulator):
    path = "/api/chat"
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "secret plan"}],
            "stream": False, "options": {"temperature": 0}}  # fmt: skip
    assert _post(gate, path, body, USER).headers["X-Cache"] == "MISS"
    assert _post(gate, path, body, USER).headers["X-Cache"] == "HIT"
    assert _post(gate, path, body, OTHER).headers["X-Cache"] == "MISS"  # no hint of USER's
    assert _post(gate, path, body).headers["X-Cache"] == "MISS"  # nor to keyless callers
    assert len(emulator.connections(path=path)) == 3

    embed = {"model": EMBED_MODEL, "input": ["chunk one", "chunk two"]}
    assert _post(gate, "/api/embed", embed, USER).headers["X-Cache"] == "MISS"
    assert _post(gate, "/api/embed", embed, USER).headers["X-Cache"] == "HIT"
    single = {"model": EMBED_MODEL, "input": ["chunk two"]}
    assert _post(gate, "/api/embed", single, OTHER).headers["X-Cache"] == "MISS"
