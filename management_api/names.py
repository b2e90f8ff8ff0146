"""Ollama's model-name grammar (`types/model/name.go`, reference ollama-api.md §11).

Form: ``[scheme://][host/][namespace/]model[:tag]``. Defaults fill the missing parts
(host ``registry.ollama.ai``, namespace ``library``, tag ``latest``), so ``llama3.2``,
``llama3.2:latest``, ``library/llama3.2`` and ``registry.ollama.ai/library/llama3.2:latest``
all denote one model. Ollama matches names case-insensitively per part, so our canonical key
(`normalize`) is the lower-cased shortest display form; limits, the catalog and pull jobs are
keyed on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Same per-part rules as name.go's isValidPart: first character, other characters, length.
_PART_RULES = {
    "host": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z"), 350),
    "namespace": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z"), 80),
    "model": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z"), 80),
    "tag": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z"), 80),
}

# Source selectors (internal/modelref) are stripped before the name is parsed.
_LOCAL_SUFFIX = ":local"
_CLOUD_SUFFIX = ":cloud"

# A name longer than every part together cannot be valid; checked first so that
# hostile input never reaches the regexes at full length.
MAX_NAME_LENGTH = len("https://") + 350 + 80 + 80 + 80 + 3


class InvalidModelName(ValueError):
    """The string is not a valid Ollama model name."""


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    def display(self) -> str:
        """Ollama's DisplayShortest(): what /api/tags and /api/ps show."""
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def key(self) -> str:
        """Canonical comparison key: the shortest display form, lower-cased."""
        return self.display().lower()

    @property
    def full(self) -> str:
        """Fully qualified form, as Ollama uses in capability errors."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def _strip_source_selector(name: str) -> str:
    lowered = name.lower()
    has_local = lowered.endswith(_LOCAL_SUFFIX)
    has_cloud = lowered.endswith(_CLOUD_SUFFIX)
    if has_local:
        name = name[: -len(_LOCAL_SUFFIX)]
        if name.lower().endswith(_CLOUD_SUFFIX):
            raise InvalidModelName("use either :local or :cloud, not both")
    elif has_cloud:
        stripped = name[: -len(_CLOUD_SUFFIX)]
        if stripped.lower().endswith(_LOCAL_SUFFIX):
            raise InvalidModelName("use either :local or :cloud, not both")
        # `model:cloud` keeps "cloud" as its tag: Ollama forwards it to ollama.com.
    return name


def parse(name: str) -> ModelName:
    """Parse and validate a model name; raise InvalidModelName when Ollama would reject it."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidModelName("invalid model name")
    name = _strip_source_selector(name)

    scheme_sep = name.find("://")
    if scheme_sep != -1:
        name = name[scheme_sep + 3 :]

    tag = DEFAULT_TAG
    last_colon, last_slash = name.rfind(":"), name.rfind("/")
    if last_colon > last_slash:
        name, tag = name[:last_colon], name[last_colon + 1 :]
        if not tag:
            raise InvalidModelName("invalid model name")

    parts = name.split("/")
    if len(parts) > 3:
        # name.go folds the extra segments into the host, where "/" is not allowed.
        raise InvalidModelName("invalid model name")
    if any(part == "" for part in parts):
        raise InvalidModelName("invalid model name")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST

    parsed = ModelName(host=host, namespace=namespace, model=model, tag=tag)
    for part_name, value in (
        ("host", host),
        ("namespace", namespace),
        ("model", model),
        ("tag", tag),
    ):
        pattern, max_length = _PART_RULES[part_name]
        if len(value) > max_length or not pattern.match(value):
            raise InvalidModelName("invalid model name")
    return parsed


def is_valid(name: object) -> bool:
    try:
        parse(name)  # type: ignore[arg-type]
    except InvalidModelName:
        return False
    return True


def normalize(name: str) -> str:
    """Canonical key for a model name (raises InvalidModelName)."""
    if not isinstance(name, str):
        raise InvalidModelName("invalid model name")
    return _cached_key(name)


@lru_cache(maxsize=4096)  # every proxied request normalises its model name two or three times
def _cached_key(name: str) -> str:
    return parse(name).key()


def same_model(a: str, b: str) -> bool:
    """True when both strings name the same model as Ollama would resolve it."""
    try:
        return normalize(a) == normalize(b)
    except InvalidModelName:
        return False
