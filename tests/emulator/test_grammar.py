"""Pure pieces of the emulator: name grammar, Go durations, Go JSON errors, timestamps."""

from __future__ import annotations

import math
import re

import pytest

from tests.fake_ollama import bodies, schemas
from tests.fake_ollama.durations import (
    DurationError,
    parse_env_keep_alive,
    parse_go_duration,
    parse_keep_alive,
)
from tests.fake_ollama.errors import ApiError
from tests.fake_ollama.names import ModelRequired, parse_model_ref, parse_name
from tests.fake_ollama.timefmt import local_rfc3339, utc_now_rfc3339


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("h/n/m:t", True),
        ("-hh/nn/mm:tt", False),
        ("hh/nn/mm:-tt", False),
        ("mm:", False),
        ("host/name:space/model:tag", False),
        ("hf.co/user/repo:Q4_K_M", True),
        ("user/model:tag", True),
        ("llama3.2", True),
        ("a/b/c/d", False),
        ("ns.with.dot/model", False),
        ("localhost:5000/ns/model:tag", True),
        ("https://registry.ollama.ai/library/x:y", True),
        ("model name", False),
        ("/model", False),
    ],
)
def test_name_validity_follows_ollama_grammar(text: str, valid: bool) -> None:
    assert parse_name(text).is_valid() is valid


def test_names_normalise_to_one_model() -> None:
    forms = [
        "llama3.2",
        "llama3.2:latest",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
    ]
    keys = {parse_name(form).key for form in forms}
    assert keys == {"registry.ollama.ai/library/llama3.2:latest"}
    assert parse_name("LLaMA3.2:LATEST").key == parse_name("llama3.2").key


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("user/model", "user/model:latest"),
        ("hf.co/bartowski/x:Q4_K_M", "hf.co/bartowski/x:Q4_K_M"),
    ],
)
def test_display_is_the_shortest_form(text: str, display: str) -> None:
    assert parse_name(text).display == display


def test_source_selectors() -> None:
    assert parse_model_ref("llama3.2:local").source == "local"
    assert parse_model_ref("gpt-oss:20b-cloud").base == "gpt-oss:20b"
    with pytest.raises(ApiError, match=r'use either :local or :cloud, not both: "x:local:cloud"'):
        parse_model_ref("x:local:cloud")
    with pytest.raises(ModelRequired):
        parse_model_ref("   ")
    with pytest.raises(ApiError, match=r"^invalid model name$"):
        parse_model_ref("bad name")


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("5m", 300_000_000_000),
        ("1h30m", 5_400_000_000_000),
        ("300ms", 300_000_000),
        ("0", 0),
        ("0s", 0),
        ("-1m", -60_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("2h45m", 9_900_000_000_000),
        ("1\u00b5s", 1_000),
        (".5s", 500_000_000),
    ],
)
def test_go_durations(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("", 'time: invalid duration ""'),
        ("abc", 'time: invalid duration "abc"'),
        ("3x", 'time: unknown unit "x" in duration "3x"'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
    ],
)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


def test_keep_alive_values() -> None:
    assert parse_keep_alive(30) == 30
    assert parse_keep_alive(0.5) == 0.5
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-1m") == math.inf
    assert parse_keep_alive("1m") == 60
    for value, message in [
        ("300", 'time: missing unit in duration "300"'),
        (True, "Unsupported type: 'bool'"),
        ({}, "Unsupported type: 'map[string]interface {}'"),
        ([1], "Unsupported type: '[]interface {}'"),
    ]:
        with pytest.raises(ApiError) as info:
            parse_keep_alive(value)
        assert (info.value.status, info.value.message) == (400, message)


def test_env_keep_alive_accepts_plain_seconds() -> None:
    assert parse_env_keep_alive("120") == 120
    assert parse_env_keep_alive("10m") == 600
    assert parse_env_keep_alive("-1") == math.inf
    assert parse_env_keep_alive("junk") == 300


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"  \n", "missing request body"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (b'{"model":', "unexpected EOF"),
        (b"{model:1}", "invalid character 'm' looking for beginning of object key string"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b'{"a":tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b'{"a":"\\q"}', "invalid character 'q' in string escape code"),
        (b'{"a":"\n"}', "invalid character '\\n' in string literal"),
        (b'{"a":1.}', "invalid character '}' after decimal point in numeric literal"),
        (b'{"a":-x}', "invalid character 'x' in numeric literal"),
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b"{'a':1}", "invalid character '\\'' looking for beginning of object key string"),
    ],
)
def test_go_decoder_syntax_messages(raw: bytes, message: str) -> None:
    with pytest.raises(bodies.BodyError) as info:
        bodies.decode(raw, schemas.GENERATE, "api.GenerateRequest")
    assert info.value.message == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"model":"m","prompt":1}',
            "json: cannot unmarshal number into Go struct field "
            "GenerateRequest.prompt of type string",
        ),
        (
            b'{"stream":"yes"}',
            "json: cannot unmarshal string into Go struct field "
            "GenerateRequest.stream of type bool",
        ),
        (
            b'{"top_logprobs":1.5}',
            "json: cannot unmarshal number 1.5 into Go struct field "
            "GenerateRequest.top_logprobs of type int",
        ),
        (
            b'{"context":["a"]}',
            "json: cannot unmarshal string into Go struct field "
            "GenerateRequest.context of type int",
        ),
        (b"[]", "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
    ],
)
def test_go_decoder_type_messages(raw: bytes, message: str) -> None:
    with pytest.raises(bodies.BodyError) as info:
        bodies.decode(raw, schemas.GENERATE, "api.GenerateRequest")
    assert info.value.message == message


def test_go_decoder_semantics() -> None:
    decoded = bodies.decode(
        b'{"MODEL":"m","prompt":null,"extra":1} trailing', schemas.GENERATE, "x.G"
    )
    assert decoded == {"model": "m"}
    assert bodies.decode(b"null", schemas.GENERATE, "x.G") == {}
    message_error = bodies.decode_value
    with pytest.raises(bodies.BodyError) as info:
        message_error(
            {"messages": [{"role": "user", "content": ["x"]}]}, schemas.CHAT, "api.ChatRequest"
        )
    assert info.value.message == (
        "json: cannot unmarshal array into Go struct field ChatRequest.messages of type string"
    )


def test_timestamps() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", utc_now_rfc3339())
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?(Z|[+-]\d\d:\d\d)", local_rfc3339(1.5e9 + 0.25)
    )
    assert local_rfc3339(math.inf)[:2] == "23"  # about 292 years ahead
