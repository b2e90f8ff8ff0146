"""Strings that match a JSON Schema ``pattern``, drawn with a seeded generator.

llama.cpp turns an anchored pattern into grammar rules, so a constrained model writes a
matching string. This walks Python's parse of the pattern (``re._parser``; the subset JSON
Schema patterns use: literals, classes, ranges, ``\\d\\w\\s``, ``.``, groups, alternation,
repetition) and picks one match. Anything it cannot produce returns ``None``.
"""

from __future__ import annotations

import random
import re
import string
from re import _constants as C
from re import _parser as P
from typing import Any

_CATEGORIES = {
    C.CATEGORY_DIGIT: string.digits,
    C.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    C.CATEGORY_SPACE: " ",
    C.CATEGORY_NOT_DIGIT: string.ascii_letters,
    C.CATEGORY_NOT_WORD: "-. ",
    C.CATEGORY_NOT_SPACE: string.ascii_letters + string.digits,
}
_PRINTABLE = string.ascii_letters + string.digits + " -_.,"
_OPEN_REPEAT = 4  # how far past the minimum an open-ended repeat goes


class _Unsupported(Exception):
    pass


def _class(items: list[tuple[Any, Any]], rng: random.Random) -> str:
    negate = bool(items) and items[0][0] is C.NEGATE
    allowed: list[str] = []
    for op, arg in items[1:] if negate else items:
        if op is C.LITERAL:
            allowed.append(chr(arg))
        elif op is C.RANGE:
            allowed.extend(chr(c) for c in range(arg[0], min(arg[1], arg[0] + 200) + 1))
        elif op is C.CATEGORY and arg in _CATEGORIES:
            allowed.extend(_CATEGORIES[arg])
        else:
            raise _Unsupported(op)
    if negate:
        allowed = [c for c in _PRINTABLE if c not in set(allowed)]
    if not allowed:
        raise _Unsupported("empty class")
    return rng.choice(allowed)


def _emit(nodes: Any, rng: random.Random, out: list[str]) -> None:
    for op, arg in nodes:
        if op is C.LITERAL:
            out.append(chr(arg))
        elif op is C.NOT_LITERAL:
            out.append(rng.choice([c for c in _PRINTABLE if c != chr(arg)]))
        elif op is C.ANY:
            out.append(rng.choice(_PRINTABLE))
        elif op is C.IN:
            out.append(_class(arg, rng))
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg
            top = low + _OPEN_REPEAT if high is C.MAXREPEAT else high
            for _ in range(rng.randint(low, max(low, top))):
                _emit(sub, rng, out)
        elif op is C.SUBPATTERN:
            _emit(arg[-1], rng, out)
        elif op is getattr(C, "ATOMIC_GROUP", None):
            _emit(arg, rng, out)
        elif op is C.BRANCH:
            _emit(rng.choice(arg[1]), rng, out)
        elif op is C.AT:
            continue  # ^ and $: the whole string is generated anyway
        else:
            raise _Unsupported(op)


def matching(
    pattern: str, rng: random.Random, min_length: int = 0, max_length: int | None = None
) -> str | None:
    """A string ``re.fullmatch``-ing ``pattern`` within the lengths, or ``None``."""
    try:
        parsed = P.parse(pattern)
    except re.error:
        return None
    for _ in range(20):
        out: list[str] = []
        try:
            _emit(parsed, rng, out)
        except _Unsupported:
            return None
        text = "".join(out)
        fits = len(text) >= min_length and (max_length is None or len(text) <= max_length)
        if fits and re.fullmatch(pattern, text):
            return text
    return None
