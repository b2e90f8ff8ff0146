"""Per-model limits: parse and validate the limits TOML, resolve a model to its limits, reload.

The file (``config/limits.toml`` by default) has four parts::

    [defaults]   max_concurrency, max_queue, max_wait_seconds,
                 first_byte_timeout_seconds, idle_timeout_seconds, release_timeout_seconds,
                 early_headers_after_seconds
    [global]     max_concurrency (0 = no cap across models)
    [scheduler]  policy ("fifo" | "affinity"), max_loaded_models, max_hold_seconds
    [[models]]   match = "<name or glob>" plus any [defaults] key as an override

Every problem is a ``LimitsConfigError`` whose message is one line naming the file, the key path
(``models[1].max_queue``; entries are numbered from 0) and the accepted form, because an operator
reads it in ``docker logs`` and must be able to fix the file from that line alone.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from management_api.proxy.file_reload import SettledFileReloader
from management_api.proxy.wait_queue import CLASSES as PRIORITY_CLASSES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

Normalizer = Callable[[str], str]

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ModelLimits:
    """The effective limits of one model (defaults merged with its matching entry)."""

    max_concurrency: int = 1
    max_queue: int = 64
    max_wait_seconds: float = 300.0
    first_byte_timeout_seconds: float = 600.0
    idle_timeout_seconds: float = 120.0
    # After an early exit, how long a slot stays taken while Ollama has not yet let go of the
    # request (it finishes evaluating a cancelled prompt first); then it is released anyway.
    release_timeout_seconds: float = 30.0
    # 0 = off: a non-stream request answers nothing until its body is ready.
    early_headers_after_seconds: float = 0.0
    # A waiter older than this is served next within its model whatever its class (no
    # starvation); 0 = classes alone decide. Below max_wait_seconds to matter.
    aging_seconds: float = 120.0
    # The class of a request nothing else classes (header, service_tier, task, key).
    priority: str = "standard"
    # "priority": aging, class, fair share, FIFO per caller (wait_queue.py); "fifo": arrival
    # order alone, as Ollama itself serves (no shedding either).
    queue_order: str = "priority"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LIMIT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelLimits))


@dataclass(frozen=True)
class ModelRule:
    """One ``[[models]]`` entry: its pattern, the keys it overrides, its effective limits."""

    match: str
    limits: ModelLimits
    overrides: tuple[str, ...] = ()

    @property
    def is_glob(self) -> bool:
        return any(ch in GLOB_CHARS for ch in self.match)

    def to_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "glob": self.is_glob,
            "overrides": list(self.overrides),
            "limits": self.limits.to_dict(),
        }


FIFO = "fifo"
AFFINITY = "affinity"
SCHEDULER_POLICIES: tuple[str, ...] = (FIFO, AFFINITY)


@dataclass(frozen=True)
class SchedulerConfig:
    """``[scheduler]``: how admissions are ordered across models (see proxy/scheduler.py)."""

    policy: str = FIFO
    max_loaded_models: int = 0  # 0 = OLLAMA_MAX_LOADED_MODELS and memory vs model sizes
    max_hold_seconds: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SCHEDULER_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SchedulerConfig))


@dataclass(frozen=True)
class LimitsConfig:
    """A whole validated limits file. ``source`` is None for the built-in defaults."""

    defaults: ModelLimits = ModelLimits()
    global_max_concurrency: int = 0
    models: tuple[ModelRule, ...] = ()
    source: str | None = None
    scheduler: SchedulerConfig = SchedulerConfig()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "defaults": self.defaults.to_dict(),
            "global": {"max_concurrency": self.global_max_concurrency},
            "scheduler": self.scheduler.to_dict(),
            "models": [rule.to_dict() for rule in self.models],
        }


class LimitsConfigError(ValueError):
    """The limits file cannot be used; the message is one line an operator can act on."""


def simple_normalize(name: str) -> str:
    """Lower-case and default the tag to ``latest``.

    A stand-in for ``names.normalize`` (which also drops the default registry and namespace);
    the service injects the real one.
    """
    canonical = name.strip().lower()
    last_segment = canonical.rsplit("/", 1)[-1]
    if canonical and ":" not in last_segment:
        canonical += ":latest"
    return canonical


# --- parsing -------------------------------------------------------------------------------------

_INT_FORMS = {
    "max_concurrency": ("an integer >= 1", 1),
    "max_queue": ("an integer >= 0", 0),
}
_SECONDS_FORM = "a positive finite number of seconds"
_OPTIONAL_SECONDS_FORM = "a finite number of seconds >= 0 (0 = off)"
_ZERO_ALLOWED = frozenset({"early_headers_after_seconds", "aging_seconds"})
_GLOBAL_FORM = "an integer >= 0 (0 = no global cap)"
QUEUE_ORDERS = ("priority", "fifo")
_PRIORITY_FORM = " or ".join(f'"{c}"' for c in PRIORITY_CLASSES)
_POLICY_FORM = " or ".join(f'"{policy}"' for policy in SCHEDULER_POLICIES)
_MAX_LOADED_FORM = "an integer >= 0 (0 = from OLLAMA_MAX_LOADED_MODELS and memory)"


def _fail(source: str, path: str, problem: str, expected: str) -> LimitsConfigError:
    return LimitsConfigError(f"{source}: {path}: {problem}; expected {expected}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_int(value: Any, minimum: int, source: str, path: str, form: str) -> int:
    # bool is an int subclass; "true" for a limit is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, path, f"got {_shown(value)}", form)
    return value


def _check_seconds(value: Any, source: str, path: str, *, zero_ok: bool = False) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    # inf would disable a bound and nan compares false with everything: both are refused.
    if not is_number or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        form = _OPTIONAL_SECONDS_FORM if zero_ok else _SECONDS_FORM
        raise _fail(source, path, f"got {_shown(value)}", form)
    return float(value)


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], source: str, path: str) -> None:
    unknown = [key for key in table if key not in allowed]
    if unknown:
        names = ", ".join(f"{path}.{key}" if path else key for key in unknown)
        # At the top level a table is what the user thinks of as a section.
        is_section = not path and all(isinstance(table[key], (dict, list)) for key in unknown)
        kind = "section" if is_section else "key"
        plural = "s" if len(unknown) > 1 else ""
        raise _fail(source, names, f"unknown {kind}{plural}", "one of: " + ", ".join(allowed))


def _check_table(value: Any, source: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(source, path, f"got {_shown(value)}", f"a table [{path}]")
    return value


def _limit_overrides(table: Mapping[str, Any], source: str, path: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in LIMIT_KEYS:
        if key not in table:
            continue
        key_path = f"{path}.{key}"
        if key == "priority":
            value = table[key]
            if value not in PRIORITY_CLASSES:
                raise _fail(source, key_path, f"got {_shown(value)}", _PRIORITY_FORM)
            values[key] = value
        elif key == "queue_order":
            value = table[key]
            if value not in QUEUE_ORDERS:
                raise _fail(source, key_path, f"got {_shown(value)}", '"priority" or "fifo"')
            values[key] = value
        elif key in _INT_FORMS:
            form, minimum = _INT_FORMS[key]
            values[key] = _check_int(table[key], minimum, source, key_path, form)
        else:
            zero_ok = key in _ZERO_ALLOWED
            values[key] = _check_seconds(table[key], source, key_path, zero_ok=zero_ok)
    return values


def _build_scheduler(value: Any, source: str) -> SchedulerConfig:
    table = _check_table(value, source, "scheduler")
    _check_keys(table, SCHEDULER_KEYS, source, "scheduler")
    policy = table.get("policy", FIFO)
    if policy not in SCHEDULER_POLICIES:
        raise _fail(source, "scheduler.policy", f"got {_shown(policy)}", _POLICY_FORM)
    max_loaded = _check_int(
        table.get("max_loaded_models", 0),
        0,
        source,
        "scheduler.max_loaded_models",
        _MAX_LOADED_FORM,
    )
    hold = SchedulerConfig.max_hold_seconds
    if "max_hold_seconds" in table:
        hold = _check_seconds(table["max_hold_seconds"], source, "scheduler.max_hold_seconds")
    return SchedulerConfig(policy=policy, max_loaded_models=max_loaded, max_hold_seconds=hold)


def _build_rule(index: int, entry: Any, defaults: ModelLimits, source: str) -> ModelRule:
    path = f"models[{index}]"
    if not isinstance(entry, dict):
        raise _fail(source, path, f"got {_shown(entry)}", "a [[models]] table")
    _check_keys(entry, ("match", *LIMIT_KEYS), source, path)
    match = entry.get("match")
    if not isinstance(match, str) or not match.strip():
        problem = "missing" if match is None else f"got {_shown(match)}"
        raise _fail(
            source, f"{path}.match", problem, 'a non-empty model name or glob, e.g. "qwen3*"'
        )
    overrides = _limit_overrides(entry, source, path)
    return ModelRule(
        match=match.strip(),
        limits=dataclasses.replace(defaults, **overrides),
        overrides=tuple(overrides),
    )


def build_limits(data: Mapping[str, Any], source: str) -> LimitsConfig:
    """Validate a decoded TOML document into a ``LimitsConfig``."""
    _check_keys(data, ("defaults", "global", "models", "scheduler"), source, "")

    defaults_table = _check_table(data.get("defaults", {}), source, "defaults")
    _check_keys(defaults_table, LIMIT_KEYS, source, "defaults")
    defaults = ModelLimits(**_limit_overrides(defaults_table, source, "defaults"))

    global_table = _check_table(data.get("global", {}), source, "global")
    _check_keys(global_table, ("max_concurrency",), source, "global")
    global_cap = _check_int(
        global_table.get("max_concurrency", 0), 0, source, "global.max_concurrency", _GLOBAL_FORM
    )

    entries = data.get("models", [])
    if not isinstance(entries, list):
        raise _fail(source, "models", f"got {_shown(entries)}", "[[models]] tables")
    rules = tuple(_build_rule(i, entry, defaults, source) for i, entry in enumerate(entries))
    scheduler = _build_scheduler(data.get("scheduler", {}), source)
    return LimitsConfig(
        defaults=defaults,
        global_max_concurrency=global_cap,
        models=rules,
        source=source,
        scheduler=scheduler,
    )


def parse_limits(text: str, source: str = "<string>") -> LimitsConfig:
    """Parse and validate limits TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LimitsConfigError(f"{source}: invalid TOML: {exc}") from exc
    return build_limits(data, source)


def load_limits(path: str | os.PathLike[str]) -> LimitsConfig:
    """Load the limits file; a missing file means the built-in defaults (logged)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        log.warning("limits file %s not found; using built-in defaults", source)
        return LimitsConfig()
    except OSError as exc:
        raise LimitsConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LimitsConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
    return parse_limits(text, source)


# --- what the worker can hold --------------------------------------------------------------------


def reserved_threads(worker_threads: int) -> int:
    """Pool threads kept for everything that is not a held inference request: management
    routes, pass-through calls, and the 429 answers themselves."""
    return max(2, worker_threads // 16)


def request_capacity(worker_threads: int) -> int:
    """How many inference requests (running plus queued, all models together) the one worker
    can hold: each holds a pool thread while it waits or streams."""
    return max(1, worker_threads - reserved_threads(worker_threads))


def check_capacity(config: LimitsConfig, worker_threads: int) -> None:
    """Refuse a config under which one model alone may hold more requests than the worker can:
    its queue would promise places that only exist as connections waiting for a thread."""
    capacity = request_capacity(worker_threads)
    source = config.source or "<built-in>"
    entries = [("defaults", config.defaults)]
    entries += [(f"models[{i}]", rule.limits) for i, rule in enumerate(config.models)]
    for path, limits in entries:
        held = limits.max_concurrency + limits.max_queue
        if held > capacity:
            raise _fail(
                source,
                f"{path}.max_queue",
                f"max_concurrency {limits.max_concurrency} + max_queue {limits.max_queue} = "
                f"{held} requests, more than the worker holds ({capacity}: LLM_WORKER_THREADS "
                f"{worker_threads} less {reserved_threads(worker_threads)} kept for other routes)",
                f"max_concurrency + max_queue <= {capacity}, or a larger LLM_WORKER_THREADS",
            )


# --- resolution ----------------------------------------------------------------------------------


class LimitsResolver:
    """Finds the effective limits of a model name: first matching ``[[models]]`` entry wins.

    An exact ``match`` is normalised with the same normaliser as the names looked up; a glob
    (any of ``*?[``) is lower-cased and matched with ``fnmatch`` against the normalised name, so
    ``nomic-embed-text*`` matches ``nomic-embed-text:latest``.
    """

    def __init__(self, config: LimitsConfig, normalize: Normalizer = simple_normalize) -> None:
        self.config = config
        self._normalize = normalize
        compiled: list[tuple[ModelRule, bool, str]] = []
        for index, rule in enumerate(config.models):
            if rule.is_glob:
                compiled.append((rule, True, rule.match.lower()))
                continue
            try:
                key = normalize(rule.match)
            except ValueError as exc:
                raise _fail(
                    config.source or "<built-in>",
                    f"models[{index}].match",
                    f"{_shown(rule.match)} is not a valid model name ({exc})",
                    'a model name like "llama3.2:latest" or a glob like "qwen3*"',
                ) from exc
            compiled.append((rule, False, key))
        self._compiled = tuple(compiled)

    @property
    def exact_models(self) -> tuple[str, ...]:
        """Normalised names that exact entries configure, in file order, without repeats."""
        return tuple(dict.fromkeys(key for _, is_glob, key in self._compiled if not is_glob))

    def rule_for(self, name: str) -> ModelRule | None:
        key = self._normalize(name)
        for rule, is_glob, pattern in self._compiled:
            if fnmatch.fnmatchcase(key, pattern) if is_glob else key == pattern:
                return rule
        return None

    def limits_for(self, name: str) -> ModelLimits:
        rule = self.rule_for(name)
        return rule.limits if rule is not None else self.config.defaults


# --- reloading -----------------------------------------------------------------------------------


class LimitsReloader(SettledFileReloader):
    """Re-reads the limits file when it changes and hands each good config to ``apply``.

    ``apply`` is normally ``Limiter.update_config``; if it raises ``LimitsConfigError`` the new
    config is refused like a broken file (the rules of change, settling and SIGHUP are
    `SettledFileReloader`'s).
    """

    kind = "limits"

    def __init__(
        self,
        path: str | os.PathLike[str],
        apply: Callable[[LimitsConfig], None],
        *,
        interval_seconds: float = 2.0,
    ) -> None:
        super().__init__(path, interval_seconds=interval_seconds)
        self._apply = apply
        self._current: LimitsConfig | None = None

    @property
    def current(self) -> LimitsConfig | None:
        """The last config that was applied."""
        return self._current

    def load_initial(self) -> LimitsConfig:
        """Load and apply the file at start-up; errors propagate (there is no last good config)."""
        with self._lock:
            # Stat before reading: an edit racing the read then shows up at the next poll.
            self._seen = self._signature()
            config = load_limits(self.path)
            self._apply(config)
            self._current = config
            return config

    def _reload_locked(self) -> bool:
        try:
            config = load_limits(self.path)
            self._apply(config)
        except LimitsConfigError as exc:
            log.error("limits reload refused, keeping the last good config: %s", exc)
            return False
        except Exception:
            # The poll thread must survive a bug in apply; the traceback is what's needed then.
            log.exception("limits reload failed, keeping the last good config")
            return False
        self._current = config
        log.info(
            "limits reloaded from %s: defaults max_concurrency=%d max_queue=%d, "
            "global max_concurrency=%d, %d model entries",
            self.path,
            config.defaults.max_concurrency,
            config.defaults.max_queue,
            config.global_max_concurrency,
            len(config.models),
        )
        return True
