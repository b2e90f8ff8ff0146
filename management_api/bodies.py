"""Safe JSON bodies: bounded nesting, clear 400s, never a 500; and Go's reading of a body.

`json.loads` recurses per nesting level, so a body of 100,000 ``[`` raises RecursionError; we
measure the depth first (a linear scan that skips strings) and refuse anything deeper than
`MAX_DEPTH`, which no legitimate request comes near.

`go_object` reads a request body the way Ollama's Go structs do (encoding/json): a field name
matches case-insensitively, and of several spellings of one field the last in the body wins.
The proxy decides admission and the cache key on that reading, so it never judges a request on
a field Ollama does not use (``"model"``) while Ollama runs another one (``"Model"``).

Large bodies are held once (`read_buffer`, `loads_releasing`, `json_text_pieces`,
`canonical_pieces`, `string_pieces`): a request's memory stays proportional to its body, never
a multiple of it for each step that reads or re-encodes it.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from management_api import errors

MAX_DEPTH = 64
READ_CHUNK = 1 << 16  # bytes read from the client at a time
ESCAPE_SLICE = 1 << 16  # characters of a long string escaped at a time


# The bytes that can change the depth or whether a byte is inside a string: the scan looks only
# at these (a long string is skipped at C speed, not walked a byte at a time in Python).
_STRUCTURE = re.compile(rb'["\\\[\]{}]')


def nesting_depth(raw: bytes | bytearray) -> int:
    depth = deepest = 0
    in_string = False
    escaped = -1  # the position of the byte a backslash escapes
    for match in _STRUCTURE.finditer(raw):
        at = match.start()
        if at == escaped:
            continue
        byte = raw[at]
        if in_string:
            if byte == 0x5C:  # backslash
                escaped = at + 1
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def loads_bounded(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON; raise ValueError for invalid or over-deep input."""
    if nesting_depth(raw) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(raw)


def read_buffer(stream: BinaryIO, length: int | None, limit: int) -> bytearray:
    """The request body in one buffer that grows in place as its bytes arrive (Werkzeug's read
    gathers the pieces, then copies them into one bytes object: twice the body at its peak).
    Never allocated ahead of the bytes: a client that announces 8 MB and sends nothing holds
    nothing. ``length`` is the Content-Length; without one (chunked), the body is read to its
    end or one byte past ``limit``, so the caller can refuse it."""
    wanted = limit + 1 if length is None else length
    buffer = bytearray()
    while len(buffer) < wanted:
        piece = stream.read(min(READ_CHUNK, wanted - len(buffer)))
        if not piece:
            if length is not None:
                raise errors.BadRequest("the body ended before its Content-Length")
            break
        buffer += piece
    return buffer


def loads_releasing(buffer: bytearray, max_depth: int = MAX_DEPTH) -> Any:
    """`loads_bounded` of a body that is emptied as soon as it is decoded (as `json.loads`
    decodes bytes), so the raw bytes, their text and the parsed value are never all alive."""
    if nesting_depth(buffer) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    text = buffer.decode(json.detect_encoding(buffer), "surrogatepass")
    buffer.clear()
    return json.loads(text)


def _escape_lone_surrogates(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeEncodeError)
    bad = error.object[error.start : error.end]
    return "".join(f"\\u{ord(char):04x}" for char in bad), error.end


# A lone surrogate (a JSON body may hold "\ud800") is sent as the escape it came as: Go's
# decoder reads it as U+FFFD, exactly as if the caller had sent it to Ollama itself.
codecs.register_error("llm_service.json_escape", _escape_lone_surrogates)


def _escaped(text: str) -> Iterator[str]:
    # Escaping is per character, so slices escaped one at a time join exactly.
    for start in range(0, len(text), ESCAPE_SLICE):
        yield json.dumps(text[start : start + ESCAPE_SLICE], ensure_ascii=False)[1:-1]


def string_pieces(text: str, errors: str = "llm_service.json_escape") -> Iterator[bytes]:
    """The JSON escape of ``text`` (without its quotes) as UTF-8, as ``json.dumps`` with
    ``ensure_ascii=False`` writes it, in pieces of at most `ESCAPE_SLICE` characters: a long
    string is never held escaped whole."""
    for piece in _escaped(text):
        yield piece.encode("utf-8", errors)


def json_text_pieces(
    value: Any, *, separators: tuple[str, str] = (", ", ": "), allow_nan: bool = True
) -> Iterator[str]:
    """``json.dumps(value, ensure_ascii=False, sort_keys=True, separators=separators,
    allow_nan=allow_nan)`` in pieces, long strings a slice at a time: a large value is never
    written out whole beside itself. ValueError for NaN or infinity without `allow_nan`,
    TypeError for what JSON cannot hold, as ``json.dumps``."""
    item_separator, key_separator = separators
    if isinstance(value, str):
        yield '"'
        yield from _escaped(value)
        yield '"'
    elif isinstance(value, dict):
        yield "{"
        for index, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise TypeError("an object has string keys only here")
            yield item_separator + '"' if index else '"'
            yield from _escaped(key)
            yield '"' + key_separator
            yield from json_text_pieces(value[key], separators=separators, allow_nan=allow_nan)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield item_separator
            yield from json_text_pieces(item, separators=separators, allow_nan=allow_nan)
        yield "]"
    else:
        yield json.dumps(value, allow_nan=allow_nan)


def canonical_pieces(value: Any) -> Iterator[bytes]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    allow_nan=False).encode("utf-8", "surrogatepass")`` in pieces, for hashing a large body
    without a second and third copy of it."""
    for piece in json_text_pieces(value, separators=(",", ":"), allow_nan=False):
        yield piece.encode("utf-8", "surrogatepass")


def json_object(raw: bytes, *, required: bool = True, **extra: Any) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong (``extra`` → error fields)."""
    if not raw.strip():
        if required:
            raise errors.BadRequest("a JSON body is required", **extra)
        return {}
    try:
        payload = loads_bounded(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = "too deeply nested" if "nested" in str(exc) else "not valid JSON"
        raise errors.BadRequest(f"the body is {reason}", **extra) from None
    if not isinstance(payload, dict):
        raise errors.BadRequest("the body must be a JSON object", **extra)
    return payload


class LossyObject(dict[str, Any]):
    """A body that was not valid UTF-8, read with replacement characters (Go reads it too, but
    replaces bytes differently): good enough to find the model, never to key the cache on."""


class _Pairs(dict[str, Any]):
    pairs: list[tuple[str, Any]]


def _keep_pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    obj.pairs = pairs
    return obj


def fold_name(name: str) -> str:
    """A field name as encoding/json compares it with a struct's (ASCII) field names.

    Go folds case with Unicode simple folding, under which the Kelvin sign folds to ``k`` and
    the long s to ``s``; `str.lower` already maps the Kelvin sign, the long s needs a hand.
    """
    if name.isascii():
        return name.lower()
    return name.lower().replace("\u017f", "s")


def go_object(raw: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The top-level fields of a JSON object body as Go fills a struct from it: names folded
    (`fold_name`), the last of several spellings winning. Nested values are kept as sent.

    Raises ValueError for a body that is not a JSON object, or nests deeper than `max_depth`.
    """
    if nesting_depth(raw) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    lossy = False
    try:
        payload = json.loads(raw)
    except UnicodeDecodeError:
        lossy = True
        payload = json.loads(raw.decode("utf-8", "replace"))
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    folded: dict[str, Any] = LossyObject() if lossy else {}
    for name, value in payload.items():
        key = fold_name(name)
        if key in folded:
            # Two spellings of one field: only the body's own order says which one Go keeps
            # (a dict keeps the first position of a repeated name), so read it again in order.
            return _fold_in_order(raw, lossy)
        folded[key] = value
    return folded


def _fold_in_order(raw: bytes, lossy: bool) -> dict[str, Any]:
    text = raw.decode("utf-8", "replace") if lossy else raw
    ordered = json.loads(text, object_pairs_hook=_keep_pairs)
    folded: dict[str, Any] = LossyObject() if lossy else {}
    for name, value in ordered.pairs:
        key = fold_name(name)
        folded.pop(key, None)  # the later spelling wins, in its own place
        folded[key] = value
    return folded
