"""Ollama's model-name grammar (``types/model/name.go``) and source selectors.

Form: ``[scheme://][host/][namespace/]model[:tag]`` with the defaults
``registry.ollama.ai``, ``library`` and ``latest``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import INVALID_MODEL_NAME, ApiError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MISSING = "!MISSING!"

_ALNUM_UNDERSCORE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def full(self) -> str:
        """``registry.ollama.ai/library/llama3.2:latest`` (Go's ``Name.String``)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """The shortest display form (``DisplayShortest``) used by tags and ps."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Matching against local models is case-insensitive per part."""
        return self.full.lower()

    def is_valid(self) -> bool:
        return all(
            _valid_part(kind, part)
            for kind, part in (
                ("host", self.host),
                ("namespace", self.namespace),
                ("model", self.model),
                ("tag", self.tag),
            )
        )


def _valid_part(kind: str, part: str) -> bool:
    if not 1 <= len(part) <= _MAX_LEN[kind]:
        return False
    if part[0] not in _ALNUM_UNDERSCORE:
        return False
    for ch in part[1:]:
        if ch in _ALNUM_UNDERSCORE or ch in "_-":
            continue
        if ch == "." and kind != "namespace":
            continue
        if ch == ":" and kind == "host":
            continue
        return False
    return True


def _cut_promised(text: str, sep: str) -> tuple[str, str, bool]:
    index = text.rfind(sep)
    if index < 0:
        return text, "", False
    return text[:index] or MISSING, text[index + len(sep) :] or MISSING, True


def parse_name(text: str) -> ModelName:
    """``model.ParseName``: split from the right, then fill in the defaults."""
    host = namespace = model = tag = ""
    if text.rfind(":") > text.rfind("/"):
        text, tag, _ = _cut_promised(text, ":")
    rest, model, promised = _cut_promised(text, "/")
    if not promised:
        model = rest
    else:
        rest, namespace, promised = _cut_promised(rest, "/")
        if not promised:
            namespace = rest
        else:
            _, sep, after = rest.partition("://")
            host = after if sep else rest
    return ModelName(
        host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG
    )


@dataclass(frozen=True)
class ModelRef:
    """A request's model string after the ``:local`` / ``:cloud`` selectors."""

    original: str
    base: str
    source: str  # "", "local" or "cloud"
    name: ModelName


class ModelRequired(Exception):
    """The model string was empty (after trimming spaces)."""


def _split_source(raw: str) -> tuple[str, str, bool]:
    index = raw.rfind(":")
    if index >= 0:
        suffix_raw = raw[index + 1 :].strip()
        suffix = suffix_raw.lower()
        if suffix in ("cloud", "local"):
            return raw[:index], suffix, True
        if "/" not in suffix_raw and suffix.endswith("-cloud"):
            return raw[: index + 1] + suffix_raw[: -len("-cloud")], "cloud", True
    return raw, "", False


def parse_model_ref(raw: str) -> ModelRef:
    """``parseAndValidateModelRef``: selectors, then the name grammar.

    Raises ``ModelRequired`` for an empty name (each route picks its own answer),
    ``ApiError(400)`` for conflicting selectors or an invalid name.
    """
    raw = raw.strip()
    if not raw:
        raise ModelRequired
    base, source, explicit = _split_source(raw)
    if explicit and _split_source(base)[2]:
        raise ApiError(400, f'use either :local or :cloud, not both: "{raw}"')
    name = parse_name(base)
    if not name.is_valid():
        raise ApiError(400, INVALID_MODEL_NAME)
    return ModelRef(raw, base, source, name)
