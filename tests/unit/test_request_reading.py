"""One reading of a request (issue 28): its target, and its body as Ollama's Go structs read it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from management_api import errors
from management_api.bodies import MAX_DEPTH, fold_name, go_object
from management_api.proxy import target
from management_api.proxy.inference import (
    INFERENCE_ROUTES,
    LOAD,
    MULTIPART_INFERENCE,
    OLLAMA_VERSION,
    UNLOAD,
    UNLOAD_ALL,
    classify,
    go_duration_is_zero,
    is_zero_keep_alive,
    read_body,
    read_form,
)

ROOT = Path(__file__).resolve().parents[2]

# Every route of Ollama v0.20.5's server/routes.go (GenerateRoutes) whose handler can load or
# run a model: the generate, chat and embed handlers and the middlewares in front of them.
# Read from server/routes.go (GenerateRoutes) of v0.32.15: every route that loads or runs a model.
MODEL_RUNNING_ROUTES_0_32_15 = {
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/audio/transcriptions",
    "/v1/messages",
}
# Routes of older releases (v0.20.5 ran image models there), still admitted so that an image
# built with an older OLLAMA_IMAGE is gated too; on 0.32.15 Ollama answers them 404.
OLDER_MODEL_RUNNING_ROUTES = {"/v1/images/generations", "/v1/images/edits"}


def test_the_route_table_is_the_one_of_the_ollama_the_image_ships():
    dockerfile = (ROOT / "Dockerfile").read_text()
    shipped = re.search(r"ARG OLLAMA_IMAGE=ollama/ollama:(\S+)", dockerfile)
    assert shipped is not None
    # A new Ollama: read its GenerateRoutes again, then update the table and this version.
    assert shipped.group(1) == OLLAMA_VERSION == "0.32.15"
    admitted = set(INFERENCE_ROUTES) | MULTIPART_INFERENCE
    assert admitted == MODEL_RUNNING_ROUTES_0_32_15 | OLDER_MODEL_RUNNING_ROUTES


# --- the body


def test_field_names_fold_as_go_does():
    assert fold_name("MODEL") == fold_name("Model") == "model"
    assert fold_name("\u212aeep_alive") == "keep_alive"  # Kelvin sign
    assert fold_name("\u017ftream") == "stream"  # long s
    assert fold_name("mödel") != "model"


def test_the_last_spelling_wins_in_body_order():
    assert go_object(b'{"model":"a","Model":"b"}') == {"model": "b"}
    assert go_object(b'{"Model":"b","model":"a"}') == {"model": "a"}
    # A dict keeps a repeated name at its first place; the body's order is what counts.
    assert go_object(b'{"model":"a","MODEL":"b","model":"c"}') == {"model": "c"}
    assert go_object(b'{"model":"a","MODEL":"b","model":"c","MODEL":"d"}') == {"model": "d"}
    nested = go_object(b'{"Options":{"Temperature":1},"options":{"temperature":0}}')
    assert nested == {"options": {"temperature": 0}}


@pytest.mark.parametrize("path", sorted(set(INFERENCE_ROUTES) - MULTIPART_INFERENCE))
def test_a_capitalised_model_is_the_model_on_every_route(path):
    body = {"Model": "llama3.2", "prompt": "x", "messages": [{"role": "user", "content": "x"}],
            "input": "x"}  # fmt: skip
    intent = classify(path, read_body(path, json.dumps(body).encode()))
    assert intent is not None
    assert intent.model_key == "llama3.2:latest"
    assert intent.needs_admission


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 70 + b"]" * 70,
        b'{"model":"m","prompt":"x","x":' + b"[" * 70 + b"]" * 70 + b"}",
        b'{"model":"m","prompt":"x","x":' + b'{"a":' * 70 + b"1" + b"}" * 70 + b"}",
        b"not json",
        b'["model"]',
        b'"x"',
        b'{"model":"m"',
        b'{"model":7,"prompt":"x"}',
        b'{"model":["m"],"prompt":"x"}',
    ],
)
def test_a_body_ollama_cannot_read_or_nesting_past_the_limit_is_400(raw):
    with pytest.raises(errors.BadRequest):
        read_body("/api/generate", raw)


def test_the_nesting_limit_is_64():
    assert MAX_DEPTH == 64
    ok = b'{"model":"m","x":' + b"[" * 63 + b"]" * 63 + b"}"
    assert read_body("/api/generate", ok) is not None
    with pytest.raises(errors.BadRequest, match="deeper than 64"):
        read_body("/api/generate", b'{"model":"m","x":' + b"[" * 64 + b"]" * 64 + b"}")


def test_an_empty_body_is_left_to_ollama():
    assert read_body("/api/generate", b"") is None
    assert read_body("/api/generate", b" \n") is None


def test_images_routes_are_admitted():
    for path in ("/v1/images/generations", "/v1/images/edits"):
        intent = classify(path, read_body(path, b'{"model":"x/z-image","prompt":"a cat"}'))
        assert intent is not None and intent.needs_admission and not intent.stream


FORM = (
    b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\nRIFF\x00\x01\r\n"
    b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper:small\r\n--XX--\r\n'
)


def test_a_transcription_is_admitted_on_the_model_go_reads_from_its_form():
    path = "/v1/audio/transcriptions"
    payload = read_form("multipart/form-data; boundary=XX", FORM, "")
    intent = classify(path, payload)
    assert intent is not None and intent.model_key == "whisper:small" and intent.needs_admission
    # net/http's FormValue: the URL query's value comes before the form's.
    assert read_form("multipart/form-data; boundary=XX", FORM, "model=llama3.2") == {
        "model": "llama3.2"
    }
    with pytest.raises(errors.BadRequest, match="multipart"):
        read_form("application/json", b'{"model":"m"}', "")


# --- keep_alive as api.Duration reads it


@pytest.mark.parametrize(
    ("value", "zero"),
    [
        (0, True),
        (0.0, True),
        (-0.0, True),
        (1e-10, True),  # 0.1 ns: cut to 0
        (1e-9, False),
        (-1, False),  # forever
        (True, False),
        ("0", True),
        ("0s", True),
        ("-0s", True),
        ("0h0m0s", True),
        ("0.1ns", True),
        ("0.0000000001s", True),
        ("1ns", False),
        ("5m", False),
        ("0", True),
        (" 0s", False),  # ParseDuration refuses it; so does Ollama
        ("0.", False),
        ("", False),
    ],
)
def test_zero_keep_alive(value, zero):
    assert is_zero_keep_alive(value) is zero


def test_unload_forms_with_go_spellings():
    def control(body: bytes) -> str | None:
        intent = classify("/api/generate", read_body("/api/generate", body))
        assert intent is not None
        return intent.control

    assert control(b'{"Model":"","KEEP_ALIVE":0}') == UNLOAD_ALL
    assert control(b'{"model":"","keep_alive":1e-10}') == UNLOAD_ALL
    assert control(b'{"model":"m","keep_alive":"0.1ns"}') == UNLOAD
    assert control(b'{"model":"m","keep_alive":"1s"}') == LOAD
    assert go_duration_is_zero("+0.0h")


# --- the target


@pytest.mark.parametrize(
    "path",
    [
        "/api/pull?",  # %3F
        "/api/generate?",
        "/api/delete#",  # %23
        "/api/generate\x00",  # %00
        "/api/gen\x7ferate",
        "/api/generate\n",
        "/api/../api/generate",  # %2e%2e
        "/api/./generate",
        "//api/generate",
        "/api//generate",
        "/api/generate/",
        "/api/pull/",
        "/v1/chat/completions/",
        "/api/generate/.",
    ],
)
def test_targets_two_readers_could_disagree_on_are_refused(path):
    assert target.problem(path) is not None


@pytest.mark.parametrize(
    "path",
    ["/", "/api/generate", "/API/generate", "/api/blobs/sha256:abc", "/v1/models/llama3.2:1b",
     "/ui/", "/api/models/pulls/abc"],
)  # fmt: skip
def test_ordinary_targets_pass(path):
    assert target.problem(path) is None


def test_the_forwarded_path_decodes_to_the_matched_one():
    from urllib.parse import unquote

    for path in ("/api/generate", "/api/%3F", "/api/caf\u00e9", "/v1/models/a:b", "/api/a b"):
        wire = target.wire_path(path)
        assert "?" not in wire and "#" not in wire and " " not in wire
        assert unquote(wire) == path
    assert target.wire_path("/api/generate") == "/api/generate"
