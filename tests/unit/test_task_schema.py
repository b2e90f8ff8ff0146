"""A task's answer schema: refused at load outside what Ollama's grammar follows, and answers
held to it by the jsonschema library (Draft 2020-12), booleans apart from numbers included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from management_api.settings import PROJECT_ROOT
from management_api.tasks.jsonschema import SchemaError, check_schema, validate


@pytest.mark.parametrize(
    ("value", "schema", "problem"),
    [
        # Python's True == 1 and False == 0; JSON's booleans are not numbers.
        (1, {"enum": [True]}, "$: 1 is not one of [True]"),
        (0, {"const": False}, "$: False was expected"),
        (True, {"enum": [1, 2]}, "$: True is not one of [1, 2]"),
        (False, {"const": 0}, "$: 0 was expected"),
        ({"flag": 1}, {"properties": {"flag": {"enum": [True, False]}}},
         "$.flag: 1 is not one of [True, False]"),
    ],
)  # fmt: skip
def test_a_boolean_is_not_a_number(value: Any, schema: dict[str, Any], problem: str) -> None:
    check_schema(schema)
    assert validate(value, schema) == problem


@pytest.mark.parametrize(
    ("value", "schema"),
    [
        (True, {"enum": [True]}),
        (1, {"enum": [1, 2]}),
        (False, {"const": False}),
        (2.0, {"type": "integer"}),  # 2.0 is an integer in JSON Schema
        ({"a": None}, {"properties": {"a": {"type": ["string", "null"]}}}),
    ],
)
def test_conforming_values_pass(value: Any, schema: dict[str, Any]) -> None:
    assert validate(value, schema) is None


def test_the_first_problem_names_its_path() -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["tags"],
        "additionalProperties": False,
    }
    assert validate({"tags": ["a", 2]}, schema) == "$.tags[1]: 2 is not of type 'string'"
    assert validate({}, schema) == "$: 'tags' is a required property"
    assert validate({"tags": [], "x": 1}, schema) == (
        "$: Additional properties are not allowed ('x' was unexpected)"
    )


def test_non_finite_numbers_are_refused() -> None:
    # json.loads reads NaN, which every bound lets through.
    value = json.loads('{"score": NaN}')
    assert validate(value, {"properties": {"score": {"minimum": 0, "maximum": 1}}}) == (
        "$.score: not a finite number"
    )


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"typ": "object"}, "$: unsupported keyword(s) typ"),
        ({"properties": {"d": {"type": "string", "format": "date"}}},
         "$.properties.d: unsupported keyword(s) format"),
        ({"items": {"$ref": "#/$defs/x"}}, "$.items: unsupported keyword(s) $ref"),
        ({"anyOf": [{"type": "string"}, {"pattern": "^a"}]},
         "$.anyOf[1]: unsupported keyword(s) pattern"),
        ({"additionalProperties": {"oneOf": []}},
         "$.additionalProperties: unsupported keyword(s) oneOf"),
        ({"items": True}, "$.items: a schema must be an object"),
        ([], "$: a schema must be an object"),
        ({"enum": []}, "$.enum: must be a non-empty list"),
        # Within the allow-list but not valid Draft 2020-12: the library's meta-schema says so.
        ({"type": "objekt"}, "$.type: 'objekt' is not valid under any of the given schemas"),
        ({"minLength": -1}, "$.minLength: -1 is less than the minimum of 0"),
        ({"required": [1]}, "$.required[0]: 1 is not of type 'string'"),
        ({"anyOf": []}, "$.anyOf: [] should be non-empty"),
    ],
)  # fmt: skip
def test_schemas_outside_the_allow_list_or_the_draft_are_refused(schema: Any, message: str) -> None:
    with pytest.raises(SchemaError) as refused:
        check_schema(schema)
    assert str(refused.value) == message


def test_the_shipped_schemas_are_accepted() -> None:
    paths = sorted((PROJECT_ROOT / "config" / "schemas").glob("*.json"))
    assert paths
    for path in paths:
        check_schema(json.loads(path.read_text()))
