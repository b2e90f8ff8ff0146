"""Deterministic stand-ins for a model's output: words, token counts, embeddings.

The same (model, prompt) always yields the same text, so tests can compare a direct
call with one made through the proxy.
"""

from __future__ import annotations

import hashlib
import math
import random

_VOCAB = (
    "the",
    "model",
    "answers",
    "with",
    "a",
    "short",
    "and",
    "deterministic",
    "sentence",
    "about",
    "edge",
    "devices",
    "running",
    "language",
    "models",
    "on",
    "small",
    "boards",
    "with",
    "shared",
    "memory",
    "while",
    "the",
    "scheduler",
    "keeps",
    "every",
    "runner",
    "warm",
    "for",
    "the",
    "next",
    "request",
    "from",
    "a",
    "patient",
    "client",
    "who",
    "reads",
    "tokens",
    "as",
    "they",
    "stream",
    "over",
    "the",
    "wire",
    "one",
    "line",
    "at",
    "a",
    "time",
)
_THINK_VOCAB = (
    "hmm",
    "let",
    "me",
    "think",
    "about",
    "this",
    "carefully",
    "first",
    "then",
    "answer",
)


def _seed(*parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def words(
    model: str, prompt: str, count: int, *, thinking: bool = False, variant: str = ""
) -> list[str]:
    """``count`` token strings; the first has no leading space, the last ends a sentence.

    ``variant`` is the sampling state that changes an answer (the seed; see
    ``inference.Job.variant``); empty keeps the answer of the plain (model, prompt).
    """
    if count <= 0:
        return []
    parts = ("think" if thinking else "say", model, prompt) + ((variant,) if variant else ())
    rng = random.Random(_seed(*parts))
    vocab = _THINK_VOCAB if thinking else _VOCAB
    out = [(" " if i else "") + rng.choice(vocab) for i in range(count)]
    out[0] = out[0].capitalize()
    out[-1] += "."
    return out


def rng_for(*parts: str) -> random.Random:
    """A generator seeded from ``parts`` (structured output, tool calls)."""
    return random.Random(_seed(*parts))


def count_tokens(text: str) -> int:
    """Roughly four characters per token, at least one."""
    return max(1, (len(text) + 3) // 4)


def context_ids(model: str, text: str, count: int) -> list[int]:
    """Token ids for generate's ``context`` field (1 to 65,536: drawn as random bytes, since a
    long prompt has millions of them and one draw each took a second per 2 million)."""
    raw = random.Random(_seed("ctx", model, text)).randbytes(2 * count)
    return list(map((1).__add__, memoryview(raw).cast("H")))


def embedding(model: str, text: str, dimensions: int, *, normalize: bool) -> list[float]:
    """A deterministic vector; L2-normalised (float32 precision) when ``normalize``."""
    rng = random.Random(_seed("embed", model, text))
    vector = [rng.gauss(0.0, 0.35) for _ in range(dimensions)]
    if not normalize:
        return vector
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [float(f"{v / norm:.7g}") for v in vector]


def renormalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [float(f"{v / norm:.7g}") for v in vector]
