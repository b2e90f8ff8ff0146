"""Exact error statuses, texts and content types of the native API (raw HTTP)."""

from __future__ import annotations

import pytest
import requests

from tests.fake_ollama.harness import FakeOllama

JSON_UTF8 = "application/json; charset=utf-8"


def post(
    fake: FakeOllama, path: str, body: object = None, raw: bytes | None = None
) -> requests.Response:
    if raw is not None:
        return requests.post(fake.url + path, data=raw)
    return requests.post(fake.url + path, json=body)


def assert_error(
    response: requests.Response, status: int, text: str, ctype: str = JSON_UTF8
) -> None:
    assert (response.status_code, response.json()) == (status, {"error": text})
    assert response.headers["Content-Type"] == ctype


@pytest.mark.parametrize(
    "path",
    [
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/pull",
        "/api/show",
        "/api/copy",
        "/api/create",
        "/api/push",
    ],
)
def test_empty_body(fake: FakeOllama, path: str) -> None:
    assert_error(post(fake, path, raw=b""), 400, "missing request body")


def test_malformed_and_mistyped_bodies(fake: FakeOllama) -> None:
    assert_error(
        post(fake, "/api/generate", raw=b"x"),
        400,
        "invalid character 'x' looking for beginning of value",
    )
    assert_error(post(fake, "/api/chat", raw=b'{"model":"a"'), 400, "unexpected EOF")
    assert_error(
        post(fake, "/api/generate", {"model": "llama3.2:1b", "prompt": 5}),
        400,
        "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string",
    )
    # Content-Type is not checked: curl's form default works.
    response = requests.post(
        fake.url + "/api/show",
        data=b'{"model":"llama3.2:1b"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "text"),
    [
        ("/api/generate", 404, "model '' not found"),
        ("/api/embed", 404, "model '' not found"),
        ("/api/chat", 400, "model is required"),
        ("/api/embeddings", 400, "model is required"),
        ("/api/show", 400, "model is required"),
        ("/api/push", 400, "model is required"),
        ("/api/pull", 400, "invalid model name"),
        ("/api/create", 400, "invalid model name"),
    ],
)
def test_empty_model_per_route(fake: FakeOllama, path: str, status: int, text: str) -> None:
    assert_error(post(fake, path, {"model": ""}), status, text)


def test_null_body_is_an_empty_request(fake: FakeOllama) -> None:
    assert_error(post(fake, "/api/generate", raw=b"null"), 404, "model '' not found")


def test_both_not_found_spellings(fake: FakeOllama) -> None:
    assert_error(
        post(fake, "/api/generate", {"model": "nope", "prompt": "x"}), 404, "model 'nope' not found"
    )
    assert_error(post(fake, "/api/chat", {"model": "nope"}), 404, "model 'nope' not found")
    assert_error(
        post(fake, "/api/embed", {"model": "nope", "input": "x"}),
        404,
        'model "nope" not found, try pulling it first',
    )
    assert_error(
        post(fake, "/api/embeddings", {"model": "nope", "prompt": "x"}),
        404,
        'model "nope" not found, try pulling it first',
    )
    assert_error(post(fake, "/api/show", {"model": "foo"}), 404, "model 'foo:latest' not found")


def test_invalid_names(fake: FakeOllama) -> None:
    for path in ("/api/generate", "/api/chat", "/api/show", "/api/pull"):
        assert_error(post(fake, path, {"model": "bad name"}), 400, "invalid model name")
    response = requests.delete(fake.url + "/api/delete", json={"model": "bad name"})
    assert_error(response, 400, 'name "bad name" is invalid')
    assert_error(
        post(fake, "/api/copy", {"source": "", "destination": "x"}), 400, 'source "" is invalid'
    )
    assert_error(
        post(fake, "/api/copy", {"source": "llama3.2:1b", "destination": "a b"}),
        400,
        'destination "a b" is invalid',
    )
    assert_error(
        post(fake, "/api/generate", {"model": "x:local:cloud"}),
        400,
        'use either :local or :cloud, not both: "x:local:cloud"',
    )


def test_capability_errors(fake: FakeOllama) -> None:
    assert_error(
        post(
            fake,
            "/api/chat",
            {
                "model": "gemma3:4b",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
        ),
        400,
        "registry.ollama.ai/library/gemma3:4b does not support tools",
    )
    assert_error(
        post(fake, "/api/generate", {"model": "llama3.2", "prompt": "x", "suffix": "y"}),
        400,
        "registry.ollama.ai/library/llama3.2:latest does not support insert",
    )
    assert_error(
        post(fake, "/api/generate", {"model": "llama3.2", "prompt": "x", "think": True}),
        400,
        '"llama3.2" does not support thinking',
    )
    assert_error(
        post(fake, "/api/generate", {"model": "nomic-embed-text", "prompt": "x"}),
        400,
        '"nomic-embed-text" does not support generate',
    )
    assert_error(
        post(
            fake,
            "/api/chat",
            {"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]},
        ),
        400,
        '"nomic-embed-text" does not support chat',
    )


def test_request_validation_errors(fake: FakeOllama) -> None:
    assert_error(
        post(fake, "/api/generate", {"model": "llama3.2:1b", "prompt": "x", "top_logprobs": 21}),
        400,
        "top_logprobs must be between 0 and 20",
    )
    assert_error(
        post(
            fake,
            "/api/generate",
            {"model": "llama3.2:1b", "prompt": "x", "raw": True, "system": "s"},
        ),
        400,
        "raw mode does not support template, system, or context",
    )
    assert_error(
        post(fake, "/api/embed", {"model": "nomic-embed-text", "input": [1, 2]}),
        400,
        "invalid input type",
    )
    assert_error(
        post(fake, "/api/embed", {"model": "all-minilm", "input": "x"}),
        404,
        'model "all-minilm" not found, try pulling it first',
    )
    assert_error(
        post(
            fake,
            "/api/embed",
            {"model": "nomic-embed-text", "input": "word " * 3000, "truncate": False},
        ),
        400,
        "the input length exceeds the context length",
    )
    assert_error(
        post(
            fake,
            "/api/generate",
            {"model": "llama3.2:1b", "prompt": "x", "options": {"temperature": "hot"}},
        ),
        500,
        'option "temperature" must be of type float32',
    )


@pytest.mark.parametrize(
    ("keep_alive", "text"),
    [
        ("300", 'time: missing unit in duration "300"'),
        (True, "Unsupported type: 'bool'"),
        ({"m": 1}, "Unsupported type: 'map[string]interface {}'"),
        ("5 minutes", 'time: unknown unit " minutes" in duration "5 minutes"'),
    ],
)
def test_bad_keep_alive(fake: FakeOllama, keep_alive: object, text: str) -> None:
    body = {"model": "llama3.2:1b", "prompt": "x", "keep_alive": keep_alive}
    assert_error(post(fake, "/api/generate", body), 400, text)


def test_copy_and_delete(fake: FakeOllama) -> None:
    copied = post(fake, "/api/copy", {"source": "llama3.2:1b", "destination": "backup"})
    assert (copied.status_code, copied.content) == (200, b"")
    names = [m["name"] for m in requests.get(fake.url + "/api/tags").json()["models"]]
    assert names[0] == "backup:latest"
    assert_error(
        post(fake, "/api/copy", {"source": "ghost", "destination": "x"}),
        404,
        'model "ghost" not found',
    )
    deleted = requests.delete(fake.url + "/api/delete", json={"model": "backup"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert_error(
        requests.delete(fake.url + "/api/delete", json={"model": "backup"}),
        404,
        "model 'backup' not found",
    )
    assert_error(requests.delete(fake.url + "/api/delete", json={}), 400, "model is required")


def test_delete_does_not_unload(fake: FakeOllama) -> None:
    post(fake, "/api/generate", {"model": "llama3.2:1b"})
    requests.delete(fake.url + "/api/delete", json={"model": "llama3.2:1b"})
    assert [m["name"] for m in requests.get(fake.url + "/api/ps").json()["models"]] == [
        "llama3.2:1b"
    ]


def test_blobs(fake: FakeOllama) -> None:
    import hashlib

    data = b"GGUF emulated weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    missing = requests.head(fake.url + f"/api/blobs/{digest}")
    assert missing.status_code == 404
    wrong = requests.post(fake.url + "/api/blobs/sha256:" + "0" * 64, data=data)
    assert_error(wrong, 400, f'digest mismatch, expected "sha256:{"0" * 64}", got "{digest}"')
    assert requests.post(fake.url + f"/api/blobs/{digest}", data=data).status_code == 201
    assert requests.post(fake.url + f"/api/blobs/{digest}", data=data).status_code == 200
    assert requests.head(fake.url + f"/api/blobs/{digest}").status_code == 200
    created = post(
        fake, "/api/create", {"model": "from-blob", "files": {"m.gguf": digest}, "stream": False}
    )
    assert created.json() == {"status": "success"}


def test_push_answers_like_an_unauthorised_registry(fake: FakeOllama) -> None:
    lines = [
        line
        for line in requests.post(
            fake.url + "/api/push", json={"model": "llama3.2:1b"}
        ).iter_lines()
        if line
    ]
    assert lines[0] == b'{"status":"retrieving manifest"}'
    assert lines[-1].startswith(b'{"error":"you are not authorized to push')
    missing = requests.post(fake.url + "/api/push", json={"model": "ghost", "stream": False})
    assert missing.status_code == 500 and "no such file or directory" in missing.json()["error"]
    assert missing.headers["Content-Type"] == "application/json"


def test_a_lone_surrogate_escape_reads_as_u_fffd(fake: FakeOllama) -> None:
    # encoding/json decodes an escaped surrogate that is not half of a pair as U+FFFD.
    r = post(fake, "/api/copy", raw=b'{"source": "a\\ud800b", "destination": "x"}')
    assert_error(r, 400, 'source "a\ufffdb" is invalid')
