"""The emulator's model catalogue: installed models, local blobs and the fake registry.

Sizes, families and capabilities are realistic so tags/show/ps look like a real
Jetson install and capability errors can be produced (``gemma3:4b`` has no tools,
``nomic-embed-text`` only embeds, ``qwen3`` thinks, ``qwen2.5-coder`` inserts).
Digests are deterministic sha256 values derived from the names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .names import ModelName, parse_name

MODEL_MEDIA = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA = "application/vnd.ollama.image.template"
LICENSE_MEDIA = "application/vnd.ollama.image.license"
PARAMS_MEDIA = "application/vnd.ollama.image.params"
SYSTEM_MEDIA = "application/vnd.ollama.image.system"

_TOOLS_TEMPLATE = (
    "{{- if .Messages }}{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>\n"
    "{{- if .System }}\n\n{{ .System }}{{- end }}{{- if .Tools }}\n\nYou have access to the "
    "following functions.{{ range .Tools }}\n{{ . }}{{ end }}{{- end }}<|eot_id|>{{- end }}"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}"
    "<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{{- else }}{{ .Prompt }}{{ end }}"
)
_PLAIN_TEMPLATE = (
    "{{- range .Messages }}<start_of_turn>{{ .Role }}\n{{ .Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"
)
_THINK_TEMPLATE = (
    "{{- if .Tools }}<|im_start|>system\n# Tools\n{{ range .Tools }}{{ . }}{{ end }}<|im_end|>"
    "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}"
)
_INSERT_TEMPLATE = (
    "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
    "{{- else }}{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n{{ end }}"
)
_LICENSE = "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (emulated licence text)"
_APACHE = "Apache License Version 2.0 (emulated licence text)"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Layer:
    digest: str  # "sha256:<64 hex>"
    size: int
    media_type: str


@dataclass
class ModelEntry:
    """One model, installed or in the registry. ``name`` is its canonical name."""

    name: ModelName
    family: str
    parameter_size: str
    quantization: str
    capabilities: tuple[str, ...]
    layers: tuple[Layer, ...]
    context_length: int
    embedding_length: int
    parameter_count: int
    template: str = ""
    system: str = ""
    license: str = ""
    parameters: dict[str, object] = field(default_factory=dict)
    modified_at: float = 0.0

    @property
    def digest(self) -> str:
        """Manifest digest: bare hex, as ``/api/tags`` shows it."""
        return sha256_hex("manifest:" + ",".join(layer.digest for layer in self.layers))

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def model_layer(self) -> Layer:
        return next(layer for layer in self.layers if layer.media_type == MODEL_MEDIA)

    @property
    def blob_key(self) -> str:
        """Scheduler key: names pointing at the same GGUF share one runner."""
        return self.model_layer.digest

    @property
    def embedding_only(self) -> bool:
        return "embedding" in self.capabilities and "completion" not in self.capabilities

    @property
    def families(self) -> list[str]:
        return [self.family]

    def details(self) -> dict[str, object]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": self.families,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }


def _parse_params(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([BM])", text)
    if not match:
        return 7_000_000_000
    scale = 1e9 if match.group(2) == "B" else 1e6
    return int(float(match.group(1)) * scale)


def _layer(owner: str, kind: str, size: int, media: str) -> Layer:
    return Layer("sha256:" + sha256_hex(f"{owner}/{kind}"), size, media)


def _entry(
    name: str,
    *,
    family: str,
    parameter_size: str,
    quantization: str,
    capabilities: tuple[str, ...],
    model_bytes: int,
    context_length: int,
    embedding_length: int,
    template: str = "",
    shared: str | None = None,
    parameters: dict[str, object] | None = None,
) -> ModelEntry:
    """Build a model whose small layers may be shared with a sibling (``shared``)."""
    owner = shared or name
    layers = [_layer(name, "model", model_bytes, MODEL_MEDIA)]
    if template:
        layers.append(_layer(owner, "template", len(template), TEMPLATE_MEDIA))
    license_text = _LICENSE if template else _APACHE
    layers.append(_layer(owner, "license", len(license_text) * 120, LICENSE_MEDIA))
    params = parameters if parameters is not None else {}
    if params:
        layers.append(_layer(owner, "params", 96, PARAMS_MEDIA))
    return ModelEntry(
        name=parse_name(name),
        family=family,
        parameter_size=parameter_size,
        quantization=quantization,
        capabilities=capabilities,
        layers=tuple(layers),
        context_length=context_length,
        embedding_length=embedding_length,
        parameter_count=_parse_params(parameter_size),
        template=template,
        license=license_text,
        parameters=params,
    )


_LLAMA_STOPS = {"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}

DEFAULT_MODELS: tuple[ModelEntry, ...] = (
    _entry(
        "llama3.2:1b",
        family="llama",
        parameter_size="1.2B",
        quantization="Q8_0",
        capabilities=("completion", "tools"),
        model_bytes=1_321_082_688,
        context_length=131072,
        embedding_length=2048,
        template=_TOOLS_TEMPLATE,
        shared="llama3.2",
        parameters=_LLAMA_STOPS,
    ),
    _entry(
        "llama3.2:latest",
        family="llama",
        parameter_size="3.2B",
        quantization="Q4_K_M",
        capabilities=("completion", "tools"),
        model_bytes=2_019_377_376,
        context_length=131072,
        embedding_length=3072,
        template=_TOOLS_TEMPLATE,
        shared="llama3.2",
        parameters=_LLAMA_STOPS,
    ),
    _entry(
        "qwen3:14b-q8",
        family="qwen3",
        parameter_size="14.8B",
        quantization="Q8_0",
        capabilities=("completion", "tools", "thinking"),
        model_bytes=15_702_391_232,
        context_length=40960,
        embedding_length=5120,
        template=_THINK_TEMPLATE,
        parameters={"temperature": 0.6, "top_k": 20, "top_p": 0.95},
    ),
    _entry(
        "gemma3:4b",
        family="gemma3",
        parameter_size="4.3B",
        quantization="Q4_K_M",
        capabilities=("completion", "vision"),
        model_bytes=3_338_792_448,
        context_length=131072,
        embedding_length=2560,
        template=_PLAIN_TEMPLATE,
        parameters={"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95},
    ),
    _entry(
        "nomic-embed-text:latest",
        family="nomic-bert",
        parameter_size="137M",
        quantization="F16",
        capabilities=("embedding",),
        model_bytes=274_290_656,
        context_length=2048,
        embedding_length=768,
        parameters={"num_ctx": 8192},
    ),
    _entry(
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        family="llama",
        parameter_size="1.24B",
        quantization="Q4_K_M",
        capabilities=("completion", "tools"),
        model_bytes=807_694_464,
        context_length=131072,
        embedding_length=2048,
        template=_TOOLS_TEMPLATE,
    ),
)

EXTRA_REGISTRY: tuple[ModelEntry, ...] = (
    _entry(
        "phi3:mini",
        family="phi3",
        parameter_size="3.8B",
        quantization="Q4_0",
        capabilities=("completion",),
        model_bytes=2_176_177_120,
        context_length=131072,
        embedding_length=3072,
        template=_PLAIN_TEMPLATE,
        parameters={"stop": ["<|end|>", "<|user|>", "<|assistant|>"]},
    ),
    _entry(
        "mistral:7b",
        family="llama",
        parameter_size="7.2B",
        quantization="Q4_K_M",
        capabilities=("completion", "tools"),
        model_bytes=4_113_289_024,
        context_length=32768,
        embedding_length=4096,
        template=_TOOLS_TEMPLATE,
        parameters={"stop": ["[INST]", "[/INST]"]},
    ),
    _entry(
        "all-minilm:latest",
        family="bert",
        parameter_size="23M",
        quantization="F16",
        capabilities=("embedding",),
        model_bytes=45_949_216,
        context_length=512,
        embedding_length=384,
        parameters={"num_ctx": 256},
    ),
    _entry(
        "qwen2.5-coder:1.5b",
        family="qwen2",
        parameter_size="1.5B",
        quantization="Q4_K_M",
        capabilities=("completion", "tools", "insert"),
        model_bytes=986_046_176,
        context_length=32768,
        embedding_length=1536,
        template=_INSERT_TEMPLATE,
    ),
)

# --- models named on the command line -----------------------------------------------------

_BYTES_PER_PARAM = {"Q4_0": 0.57, "Q4_K_M": 0.61, "Q5_K_M": 0.71, "Q8_0": 1.07, "F16": 2.0}
_FAMILIES = (
    ("qwen3", "qwen3"),
    ("qwen2", "qwen2"),
    ("qwen", "qwen2"),
    ("deepseek-r1", "qwen2"),
    ("gemma3", "gemma3"),
    ("gemma2", "gemma2"),
    ("gemma", "gemma"),
    ("phi", "phi3"),
    ("nomic-embed", "nomic-bert"),
    ("all-minilm", "bert"),
    ("mxbai-embed", "bert"),
    ("bge", "bert"),
    ("snowflake", "bert"),
    ("llava", "llama"),
)


def _guess_quantization(tag: str) -> str:
    lowered = tag.lower()
    for marker, quant in (
        ("q8", "Q8_0"),
        ("fp16", "F16"),
        ("f16", "F16"),
        ("q5_k_m", "Q5_K_M"),
        ("q4_0", "Q4_0"),
    ):
        if marker in lowered:
            return quant
    return "Q4_K_M"


def derive_model(text: str) -> ModelEntry:
    """Plausible details for a model named on the command line."""
    name = parse_name(text)
    model = name.model.lower()
    family = next((fam for prefix, fam in _FAMILIES if model.startswith(prefix)), "llama")
    embedding = family in ("bert", "nomic-bert") or "embed" in model
    size_match = re.search(r"(\d+(?:\.\d+)?)([bm])(?![a-z])", name.tag.lower())
    if size_match:
        parameter_size = f"{size_match.group(1)}{size_match.group(2).upper()}"
    else:
        parameter_size = "137M" if embedding else "7B"
    quantization = "F16" if embedding else _guess_quantization(name.tag)
    count = _parse_params(parameter_size)
    if embedding:
        capabilities: tuple[str, ...] = ("embedding",)
    else:
        caps = ["completion"]
        if family != "gemma3" and not model.startswith("phi"):
            caps.append("tools")
        if family == "qwen3" or model.startswith("deepseek-r1"):
            caps.append("thinking")
        if "coder" in model:
            caps.append("insert")
        if family == "gemma3" or "vision" in model or model.startswith("llava"):
            caps.append("vision")
        capabilities = tuple(caps)
    if embedding:
        embedding_length = 384 if family == "bert" else 768
    else:
        embedding_length = 2048 if count < 2e9 else 3072 if count < 5e9 else 4096
    template = (
        ""
        if embedding
        else _THINK_TEMPLATE
        if "thinking" in capabilities
        else (_INSERT_TEMPLATE if "insert" in capabilities else _TOOLS_TEMPLATE)
    )
    entry = _entry(
        name.display,
        family=family,
        parameter_size=parameter_size,
        quantization=quantization,
        capabilities=capabilities,
        model_bytes=int(count * _BYTES_PER_PARAM[quantization]),
        context_length=2048 if embedding else 40960 if family == "qwen3" else 131072,
        embedding_length=embedding_length,
        template=template,
    )
    return dataclasses.replace(entry, name=name)


# --- the catalogue ------------------------------------------------------------------------


class Catalog:
    """Installed models (by case-folded full name), local blobs and the registry."""

    def __init__(self, start: Iterable[ModelEntry], registry: Iterable[ModelEntry]) -> None:
        self.registry: dict[str, ModelEntry] = {entry.name.key: entry for entry in registry}
        self.installed: dict[str, ModelEntry] = {}
        self.blobs: dict[str, int] = {}
        now = time.time()
        for offset, entry in enumerate(start):
            # Stagger modification times so the tags order is stable and realistic.
            self.install(dataclasses.replace(entry, modified_at=now - 3600 * (offset + 1)))

    def get(self, name: ModelName) -> ModelEntry | None:
        return self.installed.get(name.key)

    def lookup_registry(self, name: ModelName) -> ModelEntry | None:
        return self.registry.get(name.key)

    def install(self, entry: ModelEntry) -> ModelEntry:
        if not entry.modified_at:
            entry = dataclasses.replace(entry, modified_at=time.time())
        self.installed[entry.name.key] = entry
        for layer in entry.layers:
            self.blobs[layer.digest] = layer.size
        return entry

    def remove(self, name: ModelName) -> ModelEntry | None:
        """Delete a manifest and prune blobs no other model references."""
        entry = self.installed.pop(name.key, None)
        if entry is None:
            return None
        referenced = {layer.digest for other in self.installed.values() for layer in other.layers}
        for layer in entry.layers:
            if layer.digest not in referenced:
                self.blobs.pop(layer.digest, None)
        return entry

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs

    def listing(self) -> list[ModelEntry]:
        """Newest first, compared at whole seconds like Ollama (stable otherwise)."""
        return sorted(self.installed.values(), key=lambda e: -int(e.modified_at))


def start_models(names: Iterable[str] | None) -> tuple[list[ModelEntry], list[ModelEntry]]:
    """The start set and the registry for an optional ``--models`` list."""
    known = {entry.name.key: entry for entry in (*DEFAULT_MODELS, *EXTRA_REGISTRY)}
    if names is None:
        start = list(DEFAULT_MODELS)
    else:
        start = []
        for text in names:
            name = parse_name(text)
            start.append(known.get(name.key) or derive_model(text))
    registry = {entry.name.key: entry for entry in (*DEFAULT_MODELS, *EXTRA_REGISTRY, *start)}
    return start, list(registry.values())
