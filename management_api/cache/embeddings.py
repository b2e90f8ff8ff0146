"""/api/embed batches item by item: one stored vector per input, answers reassembled in order.

Ollama reports one ``prompt_eval_count`` for a whole batch. An item stored from a batch gets a
share of it in proportion to its UTF-8 length (largest remainders, so the shares add up to the
batch's count exactly); an item embedded on its own keeps its exact count. A reassembled answer
has the upstream call's durations when part of it was fetched, else the longest original call's.

Vectors are kept as the bytes Ollama sent (each checked to be a flat array of numbers) and an
answer is sent as pieces that point at them: a large batch is never held parsed (a float object
per number) beside its text, nor joined again to be sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EmbedItem:
    vector: bytes  # the JSON array, ready to be joined into an answer
    tokens: int
    total_duration: int
    load_duration: int

    @property
    def size(self) -> int:
        return len(self.vector) + 64


def token_shares(texts: list[str], total: int) -> list[int]:
    """`total` split over `texts` in proportion to their length, adding up to `total`."""
    weights = [max(1, len(text.encode("utf-8", "surrogatepass"))) for text in texts]
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    shares = [int(x) for x in exact]
    left = total - sum(shares)
    by_remainder = sorted(range(len(texts)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares


def int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_WHITESPACE = b" \t\r\n"
_EMBEDDINGS = b'"embeddings"'
_KEY_WITHIN = 1 << 16  # Ollama writes the key after the model's name: near the start


def _skip(raw: bytes | bytearray, at: int) -> int:
    while at < len(raw) and raw[at] in _WHITESPACE:
        at += 1
    return at


_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_WS = rb"[ \t\r\n]*"
# A JSON array of numbers, exactly as JSON's grammar has them: checked where it lies, without
# a float object per number.
_VECTOR = re.compile(rb"\[" + _WS + rb"(?:" + _NUMBER + _WS + rb"(?:," + _WS + _NUMBER + _WS
                     + rb")*)?\]")  # fmt: skip


class AnswerSplitter:
    """An /api/embed answer split as it arrives: each vector copied out once it is whole (the
    bytes Ollama sent, checked to be a flat array of numbers), only the small rest held, so
    the answer is never held twice nor parsed into a float object per number.

    The key is found by its bytes: a quote inside a JSON string is escaped, so
    ``"embeddings"`` then ``:`` can only be a key, and an answer has no other object in which
    it could be one. Anything else (checked again when the rest is parsed) does not fit."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep  # False: only check the answer and count its vectors
        self.vectors: list[bytes] = []
        self.count = 0
        self._buffer = bytearray()
        self._state = "key"  # then "vector|end", "vector", "comma|end", "tail"; or "bad"
        self._before = b""  # the answer up to the array
        self._tail = bytearray()  # and after it

    def feed(self, chunk: bytes | bytearray) -> None:
        if self._buffer:
            self._buffer += chunk
            work: bytes | bytearray = self._buffer
        else:
            work = chunk  # a whole answer in one piece is read where it lies
        used = self._read(work)
        if work is self._buffer:
            del self._buffer[:used]
        else:
            self._buffer = bytearray(work[used:])

    def _read(self, work: bytes | bytearray) -> int:
        if self._state == "key":
            start = self._find_key(work)
            if start is None:
                if len(work) > _KEY_WITHIN:
                    self._state = "bad"
                return 0 if self._state == "key" else len(work)
            self._before = bytes(work[:start])
            self._state = "vector|end"
            at = start + 1
        else:
            at = 0
        while self._state not in ("tail", "bad"):
            at = _skip(work, at)
            if at >= len(work):
                return at
            char = work[at : at + 1]
            if char == b"[" and self._state != "comma|end":
                end = work.find(b"]", at)  # a vector holds numbers only: its first ] ends it
                if end < 0:
                    return at
                if _VECTOR.fullmatch(work, at, end + 1) is None:
                    self._state = "bad"
                    break
                self.count += 1
                if self.keep:
                    self.vectors.append(bytes(work[at : end + 1]))
                at, self._state = end + 1, "comma|end"
            elif char == b"," and self._state == "comma|end":
                at, self._state = at + 1, "vector"
            elif char == b"]" and self._state != "vector":
                at, self._state = at + 1, "tail"
            else:
                self._state = "bad"
        if self._state == "tail":
            self._tail += work[at:]
        return len(work)

    def _find_key(self, work: bytes | bytearray) -> int | None:
        """Where the array starts, once the key and its ``[`` have arrived."""
        key = work.find(_EMBEDDINGS)
        while key >= 0:  # the same bytes as a value (a model named so) have no colon after
            at = _skip(work, key + len(_EMBEDDINGS))
            if at >= len(work):
                return None
            if work[at : at + 1] == b":":
                at = _skip(work, at + 1)
                if at >= len(work):
                    return None
                if work[at : at + 1] != b"[":
                    self._state = "bad"
                    return None
                return at
            key = work.find(_EMBEDDINGS, at)
        return None

    def fields(self) -> dict[str, Any] | None:
        """The answer's other fields once it has all arrived; None when it does not fit."""
        if self._state != "tail":
            return None
        try:
            fields = json.loads(self._before + b"[]" + bytes(self._tail))
        except ValueError:
            return None
        if not isinstance(fields, dict) or fields.get("embeddings") != []:
            return None
        del fields["embeddings"]
        return fields


def is_whole_answer(body: bytes) -> bool:
    """Whether an /api/embed body is a whole answer with at least one vector."""
    splitter = AnswerSplitter(keep=False)
    splitter.feed(body)
    fields = splitter.fields()
    return fields is not None and splitter.count > 0 and "error" not in fields


def split_answer(
    texts: list[str], answer: bytes | bytearray | AnswerSplitter
) -> tuple[dict[str, EmbedItem], dict[str, Any]] | None:
    """One item per distinct input of Ollama's /api/embed answer to `texts` (in that order; of
    repeated inputs the first vector is kept), and the answer's other fields; None when the
    answer does not fit. `answer` is its bytes or a splitter it was fed to."""
    if isinstance(answer, AnswerSplitter):
        splitter = answer
    else:
        splitter = AnswerSplitter()
        splitter.feed(answer)
    fields = splitter.fields()
    if fields is None or len(splitter.vectors) != len(texts):
        return None
    first: dict[str, bytes] = {}
    for text, vector in zip(texts, splitter.vectors, strict=True):
        first.setdefault(text, vector)
    unique = list(first)
    shares = token_shares(unique, int_or_zero(fields.get("prompt_eval_count")))
    total = int_or_zero(fields.get("total_duration"))
    load = int_or_zero(fields.get("load_duration"))
    items = {
        text: EmbedItem(first[text], tokens, total, load)
        for text, tokens in zip(unique, shares, strict=True)
    }
    return items, fields


def compose_answer(
    model: str,
    items: list[EmbedItem],
    *,
    total_duration: int,
    load_duration: int,
    prompt_eval_count: int,
) -> list[bytes]:
    """The /api/embed answer, fields in Ollama's order, as pieces that share the items' bytes."""
    pieces = [b'{"model":', json.dumps(model).encode(), b',"embeddings":[']
    for index, item in enumerate(items):
        if index:
            pieces.append(b",")
        pieces.append(item.vector)
    pieces.append(
        b'],"total_duration":%d,"load_duration":%d,"prompt_eval_count":%d}'
        % (total_duration, load_duration, prompt_eval_count)
    )
    return pieces
