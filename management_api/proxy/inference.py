"""What an inference request asks for, read from its route and JSON body (pure, no I/O).

The proxy needs four facts before it decides on admission: which model (normalised, for the
limiter), whether it is a control request (Ollama's load/unload forms, which never queue), whether
it is the special "unload everything" form ``{"model": "", "keep_alive": 0}``, and whether the
response will stream. Requests Ollama will reject at once (no model, an invalid name, an empty
body) carry no ``model_key`` and pass through unadmitted, so their answer is Ollama's own. A
body that is not a JSON object, nests too deep, or names its model with something other than a
string is refused here (`read_body`), never forwarded unadmitted.

The body is read as Ollama's Go structs read it (bodies.go_object: field names match
case-insensitively, the last spelling wins), so ``"Model"`` is the model Ollama runs.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs

from management_api import errors, names
from management_api.bodies import MAX_DEPTH, go_object

# The Ollama the image ships (Dockerfile OLLAMA_IMAGE). The route tables below are read from
# its server/routes.go (GenerateRoutes): every route there that can load or run a model is an
# inference route here; a test names this version, so a bump makes someone read them again.
OLLAMA_VERSION = "0.32.15"
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
    # Image models ran here up to the 0.2x releases; still admitted, so an image built with an
    # older OLLAMA_IMAGE is gated too (0.32.15 answers 404).
    "/v1/images/generations": "openai_images",
    "/v1/images/edits": "openai_image_edits",
    # A multipart form, not JSON: its model is read by `read_form` (Go's FormValue).
    "/v1/audio/transcriptions": "openai_transcriptions",
}
INFERENCE_ROUTES = {**NATIVE_INFERENCE, **OPENAI_INFERENCE}
MULTIPART_INFERENCE = frozenset({"/v1/audio/transcriptions"})
# Every other exact path Ollama's router serves (for the trailing-slash check in target.py).
OTHER_OLLAMA_ROUTES = frozenset({
    "/api/version", "/api/status", "/api/pull", "/api/push", "/api/tags", "/api/show",
    "/api/delete", "/api/me", "/api/signout", "/api/create", "/api/copy",
    "/api/experimental/web_search", "/api/experimental/web_fetch",
    "/api/experimental/model-recommendations", "/api/ps", "/v1/models",
})  # fmt: skip
# Mutations of the installed-model set: the catalog is invalidated after each.
MUTATION_ROUTES = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete", "/api/push"})

LOAD, UNLOAD, UNLOAD_ALL = "load", "unload", "unload_all"

# time.ParseDuration's units, in nanoseconds.
_DURATION_UNITS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}  # fmt: skip
_DURATION_PART = re.compile(r"([0-9]*)(\.([0-9]*))?([^0-9.]*)")


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


def read_body(path: str, body: bytes) -> dict[str, Any] | None:
    """The body of a request to an inference route as Ollama reads it (None when empty:
    Ollama answers that itself, at once); anything Ollama could not read as its request, or
    deeper than `MAX_DEPTH`, is a 400 here: an unclassified request never goes on unadmitted."""
    if not body.strip():
        return None
    try:
        payload = go_object(body)
    except ValueError as exc:  # UnicodeDecodeError among them
        if "nested" in str(exc):
            raise errors.BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels") from None
        raise errors.BadRequest(f"the body of {path} must be a JSON object") from None
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise errors.BadRequest("the field 'model' must be a string")
    return payload


def read_form(content_type: str | None, body: bytes, query: str) -> dict[str, Any]:
    """The model of a multipart inference request as Go's ``FormValue("model")`` reads it: the
    URL query's first ``model`` before the form's (net/http puts query values first), field
    names exact. A body that is not a multipart form is a 400, as Ollama answers it."""
    from_query = parse_qs(query, keep_blank_values=True).get("model")
    if from_query:
        return {"model": from_query[0]}
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind != "multipart/form-data":
        raise errors.BadRequest("failed to parse multipart form: request Content-Type isn't "
                                "multipart/form-data")  # fmt: skip
    head = b"Content-Type: " + (content_type or "").encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise errors.BadRequest("failed to parse multipart form")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "model" and (
            part.get_filename() is None
        ):
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            return {"model": text}
    return {"model": ""}


def parse_body(body: bytes) -> Any:
    """The body as Ollama reads it, or None when it is empty or not a JSON object (for routes
    that only look at it, e.g. a pull's model)."""
    if not body:
        return None
    try:
        return go_object(body)
    except ValueError:
        return None


def is_zero_keep_alive(value: Any) -> bool:
    """Whether Ollama reads ``keep_alive`` as zero (api.Duration: a number is seconds, cut to
    whole nanoseconds, negative meaning forever; a string is a Go duration)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return 0 <= value * 1e9 < 1
    if isinstance(value, str):
        return go_duration_is_zero(value)
    return False


def go_duration_is_zero(text: str) -> bool:
    """Whether Go's time.ParseDuration reads `text` as zero ("0", "0s", "-0.0h", "0.1ns", …);
    False for anything it refuses (Ollama then refuses the request itself)."""
    rest = text[1:] if text[:1] in ("+", "-") else text
    if rest == "0":
        return True
    if not rest:
        return False
    position = 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        assert match is not None  # every part of the pattern may be empty
        whole, dot, fraction, unit = match.group(1), match.group(2), match.group(3), match.group(4)
        scale = _DURATION_UNITS.get(unit)
        if (not whole and not fraction) or scale is None:
            return False
        if whole and int(whole) != 0:
            return False
        if dot and fraction and int(float(int(fraction)) * (scale / 10 ** len(fraction))) != 0:
            return False  # Go adds the fraction in float64, cut to whole nanoseconds
        position = match.end()
    return True


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
    if kind in ("embed", "embeddings", "openai_embeddings") or kind.startswith(
        ("openai_image", "openai_transcriptions")
    ):
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
