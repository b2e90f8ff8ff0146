import pytest

from management_api import names


@pytest.mark.parametrize(
    "name",
    [
        "h/n/m:t",  # name_test.go
        "llama3.2",
        "llama3.2:1b",
        "qwen3:14b-q8",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "user/model:tag",
        "localhost:5000/ns/model:tag",  # a host may carry a port
        "https://registry.example.com/ns/model:v1",
        "_underscore/model_1:tag_1",
        "nomic-embed-text",
        "gpt-oss:20b-cloud",
        "llama3.2:local",
        "m" * 80,
    ],
)
def test_valid_names(name):
    assert names.is_valid(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-hh/nn/mm:tt",  # name_test.go: host starts with '-'
        "hh/nn/mm:-tt",  # tag starts with '-'
        "mm:",  # empty tag
        "host/name:space/model:tag",  # ':' inside a path segment -> '/' in the tag
        "a/b/c/d",  # more than three segments
        "/model",
        "ns//model",
        "model with space",
        "ns.dot/model",  # namespaces have no '.'
        ".model",
        "model@sha256:abc",  # @digest is not parsed at the baseline
        "m" * 81,
        "model:" + "t" * 81,
        "x:local:cloud",
        None,
        42,
    ],
)
def test_invalid_names(name):
    assert not names.is_valid(name)
    with pytest.raises(names.InvalidModelName):
        names.parse(name)


@pytest.mark.parametrize(
    "spelling",
    [
        "llama3.2",
        "llama3.2:latest",
        "library/llama3.2",
        "library/llama3.2:latest",
        "registry.ollama.ai/library/llama3.2:latest",
        "LLAMA3.2",
        "Library/Llama3.2:LATEST",
        "https://registry.ollama.ai/library/llama3.2",
        "llama3.2:local",
    ],
)
def test_normalisation_equivalences(spelling):
    assert names.normalize(spelling) == "llama3.2:latest"
    assert names.same_model(spelling, "llama3.2")


def test_display_forms_follow_display_shortest():
    assert names.parse("llama3.2").display() == "llama3.2:latest"
    assert names.parse("user/model").display() == "user/model:latest"
    assert names.parse("hf.co/Org/Repo:Q4_K_M").display() == "hf.co/Org/Repo:Q4_K_M"
    assert names.normalize("hf.co/Org/Repo:Q4_K_M") == "hf.co/org/repo:q4_k_m"
    assert names.parse("qwen:7b").full == "registry.ollama.ai/library/qwen:7b"


def test_different_models_are_not_the_same():
    assert not names.same_model("llama3.2:1b", "llama3.2:3b")
    assert not names.same_model("user/model", "model")
    assert not names.same_model("bad name", "bad name")


def test_parts_are_split_from_the_right():
    parsed = names.parse("localhost:5000/ns/model:tag")
    assert (parsed.host, parsed.namespace, parsed.model, parsed.tag) == (
        "localhost:5000",
        "ns",
        "model",
        "tag",
    )
    no_tag = names.parse("localhost:5000/ns/model")
    assert no_tag.host == "localhost:5000" and no_tag.tag == "latest"


def test_overlong_input_is_rejected_before_parsing():
    assert not names.is_valid("a" * 100_000)
