"""Pure decision rules over finished answers: grouping, plurality, medoid, weighted scores.

An answer is ``(key, branch)``-like: anything with ``model``, ``content``, ``parsed``,
``finished_at``. JSON answers agree when their canonical JSON (or their ``vote_field``) is
equal; text answers agree when their word-level similarity reaches ``TEXT_AGREEMENT``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from difflib import SequenceMatcher
from typing import Any, Protocol

TEXT_AGREEMENT = 0.8
_WORD = re.compile(r"\w+", re.UNICODE)


class Answer(Protocol):
    model: str
    content: str
    parsed: Any
    finished_at: float | None


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def vote_key(answer: Answer, output: str, vote_field: str | None) -> str:
    if output == "json":
        value = answer.parsed
        if vote_field and isinstance(value, dict) and vote_field in value:
            value = value[vote_field]
        return canonical(value)
    return " ".join(_WORD.findall(answer.content.casefold()))


def similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (1 for equal word sequences)."""
    if a == b:
        return 1.0
    wa, wb = a.split(), b.split()
    if not wa or not wb:
        return 0.0
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def groups(answers: Sequence[Answer], output: str, vote_field: str | None) -> list[list[Answer]]:
    """Answers that agree, in arrival order of each group's first member."""
    out: list[tuple[str, list[Answer]]] = []
    for answer in answers:
        key = vote_key(answer, output, vote_field)
        for head, members in out:
            same = key == head if output == "json" else similarity(key, head) >= TEXT_AGREEMENT
            if same:
                members.append(answer)
                break
        else:
            out.append((key, [answer]))
    return [members for _, members in out]


def _speed(answer: Answer) -> float:
    return answer.finished_at if answer.finished_at is not None else float("inf")


def representative(members: Sequence[Answer], weight: Callable[[str], float]) -> Answer:
    """Who speaks for a group: the heaviest model, then the fastest."""
    return min(members, key=lambda a: (-weight(a.model), _speed(a)))


def plurality(
    answers: Sequence[Answer],
    output: str,
    vote_field: str | None,
    weight: Callable[[str], float],
) -> tuple[Answer, float, list[Answer]]:
    """(winner, agreement, winning group). JSON: the largest group; text: the medoid.

    Ties go to the group (or answer) with more static weight, then to the earlier answer.
    """
    if output == "json":
        found = groups(answers, output, vote_field)
        best = min(
            found,
            key=lambda g: (-len(g), -sum(weight(a.model) for a in g), min(map(_speed, g))),
        )
        return representative(best, weight), len(best) / len(answers), best
    keys = [vote_key(a, output, vote_field) for a in answers]
    n = len(answers)

    def mean_similarity(i: int) -> float:
        if n == 1:
            return 1.0
        return sum(similarity(keys[i], keys[j]) for j in range(n) if j != i) / (n - 1)

    scores = [mean_similarity(i) for i in range(n)]
    medoid = min(
        range(n),
        key=lambda i: (-round(scores[i], 9), -weight(answers[i].model), _speed(answers[i])),
    )
    agreeing = [
        a for i, a in enumerate(answers) if similarity(keys[i], keys[medoid]) >= TEXT_AGREEMENT
    ]
    return answers[medoid], len(agreeing) / n, agreeing


def weighted(
    answers: Sequence[Answer],
    output: str,
    vote_field: str | None,
    vote: Callable[[str], float],
    weight: Callable[[str], float],
) -> tuple[Answer, float, list[Answer]]:
    """(winner, agreement, winning group) where each answer counts ``vote(model)``."""
    found = groups(answers, output, vote_field)
    total = sum(vote(a.model) for a in answers) or 1.0
    best = min(
        found,
        key=lambda g: (
            -sum(vote(a.model) for a in g),
            -sum(weight(a.model) for a in g),
            min(map(_speed, g)),
        ),
    )
    return representative(best, weight), sum(vote(a.model) for a in best) / total, best


def decided_early(scores: Sequence[float], still_open: float) -> bool:
    """True when the leader cannot be overtaken by the votes still outstanding."""
    ordered = sorted(scores, reverse=True)
    if not ordered:
        return False
    second = ordered[1] if len(ordered) > 1 else 0.0
    return ordered[0] > second + still_open
