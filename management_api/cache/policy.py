"""Which requests may be answered from the cache, and their keys (pure, no I/O).

Only deterministic answers are cacheable: embeddings (always, for one model digest) and
generations whose request sets temperature to 0 explicitly. A key covers the route, the model's
manifest digest and the canonical JSON of every field that can change the answer; fields that
only change the framing (``stream``, ``stream_options``) or the model's residency
(``keep_alive``) are left out, so a stream and a non-stream request share an entry. So are
top-level fields set to their empty value (null, "", [], {}): Ollama reads those as absent, and
clients differ in which they send (the ollama package sends ``"tools": []``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from management_api.proxy.inference import InferenceRequest

INFER_ROUTE = "/v1/infer"
GENERATIONS = frozenset({"generate", "chat", "openai_chat", "openai_completions"})
EMBEDDINGS = frozenset({"embed", "embeddings", "openai_embeddings"})
OPENAI_KINDS = frozenset({"openai_chat", "openai_completions", "openai_embeddings"})
NOT_IN_KEY = frozenset({"stream", "stream_options", "keep_alive"})

# Request shapes an answer can be rendered in.
JSON, NDJSON, SSE, SSE_USAGE = "json", "ndjson", "sse", "sse+usage"

# Cache-Control directives a caller may send (RFC 9111 §5.2.1).
NO_CACHE, NO_STORE = "no-cache", "no-store"


def _is_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def temperature_is_zero(kind: str, payload: dict[str, Any]) -> bool:
    """An explicit temperature of 0; an omitted one is Ollama's default (not 0)."""
    if kind in OPENAI_KINDS:
        return _is_zero(payload.get("temperature"))
    options = payload.get("options")
    return isinstance(options, dict) and _is_zero(options.get("temperature"))


def is_cacheable(intent: InferenceRequest, payload: Any) -> bool:
    """Whether the answer to this request is deterministic and may be stored."""
    if intent.model_key is None or intent.control is not None or not isinstance(payload, dict):
        return False
    if intent.kind in EMBEDDINGS:
        return True
    return intent.kind in GENERATIONS and temperature_is_zero(intent.kind, payload)


def request_shape(intent: InferenceRequest, payload: dict[str, Any]) -> str:
    """How the answer is framed for this request: one JSON object, NDJSON, or SSE."""
    if not intent.stream:
        return JSON
    if intent.kind in OPENAI_KINDS:
        options = payload.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        return SSE_USAGE if usage else SSE
    return NDJSON


def cache_control(headers: list[tuple[str, str]]) -> frozenset[str]:
    """The request's Cache-Control directives that matter here (no-cache, no-store)."""
    found: set[str] = set()
    for name, value in headers:
        if name.lower() != "cache-control":
            continue
        for directive in value.split(","):
            token = directive.split("=", 1)[0].strip().lower()
            if token in (NO_CACHE, NO_STORE):
                found.add(token)
    return frozenset(found)


def _canonical(fields: dict[str, Any]) -> bytes:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)  # fmt: skip
    return text.encode("utf-8", "surrogatepass")


def _key_fields(payload: dict[str, Any], leave_out: frozenset[str]) -> dict[str, Any]:
    return {
        k: v
        for k, v in payload.items()
        if k not in leave_out and not (v is None or (v == "" or v == [] or v == {}))
    }


def request_key(path: str, digest: str, payload: dict[str, Any]) -> str:
    """The key of a whole request; raises ValueError for a body JSON cannot repeat exactly."""
    return _hash(path, digest, _canonical(_key_fields(payload, NOT_IN_KEY)))


def item_key(path: str, digest: str, payload: dict[str, Any], item: str) -> str:
    """The key of one input of an embedding batch: the request minus its other inputs."""
    fields = _key_fields(payload, NOT_IN_KEY | {"input"})
    fields["input"] = item
    return _hash(path, digest, _canonical(fields))


def task_key(task: str, identity: str, digests: Sequence[str], fields: Mapping[str, Any]) -> str:
    """The key of a whole ``/v1/infer`` result: the task's name and config identity, the
    digests of every model that may answer (in order), and the caller's fields that change the
    answer (input, strategy, models; not deadline_ms or stream). Raises ValueError for a body
    JSON cannot repeat exactly."""
    canonical = _canonical({"task": task, "config": identity, "request": dict(fields)})
    return _hash(INFER_ROUTE, ",".join(digests), canonical)


def _hash(path: str, digest: str, canonical: bytes) -> str:
    h = hashlib.sha256(path.encode())
    h.update(b"\0")
    h.update(digest.encode())
    h.update(b"\0")
    h.update(canonical)
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    """What the cache does with one inference request."""

    intent: InferenceRequest
    payload: dict[str, Any]
    cacheable: bool  # False: BYPASS (not deterministic, or no-store, or no digest)
    key: str | None = None  # the whole request's key (None for per-item embed batches)
    shape: str = JSON
    refresh: bool = False  # Cache-Control: no-cache: skip the lookup, store the new answer
    items: tuple[str, ...] | None = None  # /api/embed inputs, looked up one by one
    item_keys: tuple[str, ...] = ()
    digest: str | None = None


def embed_items(payload: dict[str, Any]) -> tuple[str, ...] | None:
    """The inputs of an /api/embed body when they are a string or a list of strings."""
    value = payload.get("input")
    if isinstance(value, str):
        return (value,) if value else None
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None
