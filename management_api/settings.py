"""Service settings: one frozen `Settings`, read from the environment and an optional TOML file.

Precedence: environment > config file (``LLM_CONFIG_FILE``) > defaults. Every setting is declared
once in `SETTINGS` with its variable, default, parser and help line; docs/configuration.md's
tables are checked against this list by a test. An invalid value stops start-up with one line that
names the variable and the accepted form.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from management_api import names

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04 in the container base)
    import tomli as tomllib  # type: ignore[no-redef]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE_VARIABLE = "LLM_CONFIG_FILE"


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message is one line."""


# --- parsers: each takes the raw value (str from env, or a TOML value) and returns the typed value


def _invalid(variable: str, raw: object, accepted: str) -> SettingsError:
    return SettingsError(f"{variable}={raw!r} is invalid: expected {accepted}")


def parse_port(variable: str, raw: object) -> int:
    accepted = "a TCP port number between 1 and 65535"
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise _invalid(variable, raw, accepted) from None
    if isinstance(raw, bool) or not 1 <= value <= 65535:
        raise _invalid(variable, raw, accepted)
    return value


def parse_bool(variable: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _invalid(variable, raw, "true or false (also 1/0, yes/no, on/off)")


def _number(variable: str, raw: object, accepted: str) -> float:
    if isinstance(raw, bool):
        raise _invalid(variable, raw, accepted)
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise _invalid(variable, raw, accepted) from None
    if value != value or value in (float("inf"), float("-inf")):  # NaN / infinity
        raise _invalid(variable, raw, accepted)
    return value


def positive_seconds(variable: str, raw: object) -> float:
    accepted = "a number of seconds greater than 0"
    value = _number(variable, raw, accepted)
    if value <= 0:
        raise _invalid(variable, raw, accepted)
    return value


def non_negative_seconds(variable: str, raw: object) -> float:
    accepted = "a number of seconds, 0 or more"
    value = _number(variable, raw, accepted)
    if value < 0:
        raise _invalid(variable, raw, accepted)
    return value


def positive_number(variable: str, raw: object) -> float:
    accepted = "a number greater than 0"
    value = _number(variable, raw, accepted)
    if value <= 0:
        raise _invalid(variable, raw, accepted)
    return value


def non_negative_number(variable: str, raw: object) -> float:
    accepted = "a number, 0 or more"
    value = _number(variable, raw, accepted)
    if value < 0:
        raise _invalid(variable, raw, accepted)
    return value


def _integer(variable: str, raw: object, accepted: str, minimum: int) -> int:
    if isinstance(raw, bool):
        raise _invalid(variable, raw, accepted)
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise _invalid(variable, raw, accepted) from None
    if value < minimum:
        raise _invalid(variable, raw, accepted)
    return value


def positive_int(variable: str, raw: object) -> int:
    return _integer(variable, raw, "a whole number of 1 or more", 1)


def non_negative_int(variable: str, raw: object) -> int:
    return _integer(variable, raw, "a whole number, 0 or more", 0)


def keep_alive_seconds(variable: str, raw: object) -> int:
    # Ollama reads OLLAMA_KEEP_ALIVE as whole seconds; negative means "keep loaded forever".
    if isinstance(raw, bool):
        raise _invalid(variable, raw, "whole seconds (negative = keep loaded forever)")
    try:
        return int(str(raw).strip())
    except ValueError:
        raise _invalid(variable, raw, "whole seconds (negative = keep loaded forever)") from None


def http_url(variable: str, raw: object) -> str:
    accepted = "an http:// or https:// URL with a host, e.g. http://127.0.0.1:11433"
    text = str(raw).strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise _invalid(variable, raw, accepted) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(variable, raw, accepted)
    if parts.query or parts.fragment or (parts.path not in ("", "/")):
        raise _invalid(variable, raw, accepted)
    del port
    return text.rstrip("/")


def model_name(variable: str, raw: object) -> str:
    text = str(raw).strip()
    if not names.is_valid(text):
        raise _invalid(
            variable, raw, "an Ollama model name such as llama3.2:3b or hf.co/org/repo:Q4_K_M"
        )
    return text


def text_value(variable: str, raw: object) -> str:
    return str(raw).strip()


def path_value(variable: str, raw: object) -> Path:
    text = str(raw).strip()
    if not text:
        raise _invalid(variable, raw, "a file or directory path")
    path = Path(text).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def choice(*allowed: str) -> Callable[[str, object], str]:
    def parse(variable: str, raw: object) -> str:
        text = str(raw).strip().lower()
        if text not in allowed:
            raise _invalid(variable, raw, "one of " + ", ".join(allowed))
        return text

    return parse


def comma_list(variable: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, list | tuple):
        items = [str(item).strip() for item in raw]
    else:
        items = [item.strip() for item in str(raw).split(",")]
    return tuple(item for item in items if item)


def bind_host(variable: str, raw: object) -> str:
    text = str(raw).strip()
    if not text or any(ch.isspace() for ch in text) or "/" in text:
        raise _invalid(variable, raw, "an IP address or host name to listen on, e.g. 0.0.0.0")
    return text


# --- the declared settings


@dataclass(frozen=True)
class Setting:
    attr: str
    variable: str
    default: Any  # a raw value run through `parse`, or None for "not set"
    parse: Callable[[str, object], Any]
    help: str


def _default_models_dir(env: Mapping[str, str]) -> str:
    return env.get("OLLAMA_MODELS") or str(Path.home() / ".ollama" / "models")


SETTINGS: tuple[Setting, ...] = (
    Setting("ollama_url", "OLLAMA_URL", "http://127.0.0.1:11433", http_url,
            "the Ollama server the service wraps (internal address)"),
    Setting("proxy_port", "LLM_PROXY_PORT", 11434, parse_port,
            "Ollama-compatible proxy port (what clients of Ollama connect to)"),
    Setting("management_port", "LLM_MANAGEMENT_PORT", 11436, parse_port,
            "management API port (also answers the Ollama-compatible routes)"),
    Setting("bind_host", "LLM_BIND_HOST", "0.0.0.0", bind_host,
            "address both ports listen on"),
    Setting("proxy_enabled", "LLM_PROXY_ENABLED", True, parse_bool,
            "false: Ollama serves the proxy port; the API listens on the management port only"),
    Setting("default_model", "LLM_MODEL", None, model_name,
            "default model: loaded by session reset, shown by /api/info"),
    Setting("keep_alive_seconds", "LLM_KEEP_ALIVE_SECONDS", None, keep_alive_seconds,
            "idle model kept loaded this long (-> OLLAMA_KEEP_ALIVE); negative = forever"),
    Setting("context_length", "LLM_CONTEXT_LENGTH", None, positive_int,
            "default context length (mapped to OLLAMA_CONTEXT_LENGTH)"),
    Setting("stats_interval", "LLM_STATS_INTERVAL", 5, positive_seconds,
            "telemetry sampling period, seconds"),
    Setting("model_cache_ttl", "LLM_MODEL_CACHE_TTL", 30, non_negative_seconds,
            "how long the installed-model list is cached, seconds"),
    Setting("limits_file", "LLM_LIMITS_FILE", "config/limits.toml", path_value,
            "per-model concurrency limits (TOML); relative paths are relative to the project"),
    Setting("limits_reload_seconds", "LLM_LIMITS_RELOAD_SECONDS", 2, positive_seconds,
            "how often the limits file is checked for changes, seconds"),
    Setting("tasks_file", "LLM_TASKS_FILE", "config/tasks.toml", path_value,
            "tasks for POST /v1/infer (TOML; reloaded like the limits file)"),
    Setting("log_dir", "LLM_LOG_DIR", "logs", path_value,
            "service logs; the Ollama log read by the health check lives here"),
    Setting("worker_threads", "LLM_WORKER_THREADS", 256, positive_int,
            "threads of the one gunicorn worker (each queued or streaming request holds one)"),
    Setting("header_timeout_seconds", "LLM_HEADER_TIMEOUT_SECONDS", 5, positive_seconds,
            "a connection that has not sent a whole request head this long is closed, seconds"),
    Setting("send_timeout_seconds", "LLM_SEND_TIMEOUT_SECONDS", 60, positive_seconds,
            "a client that takes no answer bytes this long is dropped (client_stalled), seconds"),
    Setting("upstream_connect_timeout", "LLM_UPSTREAM_CONNECT_TIMEOUT", 3, positive_seconds,
            "connect timeout of every call to Ollama, seconds"),
    Setting("upstream_read_timeout", "LLM_UPSTREAM_READ_TIMEOUT", 30, positive_seconds,
            "read timeout of management calls to Ollama (tags, ps, show, delete), seconds"),
    Setting("upstream_grace_seconds", "LLM_UPSTREAM_GRACE_SECONDS", 10, non_negative_seconds,
            "how long an inference request retries connecting while Ollama restarts, seconds"),
    Setting("ollama_log_file", "LLM_OLLAMA_LOG_FILE", None, path_value,
            "Ollama's log, read by /health for GPU errors (default $LLM_LOG_DIR/ollama.log)"),
    Setting("health_log_window", "LLM_HEALTH_LOG_WINDOW", 600, positive_seconds,
            "seconds of Ollama log that count for /health"),
    Setting("pull_retries", "LLM_PULL_RETRIES", 3, non_negative_int,
            "retries of a pull job after a transient failure"),
    Setting("pull_stall_seconds", "LLM_PULL_STALL_SECONDS", 60, positive_seconds,
            "no pull progress for this long counts as a failed attempt, seconds"),
    Setting("models_dir", "LLM_MODELS_DIR", None, path_value,
            "where the pull disk check looks (default: OLLAMA_MODELS, else ~/.ollama/models)"),
    Setting("pull_min_free_gb", "LLM_PULL_MIN_FREE_GB", 2, non_negative_number,
            "free disk a pull needs beyond the model's size, GB; 0 disables the check"),
    Setting("management_url", "LLM_MANAGEMENT_URL", None, http_url,
            "what healthcheck.sh calls (default http://127.0.0.1:$LLM_MANAGEMENT_PORT)"),
    Setting("auth_mode", "LLM_AUTH_MODE", "off", choice("off", "management", "all"),
            "which routes need an API key: off, management (mutations) or all"),
    Setting("api_keys", "LLM_API_KEYS", "", comma_list,
            "API keys as name:key:role entries separated by commas"),
    Setting("api_keys_file", "LLM_API_KEYS_FILE", None, path_value,
            "file with one name:key:role entry per line"),
    Setting("cors_origins", "LLM_CORS_ORIGINS", "", comma_list,
            "browser origins allowed besides Ollama's defaults, separated by commas"),
    Setting("ollama_origins", "OLLAMA_ORIGINS", "", comma_list,
            "Ollama's own extra allowed origins: honoured by the service too"),
    Setting("allowed_hosts", "LLM_ALLOWED_HOSTS", "", comma_list,
            "public Host names the service answers (.example.com: with subdomains; *: any)"),
    Setting("max_body_mb", "LLM_MAX_BODY_MB", 64, positive_int,
            "largest accepted request body, MB"),
    Setting("infer_max_input_mb", "LLM_INFER_MAX_INPUT_MB", 8, positive_number,
            "largest accepted POST /v1/infer body, MB (each model of the task is sent it)"),
    Setting("import_dir", "LLM_IMPORT_DIR", None, path_value,
            "folder whose *.gguf files are imported as models at start"),
    Setting("cache_max_mb", "LLM_CACHE_MAX_MB", 0, non_negative_number,
            "response cache size, MB (deterministic answers and embeddings); 0 = off"),
    Setting("cache_ttl_seconds", "LLM_CACHE_TTL_SECONDS", 900, positive_seconds,
            "how long a cached answer is served, seconds"),
    Setting("cache_shared_across_keys", "LLM_CACHE_SHARED_ACROSS_KEYS", False, parse_bool,
            "whether API keys share cache entries (off: a hit never tells one key what another "
            "asked)"),
    Setting("state_dir", "LLM_STATE_DIR", None, path_value,
            "durable state (jobs and usage databases); default: `state` beside LLM_LOG_DIR"),
    Setting("usage_retention_days", "LLM_USAGE_RETENTION_DAYS", 90, positive_number,
            "how long hourly usage buckets are kept (usage.sqlite3 in LLM_STATE_DIR), days"),
    Setting("usage_flush_seconds", "LLM_USAGE_FLUSH_SECONDS", 2, positive_seconds,
            "how often counted usage is written to SQLite, seconds (and at stop)"),
    Setting("jobs_workers", "LLM_JOBS_WORKERS", 4, positive_int,
            "threads that run jobs (POST /api/jobs): at most this many jobs run at once"),
    Setting("jobs_max_concurrent", "LLM_JOBS_MAX_CONCURRENT", 2, positive_int,
            "max_concurrent_jobs: jobs of one caller (API key) running at once"),
    Setting("jobs_max_queued", "LLM_JOBS_MAX_QUEUED", 10000, positive_int,
            "jobs queued or running in all; one more is answered 429"),
    Setting("jobs_max_attempts", "LLM_JOBS_MAX_ATTEMPTS", 3, positive_int,
            "attempts of a job interrupted by a restart or refused with 429/503, then failed"),
    Setting("jobs_ttl_seconds", "LLM_JOBS_TTL_SECONDS", 86400, positive_seconds,
            "how long a finished job and its result are kept, seconds"),
    Setting("jobs_max_stored", "LLM_JOBS_MAX_STORED", 10000, positive_int,
            "finished jobs kept at most (the oldest are forgotten first)"),
    Setting("jobs_max_stored_mb", "LLM_JOBS_MAX_STORED_MB", 256, positive_number,
            "results and errors of finished jobs kept at most, MB"),
    Setting("jobs_callback_hosts", "LLM_JOBS_CALLBACK_HOSTS", "", comma_list,
            "hosts (host or host:port) a job's callback_url may name; empty = callbacks off"),
    Setting("jobs_callback_attempts", "LLM_JOBS_CALLBACK_ATTEMPTS", 5, positive_int,
            "deliveries of a job's callback tried (backoff 1, 2, 4, … s) before giving up"),
    Setting("jobs_callback_timeout_seconds", "LLM_JOBS_CALLBACK_TIMEOUT_SECONDS", 10,
            positive_seconds, "how long one callback delivery waits for its answer, seconds"),
    Setting("jobs_max_result_mb", "LLM_JOBS_MAX_RESULT_MB", 16, positive_number,
            "largest result of one job, MB; a larger answer fails the job"),
    Setting("supervisor_socket", "LLM_SUPERVISOR_SOCKET", "/run/llm-service/supervisor.sock",
            path_value, "supervisord's control socket; the hard session reset restarts Ollama "
            "through it"),
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    ollama_url: str
    proxy_port: int
    management_port: int
    bind_host: str
    proxy_enabled: bool
    default_model: str | None
    keep_alive_seconds: int | None
    context_length: int | None
    stats_interval: float
    model_cache_ttl: float
    limits_file: Path
    limits_reload_seconds: float
    tasks_file: Path
    log_dir: Path
    worker_threads: int
    header_timeout_seconds: float
    send_timeout_seconds: float
    upstream_connect_timeout: float
    upstream_read_timeout: float
    upstream_grace_seconds: float
    ollama_log_file: Path
    health_log_window: float
    pull_retries: int
    pull_stall_seconds: float
    models_dir: Path
    pull_min_free_gb: float
    management_url: str
    auth_mode: str
    api_keys: tuple[str, ...]
    api_keys_file: Path | None
    cors_origins: tuple[str, ...]
    ollama_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    max_body_mb: int
    infer_max_input_mb: float
    import_dir: Path | None
    cache_max_mb: float
    cache_ttl_seconds: float
    cache_shared_across_keys: bool
    supervisor_socket: Path
    state_dir: Path
    usage_retention_days: float
    usage_flush_seconds: float
    jobs_workers: int
    jobs_max_concurrent: int
    jobs_max_queued: int
    jobs_max_attempts: int
    jobs_ttl_seconds: float
    jobs_max_stored: int
    jobs_max_stored_mb: float
    jobs_max_result_mb: float
    jobs_callback_hosts: tuple[str, ...]
    jobs_callback_attempts: int
    jobs_callback_timeout_seconds: float
    config_file: Path | None = field(default=None)

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Build settings from `environ` (default os.environ) and an optional TOML file.

        The file is ``config_file`` or ``$LLM_CONFIG_FILE``; its top-level keys are the same
        variable names as the environment (``LLM_MODEL = "llama3.2"``).
        """
        env = os.environ if environ is None else environ
        file_path = config_file or env.get(CONFIG_FILE_VARIABLE) or None
        file_values = _read_config_file(Path(file_path)) if file_path else {}

        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.variable)
            if raw is not None and raw.strip() == "":
                raw = None  # an empty variable (common in compose files) means "not set"
            if raw is None:
                raw = file_values.get(setting.variable)
            if raw is None:
                raw = setting.default
            values[setting.attr] = None if raw is None else setting.parse(setting.variable, raw)

        if values["models_dir"] is None:
            values["models_dir"] = path_value("LLM_MODELS_DIR", _default_models_dir(env))
        if values["ollama_log_file"] is None:
            values["ollama_log_file"] = values["log_dir"] / "ollama.log"
        if values["state_dir"] is None:
            values["state_dir"] = values["log_dir"].parent / "state"
        if values["state_dir"].exists() and not values["state_dir"].is_dir():
            raise SettingsError(
                f"LLM_STATE_DIR={str(values['state_dir'])!r} is not a directory: expected a "
                "directory for the jobs database (it is created when missing)"
            )
        if values["management_url"] is None:
            values["management_url"] = f"http://127.0.0.1:{values['management_port']}"
        if values["proxy_enabled"] and values["proxy_port"] == values["management_port"]:
            raise SettingsError(
                f"LLM_PROXY_PORT and LLM_MANAGEMENT_PORT are both {values['proxy_port']}: "
                "expected two different ports"
            )
        return cls(**values, config_file=Path(file_path) if file_path else None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view without secrets (API keys are counted, never shown)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_keys":
                value = len(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{CONFIG_FILE_VARIABLE}={str(path)!r}: file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError(
            f"{CONFIG_FILE_VARIABLE}={str(path)!r} is not a readable TOML file: {reason}"
        ) from None
    known = {s.variable for s in SETTINGS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(
            f"{CONFIG_FILE_VARIABLE}={str(path)!r} has unknown keys {', '.join(unknown)}: "
            "expected setting names such as LLM_MODEL"
        )
    return data
