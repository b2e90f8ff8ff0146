"""What an inference request asks for, read from its route and JSON body (pure, no I/O).

The proxy needs four facts before it decides on admission: which model (normalised, for the
limiter), whether it is a control request (Ollama's load/unload forms, which never queue), whether
it is the special "unload everything" form ``{"model": "", "keep_alive": 0}``, and whether the
response will stream. Requests Ollama will reject at once (no model, invalid name, malformed
body) carry no ``model_key`` and pass through unadmitted, so their answer is Ollama's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from management_api import names
from management_api.bodies import loads_bounded

NATIVE_INFERENCE = {
    "/api/generate": "generate",
    "/api/chat": "chat",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
}
OPENAI_INFERENCE = {
    "/v1/chat/completions": "openai_chat",
    "/v1/completions": "openai_completions",
    "/v1/embeddings": "openai_embeddings",
    "/v1/responses": "openai_responses",
    "/v1/messages": "anthropic_messages",
}
INFERENCE_ROUTES = {**NATIVE_INFERENCE, **OPENAI_INFERENCE}
# Mutations of the installed-model set: the catalog is invalidated after each.
MUTATION_ROUTES = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete", "/api/push"})

LOAD, UNLOAD, UNLOAD_ALL = "load", "unload", "unload_all"

# Go duration strings that denote zero: "0", "0s", "0.0ms", "0h0m0s", …
_ZERO_DURATION = re.compile(r"[+-]?(0+(\.0*)?(ns|us|µs|ms|s|m|h)?)+\Z")


@dataclass(frozen=True)
class InferenceRequest:
    kind: str  # generate | chat | embed | … (see the route tables)
    model: str | None  # as sent
    model_key: str | None  # normalised; None when Ollama will reject the name itself
    control: str | None  # None | load | unload | unload_all
    stream: bool

    @property
    def needs_admission(self) -> bool:
        return self.control is None and self.model_key is not None


def parse_body(body: bytes) -> Any:
    """The JSON body, or None when it is empty or not JSON (Ollama will answer that itself)."""
    if not body:
        return None
    try:
        return loads_bounded(body)
    except (ValueError, UnicodeDecodeError):
        return None


def is_zero_keep_alive(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        return bool(_ZERO_DURATION.match(value.strip()))
    return False


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


def classify(path: str, payload: Any) -> InferenceRequest | None:
    """Classify a request to an inference route; None for any other route."""
    kind = INFERENCE_ROUTES.get(path)
    if kind is None:
        return None
    body = payload if isinstance(payload, dict) else {}
    model = body.get("model")
    model = model if isinstance(model, str) else None

    native = path in NATIVE_INFERENCE
    stream_default = native and kind in ("generate", "chat")
    stream = body.get("stream", stream_default)
    stream = stream if isinstance(stream, bool) else stream_default
    if kind in ("embed", "embeddings", "openai_embeddings"):
        stream = False

    control = None
    if native and isinstance(payload, dict):
        if kind == "generate":
            empty_input = _empty(body.get("prompt"))
        elif kind == "chat":
            empty_input = _empty(body.get("messages"))
        elif kind == "embed":
            empty_input = _empty(body.get("input"))
        else:
            empty_input = _empty(body.get("prompt"))
        if empty_input:
            unload = "keep_alive" in body and is_zero_keep_alive(body["keep_alive"])
            if unload and model == "" and kind in ("generate", "chat"):
                control = UNLOAD_ALL
            else:
                control = UNLOAD if unload else LOAD

    # Requests the OpenAI layer rejects before they reach a runner never wait for a slot.
    rejected_early = (kind == "openai_chat" and _empty(body.get("messages"))) or (
        kind == "openai_embeddings" and _empty(body.get("input")) and body.get("input") != ""
    )

    model_key = None
    if model and not rejected_early:
        try:
            model_key = names.normalize(model)
        except names.InvalidModelName:
            model_key = None
    if not isinstance(payload, dict):
        model_key = None  # malformed or empty body: Ollama answers 400 at once
    return InferenceRequest(kind=kind, model=model, model_key=model_key, control=control,
                            stream=stream)  # fmt: skip
