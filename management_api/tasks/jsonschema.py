"""The JSON Schema a task may give as ``schema``: only what Ollama turns into a grammar.

Validation is the ``jsonschema`` library's (Draft 2020-12). What stays here is the load-time
allow-list: Ollama builds its output grammar from some keywords and drops the others without a
word, so a schema using one would promise what no answer is held to. ``check_schema`` refuses
such a schema at load (a misspelt keyword too), ``validate`` checks an answer against a checked
schema and returns the first problem or None.
"""

from __future__ import annotations

import math
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "examples", "$comment"}
_KEYWORDS = {
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "const",
    "additionalProperties",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "anyOf",
} | _ANNOTATIONS


class SchemaError(ValueError):
    """The schema is not valid JSON Schema or uses a keyword outside the allow-list; the
    message names the path."""


def _check_keywords(schema: Any, path: str) -> None:
    """The allow-list, recursively through the keywords that hold subschemas. A boolean
    schema is refused except as ``additionalProperties``, as before the library."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: a schema must be an object")
    unknown = sorted(set(schema) - _KEYWORDS)
    if unknown:
        raise SchemaError(f"{path}: unsupported keyword(s) {', '.join(unknown)}")
    properties = schema.get("properties", {})
    if isinstance(properties, dict):
        for name, sub in properties.items():
            _check_keywords(sub, f"{path}.properties.{name}")
    if "items" in schema:
        _check_keywords(schema["items"], f"{path}.items")
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        _check_keywords(extra, f"{path}.additionalProperties")
    options = schema.get("anyOf")
    if isinstance(options, list):
        for index, sub in enumerate(options):
            _check_keywords(sub, f"{path}.anyOf[{index}]")
    # Draft 2020-12 allows an empty enum, which no value matches: a task that can never answer.
    if schema.get("enum") == []:
        raise SchemaError(f"{path}.enum: must be a non-empty list")


def check_schema(schema: Any) -> None:
    """Raise ``SchemaError`` unless ``schema`` is valid Draft 2020-12 within the allow-list."""
    _check_keywords(schema, "$")
    error = best_match(Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        raise SchemaError(f"{error.json_path}: {error.message}")


def _non_finite(value: Any, path: str) -> str | None:
    """Python's json module reads NaN and Infinity, which are not JSON; the library's bounds
    let them through (every comparison with NaN is false)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{path}[{index}]")
            if found:
                return found
    if isinstance(value, dict):
        for name, item in value.items():
            found = _non_finite(item, f"{path}.{name}")
            if found:
                return found
    return None


def validate(value: Any, schema: dict[str, Any]) -> str | None:
    """The first way ``value`` breaks ``schema`` (a checked one), or None when it conforms."""
    bad_number = _non_finite(value, "$")
    if bad_number:
        return f"{bad_number}: not a finite number"
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"
