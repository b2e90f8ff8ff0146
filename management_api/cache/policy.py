"""Which requests may be answered from the cache, and their keys (pure, no I/O).

Only deterministic answers are cacheable: embeddings (always, for one model digest) and
generations whose request sets temperature to 0 explicitly. A key covers the caller's scope (the
API key's name, unless entries are shared across keys), the route, the model's manifest digest
and the canonical JSON of the body as Ollama reads it (bodies.go_object: field names folded, the
last spelling winning). Only fields proven not to change the answer are left out: the framing
(``stream``, ``stream_options``) and the model's residency (``keep_alive``), so a stream and a
non-stream request share an entry. Empty values stay in the key: Ollama reads several of them
as values (``"format": {}`` asks for JSON, ``"stop": ""`` on the OpenAI routes stops at once).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from management_api.bodies import LossyObject, canonical_pieces
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
    if isinstance(payload, LossyObject):
        return False  # not valid UTF-8: Go reads the bad bytes otherwise than we do
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


# The same canonical form as bodies.canonical_pieces (a test holds them equal), written by the
# C encoder at once: a request key is made on every cacheable request, where that takes 7 us
# against 41 us a piece at a time. A task key uses the pieces (its input may be megabytes).
def _canonical(fields: dict[str, Any]) -> bytes:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)  # fmt: skip
    return text.encode("utf-8", "surrogatepass")


def _key_fields(payload: dict[str, Any], leave_out: frozenset[str]) -> dict[str, Any]:
    # `payload` is the folded body (bodies.go_object): one name per field Ollama reads.
    return {k: v for k, v in payload.items() if k not in leave_out}


def request_key(path: str, digest: str, payload: dict[str, Any], scope: str = "") -> str:
    """The key of a whole request in a caller's `scope`; raises ValueError for a body JSON
    cannot repeat exactly."""
    return _hash(path, digest, (_canonical(_key_fields(payload, NOT_IN_KEY)),), scope)


def item_key(path: str, digest: str, payload: dict[str, Any], item: str, scope: str = "") -> str:
    """The key of one input of an embedding batch: the request minus its other inputs."""
    fields = _key_fields(payload, NOT_IN_KEY | {"input"})
    fields["input"] = item
    return _hash(path, digest, (_canonical(fields),), scope)


def task_key(
    task: str, identity: str, digests: Sequence[str], fields: Mapping[str, Any], scope: str = ""
) -> str:
    """The key of a whole ``/v1/infer`` result: the task's name and config identity, the
    digests of every model that may answer (in order), and the caller's fields that change the
    answer (input, strategy, models; not deadline_ms or stream). Raises ValueError for a body
    JSON cannot repeat exactly."""
    # Hashed a piece at a time: the input may be megabytes (never escaped whole, twice).
    canonical = canonical_pieces({"task": task, "config": identity, "request": dict(fields)})
    return _hash(INFER_ROUTE, ",".join(digests), canonical, scope)


def _hash(path: str, digest: str, canonical: Iterable[bytes], scope: str) -> str:
    # The scope (an API key's name: 1-64 of A-Z a-z 0-9 _ . -) comes first, NUL-separated.
    h = hashlib.sha256(scope.encode())
    h.update(b"\0")
    h.update(path.encode())
    h.update(b"\0")
    h.update(digest.encode())
    h.update(b"\0")
    for piece in canonical:
        h.update(piece)
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
    scope: str = ""  # whose entries: see ResponseCache.scope


def embed_items(payload: dict[str, Any]) -> tuple[str, ...] | None:
    """The inputs of an /api/embed body when they are a string or a list of strings."""
    value = payload.get("input")
    if isinstance(value, str):
        return (value,) if value else None
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None
