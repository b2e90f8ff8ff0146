"""The API contract: management_api/openapi.yaml against the Flask routes and the served copy.

Both directions are checked: every URL rule the app registers is documented, and every
documented operation reaches a real route — a management operation its own view, not one of the
catch-alls that forward to Ollama (otherwise a typo in the spec would hide behind them).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
import yaml
from werkzeug.exceptions import MethodNotAllowed, NotFound

from management_api.app import create_app
from tests.service_harness import ROOT

SPEC_PATH = ROOT / "management_api" / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PASSTHROUGH_TAGS = {"ollama-passthrough", "openai-passthrough"}
FORWARDING_ENDPOINTS = {"ollama_api.forward", "openai_api.forward"}
# Flask registers /static/<path:filename> by itself; the service has no static files.
FRAMEWORK_ENDPOINTS = {"static"}
# Rules whose converters span several segments, which an OpenAPI path parameter cannot.
CATCH_ALL_PATHS = {
    "/api/<path:rest>": ("/api/{path}",),
    "/v1/<path:rest>": ("/v1/{path}",),
    "/v1/llm/<path:target>": ("/v1/llm/{model}", "/v1/llm/{model}/stream"),
}
# Values that make a documented path concrete, for matching against the URL map.
SAMPLE_PARAMETERS = {
    "job_id": "0123456789abcdef",
    "model": "llama3.2:1b",
    "path": "tags",
    "file_id": "file-0123456789abcdef",
    "batch_id": "batch_0123456789abcdef",
    "name": "app.js",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def app():
    return create_app()


def _without_implied(methods: set[str]) -> set[str]:
    # HEAD is implied by GET on both sides (Werkzeug adds it to every GET rule).
    return methods - {"HEAD"} if "GET" in methods else methods


def flask_operations(app) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in FRAMEWORK_ENDPOINTS:
            continue
        methods = set(rule.methods or ())
        if getattr(rule, "provide_automatic_options", False):
            methods.discard("OPTIONS")  # Flask's automatic answer, not a route of ours
        paths = CATCH_ALL_PATHS.get(rule.rule)
        if paths is None:
            assert "<path:" not in rule.rule, f"map the catch-all {rule.rule} explicitly"
            paths = (re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule),)
        operations |= {(method, path) for path in paths for method in _without_implied(methods)}
    return operations


def spec_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def test_every_flask_route_is_documented(app, spec):
    documented: dict[str, set[str]] = {}
    for method, path, _ in spec_operations(spec):
        documented.setdefault(path, set()).add(method)
    normalized = {
        (method, path)
        for path, methods in documented.items()
        for method in _without_implied(methods)
    }
    missing = sorted(flask_operations(app) - normalized)
    assert not missing, f"routes missing from openapi.yaml: {missing}"


def test_every_documented_operation_is_a_route(app, spec):
    adapter = app.url_map.bind("localhost")
    wrong = []
    for method, path, operation in spec_operations(spec):
        url = re.sub(r"\{([^}]+)\}", lambda m: SAMPLE_PARAMETERS[m.group(1)], path)
        try:
            endpoint, _args = adapter.match(url, method=method)
        except (NotFound, MethodNotAllowed) as exc:
            wrong.append(f"{method} {path}: no route ({type(exc).__name__})")
            continue
        passthrough = bool(PASSTHROUGH_TAGS & set(operation.get("tags", ())))
        if passthrough != (endpoint in FORWARDING_ENDPOINTS):
            wrong.append(f"{method} {path}: tagged passthrough={passthrough}, served by {endpoint}")
    assert not wrong, "\n".join(wrong)


def test_the_mapping_covers_the_real_catch_alls(app):
    # If a catch-all rule changes, CATCH_ALL_PATHS must change with it.
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert set(CATCH_ALL_PATHS) <= rules


def test_spec_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(copy.deepcopy(spec))
    schema.validate()
    # Every operation loads: each $ref it uses resolves.
    errors = [str(result.err()) for result in schema.get_all_operations() if not result.ok()]
    assert not errors, errors


def test_validation_is_not_a_no_op(spec):
    broken = copy.deepcopy(spec)
    del broken["paths"]["/health"]["get"]["responses"]["200"]["description"]
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def _schemas(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    """Every Schema Object of the document (component schemas and inline `schema` values)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{key}"
            if key == "schema" or where == "#/components/schemas":
                yield here, value
            else:
                yield from _schemas(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _schemas(value, f"{where}/{index}")


def test_every_schema_is_valid_json_schema_2020_12(spec):
    schemas = list(_schemas(spec))
    assert len(schemas) > 50
    invalid = []
    for where, schema in schemas:
        candidate = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        if not jsonschema_rs.meta.is_valid(candidate):
            invalid.append(where)
    assert not invalid, invalid


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_ref_resolves_and_every_component_is_used(spec):
    refs = set(_refs(spec))
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = spec
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"unresolved {ref}"
            target = target[part]
    declared = {
        f"#/components/{kind}/{name}"
        for kind, entries in spec["components"].items()
        if kind != "securitySchemes"
        for name in entries
    }
    assert not declared - refs, f"unused components: {sorted(declared - refs)}"


def _responses(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    components = spec["components"]["responses"]
    for method, path, operation in spec_operations(spec):
        for status, response in operation["responses"].items():
            if "$ref" in response:
                response = components[response["$ref"].rsplit("/", 1)[-1]]
            yield f"{method} {path}", status, response


def test_every_response_documents_the_request_id(spec):
    missing = [
        f"{label} {status}"
        for label, status, response in _responses(spec)
        if "X-Request-ID" not in response.get("headers", {})
    ]
    assert not missing, missing


def test_every_429_and_503_documents_retry_after(spec):
    responses = [(label, status, r) for label, status, r in _responses(spec)]
    limited = [(label, r) for label, status, r in responses if status in ("429", "503")]
    assert len(limited) > 10
    missing = [label for label, response in limited if "Retry-After" not in response["headers"]]
    assert not missing, missing


def test_every_401_documents_www_authenticate(spec):
    unauthorized = [(label, r) for label, status, r in _responses(spec) if status == "401"]
    assert unauthorized
    missing = [label for label, r in unauthorized if "WWW-Authenticate" not in r["headers"]]
    assert not missing, missing


def test_health_probes_need_no_key_everything_else_may(spec):
    for method, path, operation in spec_operations(spec):
        # The status page's files carry no data; its snapshot (/api/status) is a normal read.
        if path.startswith(("/health", "/ui")):
            assert operation.get("security") == [], f"{method} {path}"
        else:
            assert "security" not in operation, f"{method} {path}"
    # Optional: the empty requirement lets callers send no key when LLM_AUTH_MODE is off.
    assert {} in spec["security"]
    assert {"bearerAuth": []} in spec["security"] and {"apiKeyAuth": []} in spec["security"]


def test_served_document_is_the_yaml_as_json(service, spec):
    response = requests.get(service.management + "/openapi.json", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Request-ID"]
    assert response.json() == spec
    again = requests.get(service.proxy + "/openapi.json", timeout=5)
    assert again.content == response.content
