"""The catalog against a recording fake Ollama client (Effects seam): cache, metadata, delete."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from management_api.models.catalog import Catalog, ModelNotFound, model_metadata, parameter_count
from management_api.ollama import OllamaStatusError, OllamaTimeout, OllamaUnreachable


def tag(name: str, *, size: int = 1000, digest: str | None = None, **details) -> dict:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-05-04T17:37:44.706015396-07:00",
        "size": size,
        "digest": digest or f"d-{name}",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
            **details,
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingOllama:
    """Answers like Ollama from in-memory lists and records every call in order."""

    def __init__(self, installed: list[dict] | None = None) -> None:
        self.installed = list(installed or [])
        self.running: list[dict] = []
        self.calls: list[tuple] = []
        self.tags_error: Exception | None = None
        self.tags_gate: threading.Event | None = None
        self.ps_error: Exception | None = None
        self.polls_until_unloaded = 0  # /api/ps answers that still list an unloaded model
        self.embedding_only: set[str] = set()
        self.delete_status: int | None = None
        self._lock = threading.Lock()

    def _record(self, *call) -> None:
        with self._lock:
            self.calls.append(call)

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call[0] == method)

    def tags(self, *, read_timeout=None):
        self._record("tags")
        if self.tags_gate is not None:
            self.tags_gate.wait(5)
        if self.tags_error is not None:
            raise self.tags_error
        return [dict(m) for m in self.installed]

    def ps(self, *, read_timeout=None):
        self._record("ps")
        if self.ps_error is not None:
            raise self.ps_error
        rows = [dict(m) for m in self.running]
        if self.polls_until_unloaded:
            self.polls_until_unloaded -= 1
        else:
            self.running = [m for m in self.running if not m.get("unloading")]
        return rows

    def get_json(self, path, *, read_timeout=None, retry=True):
        self._record("get_json", path, retry)
        if self.ps_error is not None:
            raise self.ps_error
        return {"models": [dict(m) for m in self.running]}

    def post_json(self, path, body, *, read_timeout=None):
        self._record("post", path, body)
        if path == "/api/generate" and body["model"] in self.embedding_only:
            raise OllamaStatusError(400, f'"{body["model"]}" does not support generate')
        for model in self.running:
            if model["name"] == body["model"] and body.get("keep_alive") == 0:
                model["unloading"] = True
        return {"done": True}

    def delete(self, model, *, read_timeout=None):
        self._record("delete", model)
        if self.delete_status is not None:
            raise OllamaStatusError(self.delete_status, f"model '{model}' not found")
        before = len(self.installed)
        self.installed = [m for m in self.installed if m["name"] != model]
        if len(self.installed) == before:
            raise OllamaStatusError(404, f"model '{model}' not found")


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ollama() -> RecordingOllama:
    return RecordingOllama([tag("llama3.2:latest", size=2019393189), tag("gemma3:4b")])


@pytest.fixture
def catalog(ollama, clock) -> Catalog:
    return Catalog(ollama, ttl_seconds=30, clock=clock, sleep=lambda s: None)


# --- the cache


def test_second_call_within_ttl_is_served_from_the_cache(catalog, ollama, clock):
    first = catalog.view()
    clock.now += 29.9
    second = catalog.view()
    assert ollama.count("tags") == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.age_seconds == pytest.approx(29.9)
    assert [m["name"] for m in second.entries] == ["llama3.2:latest", "gemma3:4b"]


def test_after_the_ttl_one_new_upstream_call(catalog, ollama, clock):
    catalog.view()
    clock.now += 30
    view = catalog.view()
    assert ollama.count("tags") == 2
    assert view.cached is False
    assert view.age_seconds == 0.0


def test_invalidate_forces_a_refresh(catalog, ollama):
    catalog.view()
    ollama.installed.append(tag("phi3:mini"))
    catalog.invalidate()
    view = catalog.view()
    assert ollama.count("tags") == 2
    assert "phi3:mini" in [m["name"] for m in view.entries]


def test_100_concurrent_cold_misses_make_one_upstream_call(catalog, ollama):
    ollama.tags_gate = threading.Event()
    with ThreadPoolExecutor(max_workers=100) as pool:
        futures = [pool.submit(catalog.view) for _ in range(100)]
        # Hold the one fetch until it has started; the rest wait for it or find its result.
        wait_until(lambda: ollama.count("tags") >= 1)
        ollama.tags_gate.set()
        views = [f.result(timeout=10) for f in futures]
    assert ollama.count("tags") == 1
    assert all(len(v.entries) == 2 for v in views)
    assert sum(1 for v in views if not v.cached) == 1


def test_a_fetch_overtaken_by_invalidate_is_not_cached(catalog, ollama):
    ollama.tags_gate = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(catalog.view)
        wait_until(lambda: ollama.count("tags") >= 1)
        catalog.invalidate()  # e.g. a pull finished while the old list was on its way
        ollama.tags_gate.set()
        future.result(timeout=5)
    catalog.view()
    assert ollama.count("tags") == 2


def test_while_a_pull_runs_through_the_proxy_each_list_asks_ollama(catalog, ollama):
    """Its client may list before the proxy has closed the answer: the list must show the pull."""
    catalog.view()
    catalog.mutation_started()
    ollama.installed.append(tag("phi3:mini"))  # Ollama has finished; the proxy has not yet
    during = catalog.view()
    assert "phi3:mini" in [m["name"] for m in during.entries] and during.cached is False
    catalog.view()
    assert ollama.count("tags") == 3
    catalog.mutation_ended()
    catalog.view()
    assert catalog.view().cached is True
    assert ollama.count("tags") == 4


def test_lists_are_cached_again_only_when_every_mutation_has_ended(catalog, ollama):
    catalog.mutation_started()
    catalog.mutation_started()
    catalog.mutation_ended()
    catalog.view()
    catalog.view()
    assert ollama.count("tags") == 2
    catalog.mutation_ended()
    catalog.view()
    catalog.view()
    assert ollama.count("tags") == 3


def test_ollama_down_serves_the_last_copy_marked_stale(catalog, ollama, clock):
    catalog.view()
    ollama.tags_error = OllamaUnreachable("connection failed")
    clock.now += 45
    view = catalog.view()
    assert view.stale is True
    assert view.cached is True
    assert view.age_seconds == pytest.approx(45)
    assert len(view.entries) == 2
    # A model last seen installed stays installed; a name never seen is unknown.
    assert catalog.is_installed("gemma3:4b") is True
    assert catalog.is_installed("phi3:mini") is None


def test_ollama_down_without_a_copy_raises(catalog, ollama):
    ollama.tags_error = OllamaUnreachable("connection failed")
    with pytest.raises(OllamaUnreachable):
        catalog.view()
    assert catalog.is_installed("gemma3:4b") is None


def test_a_known_model_answers_at_once_and_refreshes_in_the_background(catalog, ollama, clock):
    catalog.view()
    clock.now += 31  # past the TTL
    ollama.tags_gate = threading.Event()  # the refresh blocks until released
    started = time.monotonic()
    answers = [catalog.is_installed("gemma3:4b") for _ in range(50)]
    assert time.monotonic() - started < 1
    assert answers == [True] * 50
    wait_until(lambda: ollama.count("tags") == 2)  # one background fetch, not fifty
    ollama.tags_gate.set()
    wait_until(lambda: catalog.view().cached and catalog.view().age_seconds == 0)
    assert ollama.count("tags") == 2


def test_an_unknown_model_waits_for_a_fresh_list(catalog, ollama, clock):
    assert catalog.is_installed("phi3:mini") is False
    ollama.installed.append(tag("phi3:mini"))  # pulled meanwhile
    catalog.invalidate()
    assert catalog.is_installed("phi3:mini") is True
    assert ollama.count("tags") == 2


def test_is_installed_uses_normalised_names(catalog):
    assert catalog.is_installed("llama3.2:latest") is True
    assert catalog.is_installed("phi3:mini") is False


# --- metadata


def test_digest_of_an_installed_model_and_after_an_invalidation(catalog, ollama, clock):
    assert catalog.digest("llama3.2:latest") == "d-llama3.2:latest"
    assert catalog.digest("phi3:mini") is None
    assert ollama.count("tags") == 1  # a fresh list answers both
    ollama.installed[0] = tag("llama3.2:latest", digest="d-new")
    assert catalog.digest("llama3.2:latest") == "d-llama3.2:latest"  # within the TTL
    catalog.invalidate()  # a pull went through the proxy: the new digest is seen at once
    assert catalog.digest("llama3.2:latest") == "d-new"
    assert ollama.count("tags") == 2


def test_digest_of_a_name_the_expired_list_lacks_waits_for_a_fresh_list(catalog, ollama, clock):
    catalog.view()
    ollama.installed.append(tag("phi3:mini"))
    clock.now += 31
    assert catalog.digest("phi3:mini") == "d-phi3:mini"


def test_digest_is_none_when_ollama_cannot_tell(catalog, ollama):
    ollama.tags_error = OllamaUnreachable("down")
    assert catalog.digest("llama3.2:latest") is None


def test_metadata_flattens_the_details():
    entry = model_metadata(tag("llama3.2:latest", size=2019393189, digest="a80c"))
    assert entry == {
        "name": "llama3.2:latest",
        "model": "llama3.2:latest",
        "size": 2019393189,
        "modified_at": "2025-05-04T17:37:44.706015396-07:00",
        "digest": "a80c",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "parameter_count": 3_200_000_000,
        "quantization": "Q4_K_M",
    }


def test_metadata_passes_newer_optional_fields_and_tolerates_missing_details():
    raw = {**tag("qwen3:8b", context_length=40960), "capabilities": ["completion", "tools"]}
    raw["details"].pop("families")
    entry = model_metadata(raw)
    assert entry["capabilities"] == ["completion", "tools"]
    assert entry["context_length"] == 40960
    assert entry["families"] == ["llama"]
    bare = model_metadata({"name": "x:latest"})
    assert bare["model"] == "x:latest"
    assert bare["family"] is None and bare["families"] == []


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("3.2B", 3_200_000_000),
        ("137M", 137_000_000),
        ("1.24B", 1_240_000_000),
        ("7b", 7e9),
        ("", None),
        ("unknown", None),
        (None, None),
    ],
)
def test_parameter_count(text, count):
    assert parameter_count(text) == count


# --- loaded models


def test_loaded_lists_ps_with_metadata_in_one_bounded_try(catalog, ollama):
    ollama.running = [
        {
            **tag("gemma3:4b"),
            "size_vram": 500,
            "expires_at": "2025-06-04T14:38:31Z",
            "context_length": 4096,
        }
    ]
    rows = catalog.loaded()
    assert ollama.calls == [("get_json", "/api/ps", False)]
    assert rows[0]["name"] == "gemma3:4b"
    assert rows[0]["size_vram"] == 500
    assert rows[0]["expires_at"] == "2025-06-04T14:38:31Z"
    assert rows[0]["context_length"] == 4096
    assert rows[0]["quantization"] == "Q4_K_M"


def test_loaded_raises_the_typed_error_when_ollama_fails(catalog, ollama):
    ollama.ps_error = OllamaTimeout("read timeout")
    with pytest.raises(OllamaTimeout):
        catalog.loaded()


# --- delete


def test_delete_an_installed_model(catalog, ollama):
    catalog.view()
    result = catalog.delete("llama3.2")
    assert ("delete", "llama3.2:latest") in ollama.calls
    assert result.deleted_name == "llama3.2:latest"
    assert result.freed_bytes == 2019393189
    assert (result.was_loaded, result.unloaded) == (False, False)
    assert not any(call[0] == "post" for call in ollama.calls)
    assert "llama3.2:latest" not in [m["name"] for m in catalog.view().entries]


def test_delete_an_absent_model_raises_without_deleting(catalog, ollama):
    with pytest.raises(ModelNotFound):
        catalog.delete("phi3:mini")
    assert ollama.count("delete") == 0


def test_delete_unloads_a_loaded_model_first(catalog, ollama):
    ollama.running = [{**tag("gemma3:4b"), "size_vram": 1}]
    ollama.polls_until_unloaded = 2  # Ollama takes a moment to let the runner go
    result = catalog.delete("gemma3:4b")
    kinds = [call[0] for call in ollama.calls]
    unload = ("post", "/api/generate", {"model": "gemma3:4b", "keep_alive": 0})
    assert ollama.calls.index(unload) < kinds.index("delete")
    last_ps_before_delete = max(i for i, k in enumerate(kinds) if k == "ps")
    assert last_ps_before_delete < kinds.index("delete")
    assert (result.was_loaded, result.unloaded) == (True, True)
    assert ollama.running == []


def test_delete_unloads_an_embedding_model_with_the_embed_form(catalog, ollama):
    ollama.installed.append(tag("nomic-embed-text:latest"))
    ollama.running = [{**tag("nomic-embed-text:latest")}]
    ollama.embedding_only.add("nomic-embed-text:latest")
    result = catalog.delete("nomic-embed-text")
    embed = (
        "post",
        "/api/embed",
        {"model": "nomic-embed-text:latest", "input": [], "keep_alive": 0},
    )
    assert embed in ollama.calls
    assert result.unloaded is True


def test_delete_goes_ahead_when_a_busy_model_does_not_unload_in_time(ollama, clock):
    def sleep(seconds: float) -> None:
        clock.now += seconds

    catalog = Catalog(ollama, ttl_seconds=30, clock=clock, sleep=sleep)
    ollama.running = [{**tag("gemma3:4b")}]
    ollama.polls_until_unloaded = 10_000
    result = catalog.delete("gemma3:4b", unload_timeout=1.0)
    assert ollama.count("delete") == 1
    assert (result.was_loaded, result.unloaded) == (True, False)
    assert "busy" in result.unload_error


def test_a_copy_sharing_the_manifest_frees_nothing(catalog, ollama):
    ollama.installed.append(
        tag("llama3-backup:latest", size=2019393189, digest="d-llama3.2:latest")
    )
    assert catalog.delete("llama3.2:latest").freed_bytes == 0


def test_a_404_from_the_delete_itself_means_not_found(catalog, ollama):
    ollama.delete_status = 404
    catalog.view()
    with pytest.raises(ModelNotFound):
        catalog.delete("gemma3:4b")
    catalog.view()
    assert ollama.count("tags") == 3  # invalidated all the same
