"""A large body held about once (issue 29): read, parsed, keyed, encoded for the branches and
Ollama's answer read, each without a second or third copy of the whole."""

from __future__ import annotations

import io
import json
import math

import pytest

from management_api import errors
from management_api.bodies import (
    ESCAPE_SLICE,
    canonical_pieces,
    json_text_pieces,
    loads_releasing,
    read_buffer,
    string_pieces,
)
from management_api.cache.policy import _canonical, task_key
from management_api.proxy.answer_lines import LineReader
from management_api.tasks.branch import Branch, body_parts, encode_prompt
from management_api.tasks.config import Template, TemplateError, input_fields

ODD_TEXTS = [
    "",
    "plain",
    'quote " backslash \\ slash / tab \t newline \n nul \x00 bell \x07',
    "é" * 10 + "漢字" + "😀" + "\u2028\u2029",
    "x" * (ESCAPE_SLICE - 1) + "é" + '"' * 3 + "y" * (ESCAPE_SLICE + 5),
    "\ud800 lone and \udfff lone",
]


class Chunks(io.RawIOBase):
    """A client's body arriving a few bytes at a time (as gunicorn hands it over)."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._data, self._step, self._at = data, step, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        piece = self._data[self._at : self._at + min(self._step, len(b))]
        b[: len(piece)] = piece
        self._at += len(piece)
        self.asked = max(getattr(self, "asked", 0), len(b))
        return len(piece)


def test_a_body_is_read_into_one_buffer_a_piece_at_a_time():
    body = json.dumps({"input": "é" * 100000}).encode()
    stream = Chunks(body, step=5000)
    buffer = read_buffer(stream, len(body), limit=10**6)
    assert isinstance(buffer, bytearray) and buffer == body
    assert stream.asked <= 2**16  # never asked (nor held) ahead of what arrives


def test_a_body_shorter_than_its_length_is_400():
    with pytest.raises(errors.BadRequest):
        read_buffer(Chunks(b'{"a": 1}'), 100, limit=10**6)


def test_a_chunked_body_is_read_one_byte_past_the_limit_at_most():
    buffer = read_buffer(io.BytesIO(b"x" * 10**6), None, limit=1000)
    assert 1000 < len(buffer) <= 1000 + 2**16
    assert read_buffer(io.BytesIO(b'{"a":1}'), None, limit=1000) == b'{"a":1}'


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_loads_releasing_reads_as_json_loads_and_empties_the_buffer(text):
    raw = json.dumps({"input": text, "n": [1, 2.5, None, True]}).encode()
    buffer = bytearray(raw)
    assert loads_releasing(buffer) == json.loads(raw)
    assert len(buffer) == 0


def test_loads_releasing_refuses_what_loads_bounded_refuses():
    with pytest.raises(ValueError):
        loads_releasing(bytearray(b"[" * 100 + b"]" * 100))
    with pytest.raises(ValueError):
        loads_releasing(bytearray(b'{"a": '))
    with pytest.raises(UnicodeDecodeError):
        loads_releasing(bytearray(b'{"a": "\xff"}'))


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_string_pieces_join_to_the_json_escape(text):
    joined = b"".join(string_pieces(text, "surrogatepass"))
    expected = json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")
    assert joined == expected


def test_a_lone_surrogate_is_sent_as_the_escape_go_reads_as_u_fffd():
    sent = b'"' + b"".join(string_pieces("a\ud800b")) + b'"'
    assert sent == b'"a\\ud800b"'
    assert json.loads(sent) == "a\ud800b"  # what the caller sent, byte for byte


@pytest.mark.parametrize(
    "value",
    [
        {"task": "t", "config": "abc", "request": {"input": text, "models": ["a", "b"]}}
        for text in ODD_TEXTS
    ]
    + [
        {"b": 1, "a": [1.5, -0.0, 10**30, True, False, None], "é": {"z": {}, "y": []}},
        [],
        "s",
        3,
        {"input": {"field": "x" * (3 * ESCAPE_SLICE), "n": 1e-7}},
    ],
)
def test_canonical_pieces_join_to_the_canonical_json(value):
    assert b"".join(canonical_pieces(value)) == _canonical(value)


@pytest.mark.parametrize(
    "value",
    [
        {"b": [1, 2.5, None, True], "a": {"z": "é" * (ESCAPE_SLICE + 3), "y": []}, "c": {}},
        ["x", {"k": "\u2028"}, []],
        "plain",
        math.nan,
    ],
)
def test_json_text_pieces_join_to_json_dumps(value):
    expected = json.dumps(value, ensure_ascii=False, sort_keys=True)
    assert "".join(json_text_pieces(value)) == expected


def test_canonical_pieces_refuse_what_json_cannot_repeat():
    with pytest.raises(ValueError):
        b"".join(canonical_pieces({"a": [math.nan]}))
    with pytest.raises(ValueError):
        task_key("t", "id", ["d"], {"input": {"x": math.inf}})


def test_the_task_key_is_the_hash_of_the_canonical_fields():
    fields = {"input": "x" * (2 * ESCAPE_SLICE + 3), "strategy": "voting", "models": ["a"]}
    one = task_key("t", "id", ["d1", "d2"], fields)
    assert one == task_key("t", "id", ["d1", "d2"], dict(fields))
    assert one != task_key("t", "id", ["d1", "d2"], {**fields, "input": "x"})
    assert one != task_key("t", "id", ["d1", "d2"], fields, scope="key-a")


@pytest.mark.parametrize(
    "template",
    ["{{input}}", "Text:\n{{ input }}\n--\n{{lang}} {{input}}.", "no fields", "{{lang}}{{input}}"],
)
@pytest.mark.parametrize(
    "value", [{"input": "é\n" * 40000, "lang": "de"}, {"input": "", "lang": ""}]
)
def test_the_prompt_is_encoded_from_the_template_as_its_rendered_text(template, value):
    t = Template(template, "inline")
    fields = input_fields(value)
    rendered = t.render(fields)
    assert "".join(t.pieces(fields)) == rendered
    encoded = encode_prompt(t.pieces(fields))
    assert json.loads(b"".join(encoded.pieces)) == rendered
    assert encoded.head == rendered[:200]


def test_a_template_field_that_is_not_text_is_its_json_and_a_missing_one_is_refused():
    t = Template("{{meta}} / {{input}}", "inline")
    assert t.render(input_fields({"meta": {"b": 1, "a": "é"}})) == (
        '{"a": "é", "b": 1} / {"meta": {"a": "é", "b": 1}}'
    )
    with pytest.raises(TemplateError, match="'meta'"):
        encode_prompt(t.pieces(input_fields("only input")))


def test_a_judge_prompt_splices_the_task_prompt_without_copying_it():
    task_prompt = encode_prompt(Template("Q: {{input}}", "t").pieces({"input": "é" * 70000}))
    judge = Template("Request:\n{{prompt}}\nAnswers:\n{{candidates}}", "j")
    encoded = encode_prompt(judge.pieces({"prompt": task_prompt, "candidates": "[c1]\nyes"}))
    text = "Request:\nQ: " + "é" * 70000 + "\nAnswers:\n[c1]\nyes"
    assert json.loads(b"".join(encoded.pieces)) == text
    assert encoded.head == text[:200]
    assert all(any(p is q for q in encoded.pieces) for p in task_prompt.pieces[1:-1])


def test_a_branch_body_is_ollamas_body_with_the_shared_prompt():
    prompt = "Say: " + "é" * 70000
    branch = Branch(index=0, model="m:1b", role="candidate", output="text", schema=None,
                    deadline=0.0, body={"model": "m:1b", "prompt": prompt[:200], "stream": True,
                                        "options": {"temperature": 0}})  # fmt: skip
    branch.prompt_json = encode_prompt(["Say: ", "é" * 70000])
    parts = body_parts(branch)
    sent = b"".join(parts)
    assert parts.length == len(sent)
    assert json.loads(sent) == {"model": "m:1b", "prompt": prompt, "stream": True,
                                "options": {"temperature": 0}}  # fmt: skip
    # The big pieces are the request's own, shared with its other branches, not copies.
    assert all(any(p is q for q in parts) for p in branch.prompt_json.pieces)


def _lines(stream: bytes, step: int) -> list[bytes]:
    reader = LineReader()
    out: list[bytes] = []
    for at in range(0, len(stream), step):
        out += [bytes(line) for line in reader.feed(stream[at : at + step])]
    return out


FINAL = {"model": "m", "response": "", "done": True, "eval_count": 3}


@pytest.mark.parametrize("step", [1, 2, 5, 11, 12, 13, 64, 10**6])
@pytest.mark.parametrize("first", [True, False])
def test_the_context_array_is_dropped_as_it_arrives(step, first):
    context = list(range(5000))
    final = {"context": context, **FINAL} if first else {**FINAL, "context": context, "x": 1}
    tokens = [{"model": "m", "response": r, "done": False} for r in ("a", ',"context":[', "]")]
    stream = b"".join(json.dumps(item, separators=(",", ":")).encode() + b"\n"
                      for item in [*tokens, final])  # fmt: skip
    lines = _lines(stream, step)
    assert [json.loads(line) for line in lines[:3]] == tokens  # text that looks like the key
    last = json.loads(lines[3])
    assert "context" not in last
    assert last == {k: v for k, v in final.items() if k != "context"}
    assert len(lines[3]) < 200


def test_a_line_without_its_newline_is_kept_for_the_next_piece():
    reader = LineReader()
    assert reader.feed(b'{"a":1}\n{"b"') == [bytearray(b'{"a":1}')]
    assert reader.feed(b":2}\n") == [bytearray(b'{"b":2}')]
