"""Every error path renders JSON in the route's protocol and never leaks exception text."""

import json

import pytest
from flask import Blueprint, request

from management_api import errors
from management_api.app import create_app
from management_api.settings import Settings

SECRET = "http://127.0.0.1:11433/internal-detail"


@pytest.fixture
def client():
    settings = Settings.load({"LLM_MAX_BODY_MB": "1"})
    app = create_app(settings)
    bp = Blueprint("probe", __name__)

    @bp.post("/api/probe/json")
    @bp.post("/v1/probe/json")
    def read_json():
        return {"got": request.get_json()}

    @bp.get("/api/probe/boom")
    @bp.get("/v1/probe/boom")
    @bp.get("/v1/llm/probe/boom")
    def boom():
        raise RuntimeError(f"connection to {SECRET} failed")

    @bp.get("/api/probe/limit")
    @bp.get("/v1/probe/limit")
    @bp.get("/v1/llm/probe/limit")
    def limit():
        raise errors.ConcurrencyLimit(
            "Model 'gemma3:4b' is at capacity",
            headers={"Retry-After": "3"},
            model="gemma3:4b",
            limit=2,
            in_flight=2,
            queued=64,
            reason="queue_full",
        )

    app.register_blueprint(bp)
    return app.test_client()


def assert_canonical(response, status, type_):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.headers[errors.ERROR_SOURCE_HEADER] == "llm-service"
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["type"] == type_
    assert "<html" not in response.get_data(as_text=True).lower()
    return body


def test_unknown_route_is_json_404(client):
    body = assert_canonical(client.get("/no/such/route"), 404, "not_found")
    assert "/no/such/route" in body["error"]


def test_wrong_method_is_json_405_with_allow(client):
    response = client.delete("/health/live")
    assert_canonical(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_malformed_json_is_400_without_parser_text(client):
    response = client.post("/api/probe/json", data=b'{"model": ', content_type="application/json")
    body = assert_canonical(response, 400, "invalid_request")
    assert "Expecting" not in body["error"]


def test_body_over_the_cap_is_413(client):
    response = client.post(
        "/api/probe/json", data=b"x" * (1024 * 1024 + 10), content_type="application/json"
    )
    assert_canonical(response, 413, "payload_too_large")


def test_unexpected_exception_is_500_without_its_text(client, caplog):
    response = client.get("/api/probe/boom", headers={"X-Request-ID": "req-123"})
    body = assert_canonical(response, 500, "internal_error")
    raw = response.get_data(as_text=True)
    assert SECRET not in raw and "RuntimeError" not in raw
    assert body["request_id"] == "req-123"
    assert SECRET in caplog.text  # the operator still sees it in the log


def test_openai_routes_get_the_openai_envelope(client):
    response = client.get("/v1/probe/limit")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    body = response.get_json()
    assert body == {
        "error": {
            "message": "Model 'gemma3:4b' is at capacity",
            "type": "rate_limit_error",
            "param": None,
            "code": "concurrency_limit",
        },
        "retry_after_seconds": 3,
    }
    boom = client.get("/v1/probe/boom").get_json()
    assert boom["error"]["type"] == "api_error"
    assert SECRET not in json.dumps(boom)
    malformed = client.post("/v1/probe/json", data=b"{", content_type="application/json")
    assert malformed.get_json()["error"]["type"] == "invalid_request_error"


def test_ollama_routes_get_typed_bodies_with_extra_fields(client):
    response = client.get("/api/probe/limit")
    assert response.headers["Retry-After"] == "3"
    assert response.get_json() == {
        "error": "Model 'gemma3:4b' is at capacity",
        "type": "concurrency_limit",
        "model": "gemma3:4b",
        "limit": 2,
        "in_flight": 2,
        "queued": 64,
        "reason": "queue_full",
        "retry_after_seconds": 3,
    }


def test_every_429_body_names_its_retry_after_in_seconds(client):
    for path in ("/api/probe/limit", "/v1/probe/limit", "/v1/llm/probe/limit"):
        response = client.get(path)
        assert response.status_code == 429
        assert response.get_json()["retry_after_seconds"] == int(response.headers["Retry-After"])
    # A 429 raised without a header still gets both, and they agree.
    status, headers, payload = errors.render_error(errors.ConcurrencyLimit("busy"), errors.OLLAMA)
    assert status == 429 and dict(headers)["Retry-After"] == "1"
    assert json.loads(payload)["retry_after_seconds"] == 1
    assert "retry_after_seconds" not in errors.error_body(errors.UpstreamTimeout())


def test_hermes_routes_use_the_hermes_taxonomy(client):
    assert client.get("/v1/llm/probe/limit").get_json()["type"] == "concurrency_limit"
    assert client.get("/v1/llm/probe/boom").get_json()["type"] == "internal_error"
    assert errors.error_body(errors.ServiceUnavailable(), errors.HERMES)["type"] == (
        "connection_error"
    )
    assert errors.error_body(errors.BadRequest("prompt is required"), errors.HERMES)["type"] == (
        "validation_error"
    )
    assert errors.error_body(errors.UpstreamTimeout(), errors.HERMES)["type"] == "timeout"


def test_flavor_by_path():
    assert errors.flavor_for_path("/api/generate") == errors.OLLAMA
    assert errors.flavor_for_path("/api/models") == errors.OLLAMA
    assert errors.flavor_for_path("/v1/chat/completions") == errors.OPENAI
    assert errors.flavor_for_path("/v1/llm/gemma3:4b/stream") == errors.HERMES
    assert errors.flavor_for_path("/v1/status") == errors.HERMES


def test_request_id_is_echoed_or_generated(client):
    assert (
        client.get("/health/live", headers={"X-Request-ID": "abc-1"}).headers["X-Request-ID"]
        == "abc-1"
    )
    generated = client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "X-Request-ID"
    ]
    assert len(generated) == 32 and generated.isalnum()
