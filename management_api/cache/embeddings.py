"""/api/embed batches item by item: one stored vector per input, answers reassembled in order.

Ollama reports one ``prompt_eval_count`` for a whole batch. An item stored from a batch gets a
share of it in proportion to its UTF-8 length (largest remainders, so the shares add up to the
batch's count exactly); an item embedded on its own keeps its exact count. A reassembled answer
has the upstream call's durations when part of it was fetched, else the longest original call's.
"""

from __future__ import annotations

import json
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


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def split_answer(texts: list[str], answer: dict[str, Any]) -> dict[str, EmbedItem] | None:
    """One item per distinct input of an Ollama /api/embed answer to `texts` (in that order)."""
    vectors = answer.get("embeddings")
    if not isinstance(vectors, list) or len(vectors) != len(texts):
        return None
    shares = token_shares(texts, _int(answer.get("prompt_eval_count")))
    total, load = _int(answer.get("total_duration")), _int(answer.get("load_duration"))
    items: dict[str, EmbedItem] = {}
    for text, vector, tokens in zip(texts, vectors, shares, strict=True):
        if not isinstance(vector, list):
            return None
        encoded = json.dumps(vector, separators=(",", ":")).encode()
        items[text] = EmbedItem(encoded, tokens, total, load)
    return items


def compose_answer(
    model: str,
    items: list[EmbedItem],
    *,
    total_duration: int,
    load_duration: int,
    prompt_eval_count: int,
) -> bytes:
    """The /api/embed answer, fields in Ollama's order."""
    return b"".join(
        (
            b'{"model":',
            json.dumps(model).encode(),
            b',"embeddings":[',
            b",".join(item.vector for item in items),
            b'],"total_duration":%d,"load_duration":%d,"prompt_eval_count":%d}'
            % (total_duration, load_duration, prompt_eval_count),
        )
    )
