"""The tasks file (``config/tasks.toml``): parse, validate, render templates.

Every problem is a ``TasksConfigError`` whose message is one line naming the file, the key path
(``tasks.judge.quorum``) and the accepted form, like the limits file's errors. Templates and
schemas are read and checked at load, so a config in force never touches the disk again and a
request keeps the config it started with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from management_api import names
from management_api.bodies import json_text_pieces
from management_api.proxy.wait_queue import CLASSES as PRIORITY_CLASSES
from management_api.tasks.jsonschema import SchemaError, check_schema

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

STRATEGIES = ("fallback", "fastest", "voting", "weighted", "consensus", "judge")
STREAMABLE = ("fallback", "fastest")
OUTPUTS = ("text", "json")
# Enough for every branch of every admitted request to have a thread (checked at load).
BRANCH_THREADS = 256
MAX_MODELS_PER_TASK = 8
_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_TASK_KEYS = (
    "strategy",
    "models",
    "template",
    "system",
    "options",
    "output",
    "schema",
    "hedge_after_ms",
    "weights",
    "vote_field",
    "quorum",
    "judge",
    "fallback",
    "cache_ttl_seconds",
    "priority",
)
_DEFAULTS_KEYS = ("deadline_ms", "max_deadline_ms", "max_concurrent", "cache_ttl_seconds")


class TasksConfigError(ValueError):
    """The tasks file cannot be used; the message is one line an operator can act on."""


class TemplateError(ValueError):
    """The input does not fill the template (a field it names is missing)."""


@dataclass(frozen=True)
class Template:
    text: str
    source: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_FIELD.findall(self.text)))

    def render(self, values: Mapping[str, Any]) -> str:
        """The text itself (a `Verbatim` field has none here: TypeError)."""
        return "".join(self.pieces(values))  # type: ignore[arg-type]

    def pieces(self, values: Mapping[str, Any]) -> Iterator[str | Verbatim]:
        """The rendered text as its literal parts and field values, in order (never joined:
        a large input is not copied into a second string). TemplateError for a missing field."""
        position = 0
        for match in _FIELD.finditer(self.text):
            name = match.group(1)
            if name not in values:
                raise TemplateError(f"the template needs the field '{name}'")
            if match.start() > position:
                yield self.text[position : match.start()]
            value = values[name]
            if isinstance(value, str | Verbatim):  # text, or text in another form
                yield value
            else:  # its JSON (sorted keys), written a piece at a time
                yield from json_text_pieces(value)
            position = match.end()
        if position < len(self.text):
            yield self.text[position:]


class Verbatim:
    """A field value that is already text in another form (the task's prompt, encoded once,
    as a judge's ``{{prompt}}``): `Template.pieces` hands it on as it is, for the consumer to
    splice in without a copy."""


def input_fields(value: Any) -> dict[str, Any]:
    """Template fields of a request's ``input``: ``input`` itself plus an object's keys."""
    fields: dict[str, Any] = {"input": value}
    if isinstance(value, dict):
        fields.update({k: v for k, v in value.items() if k != "input"})
    return fields


@dataclass(frozen=True)
class Judge:
    model: str
    template: Template
    deadline_share: float = 0.3


@dataclass(frozen=True)
class Task:
    name: str
    strategy: str
    models: tuple[str, ...]
    template: Template
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    output: str = "text"
    schema: dict[str, Any] | None = None
    hedge_after_ms: int = 1500
    weights: dict[str, float] = field(default_factory=dict)
    vote_field: str | None = None
    quorum: float = 0.67
    judge: Judge | None = None
    fallback: str | None = None
    cache_ttl_seconds: int = 0  # 0: results are never cached
    priority: str | None = None  # the class its branches wait in (else the caller's default)
    identity: str = ""  # hash of everything above that shapes an answer (the cache keys on it)

    def weight(self, model: str) -> float:
        return self.weights.get(model, 1.0)

    @property
    def deterministic(self) -> bool:
        """The options set temperature 0 explicitly (an omitted one is Ollama's default)."""
        return _is_zero(self.options.get("temperature"))

    @property
    def cacheable(self) -> bool:
        """Results may be kept by the response cache (when it is on)."""
        return self.cache_ttl_seconds > 0 and self.deterministic

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "models": list(self.models),
            "output": self.output,
            "schema": self.schema is not None,
            "hedge_after_ms": self.hedge_after_ms,
            "weights": dict(self.weights),
            "vote_field": self.vote_field,
            "quorum": self.quorum,
            "judge": (
                {"model": self.judge.model, "deadline_share": self.judge.deadline_share}
                if self.judge
                else None
            ),
            "fallback": self.fallback,
            "fields": list(self.template.fields),
            "cache_ttl_seconds": self.cache_ttl_seconds,
            "priority": self.priority,
        }


@dataclass(frozen=True)
class Defaults:
    deadline_ms: int = 30000
    max_deadline_ms: int = 300000
    max_concurrent: int = 4
    cache_ttl_seconds: int = 0


@dataclass(frozen=True)
class BreakerSettings:
    window: int = 20
    min_calls: int = 5
    failure_rate: float = 0.5
    open_seconds: float = 30.0


@dataclass(frozen=True)
class TasksConfig:
    defaults: Defaults = Defaults()
    breaker: BreakerSettings = BreakerSettings()
    tasks: Mapping[str, Task] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "defaults": vars(self.defaults).copy(),
            "breaker": vars(self.breaker).copy(),
        }


def _is_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def task_identity(task: Task) -> str:
    """A hash of the task's resolved definition: every setting that can change its answer
    (template and schema texts, not their paths). The TTL is left out: it changes how long an
    answer is kept, not the answer."""
    judge = task.judge
    definition = {
        "strategy": task.strategy,
        "models": list(task.models),
        "template": task.template.text,
        "system": task.system,
        "options": task.options,
        "output": task.output,
        "schema": task.schema,
        "hedge_after_ms": task.hedge_after_ms,
        "weights": task.weights,
        "vote_field": task.vote_field,
        "quorum": task.quorum,
        "judge": (
            {"model": judge.model, "template": judge.template.text, "share": judge.deadline_share}
            if judge
            else None
        ),
        "fallback": task.fallback,
    }
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# --- checks ----------------------------------------------------------------------------------


def _fail(source: str, path: str, problem: str, expected: str) -> TasksConfigError:
    return TasksConfigError(f"{source}: {path}: {problem}; expected {expected}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(
    table: Mapping[str, Any], key: str, default: int, minimum: int, src: str, path: str
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(src, f"{path}.{key}", f"got {_shown(value)}", f"an integer >= {minimum}")
    return value


def _fraction(
    table: Mapping[str, Any], key: str, default: float, src: str, path: str, *, closed: bool
) -> float:
    value = table.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = 0 < value <= 1 if closed else 0 < value < 1
    if not ok:
        form = "a number in (0, 1]" if closed else "a number between 0 and 1 (exclusive)"
        raise _fail(src, f"{path}.{key}", f"got {_shown(value)}", form)
    return float(value)


def _keys(table: Mapping[str, Any], allowed: tuple[str, ...], src: str, path: str) -> None:
    unknown = [key for key in table if key not in allowed]
    if unknown:
        where = ", ".join(f"{path}.{key}" if path else key for key in unknown)
        raise _fail(
            src,
            where,
            "unknown key" + ("s" if len(unknown) > 1 else ""),
            "one of: " + ", ".join(allowed),
        )


def _table(value: Any, src: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(src, path, f"got {_shown(value)}", f"a table [{path}]")
    return value


def _model(value: Any, src: str, path: str) -> str:
    if not isinstance(value, str) or not names.is_valid(value):
        raise _fail(src, path, f"got {_shown(value)}", 'an Ollama model name like "gemma3:4b"')
    return value.strip()


def _read_text(base: Path, value: Any, src: str, path: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.strip():
        raise _fail(src, path, f"got {_shown(value)}", "a file path relative to the tasks file")
    file = (base / value).resolve()
    try:
        return file.read_text(encoding="utf-8"), str(file)
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot read {value!r} ({getattr(exc, 'strerror', None) or 'not UTF-8'})"
        expected = "a readable UTF-8 file relative to the tasks file"
        raise _fail(src, path, problem, expected) from None


def _template(base: Path, value: Any, src: str, path: str, need: tuple[str, ...] = ()) -> Template:
    text, where = _read_text(base, value, src, path)
    template = Template(text, where)
    stray = _FIELD.sub("", text)
    if "{{" in stray or "}}" in stray:
        raise _fail(
            src,
            path,
            f"{value!r} has a malformed placeholder",
            "fields written as {{name}} (letters, digits, _)",
        )
    missing = [name for name in need if name not in template.fields]
    if missing:
        raise _fail(
            src,
            path,
            f"{value!r} lacks {{{{{missing[0]}}}}}",
            "a template that uses " + ", ".join(f"{{{{{n}}}}}" for n in need),
        )
    try:
        template.render({name: "x" for name in template.fields})
    except TemplateError as exc:  # pragma: no cover - every field was given
        raise _fail(src, path, str(exc), "a template that renders") from None
    return template


def _schema(base: Path, value: Any, src: str, path: str) -> dict[str, Any]:
    text, _ = _read_text(base, value, src, path)
    try:
        schema = json.loads(text)
        check_schema(schema)
    except ValueError as exc:
        problem = str(exc) if isinstance(exc, SchemaError) else "not valid JSON"
        expected = "a JSON Schema file (type, properties, required, items, enum, ...)"
        raise _fail(src, path, f"{value!r}: {problem}", expected) from None
    return schema


def _build_task(name: str, table: Any, base: Path, src: str, default_ttl: int = 0) -> Task:
    path = f"tasks.{name}"
    if not _TASK_NAME.match(name):
        raise _fail(src, path, "bad task name", "lower-case letters, digits and _ (max 64)")
    table = _table(table, src, path)
    _keys(table, _TASK_KEYS, src, path)
    strategy = table.get("strategy")
    if strategy not in STRATEGIES:
        raise _fail(
            src, f"{path}.strategy", f"got {_shown(strategy)}", "one of: " + ", ".join(STRATEGIES)
        )
    models = table.get("models")
    if not isinstance(models, list) or not 1 <= len(models) <= MAX_MODELS_PER_TASK:
        raise _fail(
            src,
            f"{path}.models",
            f"got {_shown(models)}",
            f"a list of 1 to {MAX_MODELS_PER_TASK} model names",
        )
    model_list = tuple(_model(m, src, f"{path}.models[{i}]") for i, m in enumerate(models))
    keys = [names.normalize(m) for m in model_list]
    if len(set(keys)) != len(keys):
        raise _fail(src, f"{path}.models", "a model is named twice", "each model once")
    template = _template(base, table.get("template"), src, f"{path}.template")
    system = table.get("system")
    if system is not None and not isinstance(system, str):
        raise _fail(src, f"{path}.system", f"got {_shown(system)}", "a string")
    options = _table(table.get("options", {}), src, f"{path}.options")
    output = table.get("output", "text")
    if output not in OUTPUTS:
        raise _fail(src, f"{path}.output", f"got {_shown(output)}", '"text" or "json"')
    schema = None
    if "schema" in table:
        if output != "json":
            raise _fail(
                src,
                f"{path}.schema",
                'given with output = "text"',
                'output = "json" when a schema is named',
            )
        schema = _schema(base, table["schema"], src, f"{path}.schema")
    weights_table = _table(table.get("weights", {}), src, f"{path}.weights")
    weights: dict[str, float] = {}
    for model, weight in weights_table.items():
        key_path = f"{path}.weights.{model}"
        if not names.is_valid(model) or names.normalize(model) not in keys:
            raise _fail(src, key_path, "not one of the task's models", "a model from models")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not (math.isfinite(weight) and weight > 0)
        ):
            raise _fail(src, key_path, f"got {_shown(weight)}", "a positive number")
        weights[model_list[keys.index(names.normalize(model))]] = float(weight)
    vote_field = table.get("vote_field")
    if vote_field is not None and (not isinstance(vote_field, str) or not vote_field):
        raise _fail(src, f"{path}.vote_field", f"got {_shown(vote_field)}", "a field name")
    judge = None
    if "judge" in table:
        judge_table = _table(table["judge"], src, f"{path}.judge")
        _keys(judge_table, ("model", "template", "deadline_share"), src, f"{path}.judge")
        judge = Judge(
            model=_model(judge_table.get("model"), src, f"{path}.judge.model"),
            template=_template(
                base,
                judge_table.get("template"),
                src,
                f"{path}.judge.template",
                need=("candidates",),
            ),
            deadline_share=_fraction(
                judge_table, "deadline_share", 0.3, src, f"{path}.judge", closed=False
            ),
        )
    elif strategy == "judge":
        raise _fail(src, f"{path}.judge", "missing", 'judge = { model = "...", template = "..." }')
    fallback = table.get("fallback")
    if fallback is not None and (fallback not in STRATEGIES or fallback in ("judge",)):
        raise _fail(
            src,
            f"{path}.fallback",
            f"got {_shown(fallback)}",
            "one of: fallback, fastest, voting, weighted, consensus",
        )
    options = dict(options)
    priority = table.get("priority")
    if priority is not None and priority not in PRIORITY_CLASSES:
        raise _fail(src, f"{path}.priority", f"got {_shown(priority)}",
                    " or ".join(f'"{c}"' for c in PRIORITY_CLASSES))  # fmt: skip
    cache_ttl = default_ttl
    if "cache_ttl_seconds" in table:
        cache_ttl = _int(table, "cache_ttl_seconds", 0, 0, src, path)
        if cache_ttl > 0 and not _is_zero(options.get("temperature")):
            # A TTL that could never apply is a mistake, not a setting (only results of
            # temperature 0 are deterministic enough to keep).
            raise _fail(
                src,
                f"{path}.cache_ttl_seconds",
                "set but options.temperature is not 0",
                "options = { temperature = 0, ... } or cache_ttl_seconds = 0",
            )
    elif not _is_zero(options.get("temperature")):
        cache_ttl = 0  # the [defaults] TTL applies to temperature-0 tasks only
    task = Task(
        name=name,
        strategy=strategy,
        models=model_list,
        template=template,
        system=system,
        options=options,
        output=output,
        schema=schema,
        hedge_after_ms=_int(table, "hedge_after_ms", 1500, 1, src, path),
        weights=weights,
        vote_field=vote_field,
        quorum=_fraction(table, "quorum", 0.67, src, path, closed=True),
        judge=judge,
        fallback=fallback,
        cache_ttl_seconds=cache_ttl,
        priority=priority,
    )
    return dataclasses.replace(task, identity=task_identity(task))


def build_tasks(data: Mapping[str, Any], source: str, base: Path) -> TasksConfig:
    """Validate a decoded TOML document into a ``TasksConfig``."""
    _keys(data, ("defaults", "breaker", "tasks"), source, "")
    table = _table(data.get("defaults", {}), source, "defaults")
    _keys(table, _DEFAULTS_KEYS, source, "defaults")
    defaults = Defaults(
        deadline_ms=_int(table, "deadline_ms", 30000, 1, source, "defaults"),
        max_deadline_ms=_int(table, "max_deadline_ms", 300000, 1, source, "defaults"),
        max_concurrent=_int(table, "max_concurrent", 4, 1, source, "defaults"),
        cache_ttl_seconds=_int(table, "cache_ttl_seconds", 0, 0, source, "defaults"),
    )
    if defaults.deadline_ms > defaults.max_deadline_ms:
        raise _fail(
            source,
            "defaults.deadline_ms",
            "larger than max_deadline_ms",
            "deadline_ms <= max_deadline_ms",
        )
    table = _table(data.get("breaker", {}), source, "breaker")
    _keys(table, ("window", "min_calls", "failure_rate", "open_seconds"), source, "breaker")
    open_seconds = table.get("open_seconds", 30)
    if (
        isinstance(open_seconds, bool)
        or not isinstance(open_seconds, int | float)
        or not (math.isfinite(open_seconds) and open_seconds > 0)
    ):
        raise _fail(
            source,
            "breaker.open_seconds",
            f"got {_shown(open_seconds)}",
            "a positive number of seconds",
        )
    breaker = BreakerSettings(
        window=_int(table, "window", 20, 1, source, "breaker"),
        min_calls=_int(table, "min_calls", 5, 1, source, "breaker"),
        failure_rate=_fraction(table, "failure_rate", 0.5, source, "breaker", closed=True),
        open_seconds=float(open_seconds),
    )
    if breaker.min_calls > breaker.window:
        raise _fail(source, "breaker.min_calls", "larger than window", "min_calls <= window")
    tasks_table = _table(data.get("tasks", {}), source, "tasks")
    tasks = {
        name: _build_task(name, t, base, source, defaults.cache_ttl_seconds)
        for name, t in tasks_table.items()
    }
    widest = max((len(t.models) + 1 for t in tasks.values()), default=1)
    if defaults.max_concurrent * widest > BRANCH_THREADS:
        raise _fail(
            source,
            "defaults.max_concurrent",
            f"{defaults.max_concurrent} requests x {widest} branches exceed "
            f"{BRANCH_THREADS} branch threads",
            f"at most {BRANCH_THREADS // widest} for these tasks",
        )
    return TasksConfig(defaults=defaults, breaker=breaker, tasks=tasks, source=source)


def load_tasks(path: str | os.PathLike[str]) -> TasksConfig:
    """Load and validate the tasks file; a missing file means no tasks (logged by the caller)."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        return TasksConfig(source=None)
    except OSError as exc:
        raise TasksConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TasksConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TasksConfigError(f"{source}: invalid TOML: {exc}") from exc
    return build_tasks(data, source, Path(source).resolve().parent)
