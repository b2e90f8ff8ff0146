"""Settings of the emulator: Ollama's scheduler variables plus timing knobs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .durations import parse_env_keep_alive


@dataclass
class Timing:
    """How a model behaves in time; every field may be overridden per model."""

    load_seconds: float = 0.05
    ttft_seconds: float = 0.01
    tokens_per_second: float = 200.0
    tokens: int = 12


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 11434
    models: list[str] | None = None
    num_parallel: int = 1
    max_queue: int = 512
    max_loaded_models: int = 3
    # Loading modelled by size: load time adds size (GB) x this to ``load_seconds``, and a
    # budget of runner bytes (0 = none) evicts like a full GPU does. Both off by default.
    load_seconds_per_gb: float = 0.0
    memory_bytes: int = 0
    keep_alive: float = 300.0  # seconds; math.inf = forever
    loopback_checks: bool = False
    # Ollama keeps evaluating a cancelled request's prompt until its first token
    # (ollama/ollama#11889); False = stop at once (the emulator's original behaviour).
    prompt_eval_uncancellable: bool = False
    timing: Timing = field(default_factory=Timing)
    pull_bytes_per_second: float = 2e9
    context_length: int = 4096
    extra_origins: tuple[str, ...] = ()
    exit_with_parent: bool = False

    def copy(self) -> Settings:
        return dataclasses.replace(self, timing=dataclasses.replace(self.timing))


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        return default


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Defaults taken from the environment variables Ollama itself reads."""
    env = os.environ if env is None else env
    settings = Settings()
    settings.num_parallel = max(1, _env_int(env, "OLLAMA_NUM_PARALLEL", 1))
    settings.max_queue = max(0, _env_int(env, "OLLAMA_MAX_QUEUE", 512))
    loaded = _env_int(env, "OLLAMA_MAX_LOADED_MODELS", 0)
    settings.max_loaded_models = loaded if loaded > 0 else 3
    settings.keep_alive = parse_env_keep_alive(env.get("OLLAMA_KEEP_ALIVE", ""))
    context = _env_int(env, "OLLAMA_CONTEXT_LENGTH", 0)
    settings.context_length = context if context > 0 else 4096
    origins = env.get("OLLAMA_ORIGINS", "")
    settings.extra_origins = tuple(o.strip() for o in origins.split(",") if o.strip())
    host = env.get("OLLAMA_HOST", "").strip()
    if host:
        settings.host, settings.port = parse_host_port(host, settings.port)
    return settings


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``OLLAMA_HOST`` forms: ``host``, ``host:port``, ``:port``, ``http://host:port``."""
    text = text.split("://", 1)[-1].rstrip("/")
    host, port = text, default_port
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host = inside
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if port_text.isdigit():
            port = int(port_text)
    return host or "127.0.0.1", port
