"""Request bodies decoded the way gin's ``ShouldBindJSON`` + Go's ``encoding/json`` do.

* empty or whitespace-only body -> ``missing request body`` (io.EOF);
* syntax errors -> the Go scanner's message (``invalid character 'x' looking for
  beginning of value``, ``unexpected EOF``);
* wrong field types -> ``json: cannot unmarshal number into Go struct field
  GenerateRequest.prompt of type string``; field names match case-insensitively,
  unknown fields are ignored, trailing bytes after the first value are ignored.

A schema maps JSON field names to a ``Kind``; ``decode`` returns a plain dict with
JSON ``null`` values dropped (Go leaves such fields at their zero value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError


class BodyError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class FloatLiteral(float):
    """A JSON float that remembers its literal (Go quotes it in int type errors)."""

    literal: str

    def __new__(cls, text: str) -> FloatLiteral:
        obj = super().__new__(cls, text)
        obj.literal = text
        return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_float=FloatLiteral, parse_constant=_reject_constant)
_WS = b" \t\r\n"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogates_replaced(value: Any) -> Any:
    # Go's decoder reads a \uD800-\uDFFF escape that is not half of a pair as U+FFFD
    # (Python's keeps the lone surrogate; a pair is joined by both).
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_lone_surrogates_replaced(item) for item in value]
    if isinstance(value, dict):
        return {
            _lone_surrogates_replaced(k): _lone_surrogates_replaced(v) for k, v in value.items()
        }
    return value


def load_json(raw: bytes, *, empty_message: str = "missing request body") -> Any:
    """Decode the first JSON value of ``raw``; raise ``BodyError`` with Go's texts."""
    stripped = raw.lstrip(_WS)
    if not stripped:
        raise BodyError(empty_message)
    text = stripped.decode("utf-8", "replace")
    try:
        value, _ = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        raise BodyError(go_syntax_error(stripped)) from None
    if _SURROGATE_ESCAPE.search(text):
        value = _lone_surrogates_replaced(value)
    return value


# --- Go scanner messages --------------------------------------------------------------


class _Syntax(Exception):
    pass


def _quote_char(byte: int) -> str:
    if byte == 0x27:
        return "'\\''"
    if byte == 0x22:
        return "'\"'"
    ch = chr(byte)
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if ch in escapes:
        return f"'{escapes[ch]}'"
    if ch == "\v":
        return "'\\v'"
    if ch == "\\":
        return "'\\\\'"
    if ch.isprintable():
        return f"'{ch}'"
    if byte < 0x80:
        return f"'\\x{byte:02x}'"
    return f"'\\u{byte:04x}'"


class _Scanner:
    """Recursive-descent twin of Go's ``encoding/json`` scanner, for its error texts."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _peek(self) -> int:
        if self.pos >= len(self.data):
            raise _Syntax("unexpected EOF")
        return self.data[self.pos]

    def _fail(self, context: str) -> None:
        raise _Syntax(f"invalid character {_quote_char(self.data[self.pos])} {context}")

    def _skip_ws(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in _WS:
            self.pos += 1

    def value(self) -> None:
        self._skip_ws()
        c = self._peek()
        if c == 0x7B:
            self._object()
        elif c == 0x5B:
            self._array()
        elif c == 0x22:
            self._string()
        elif c == 0x2D or 0x30 <= c <= 0x39:
            self._number()
        elif c in (0x74, 0x66, 0x6E):
            self._literal({0x74: b"true", 0x66: b"false", 0x6E: b"null"}[c])
        else:
            self._fail("looking for beginning of value")

    def _object(self) -> None:
        self.pos += 1
        self._skip_ws()
        if self._peek() == 0x7D:
            self.pos += 1
            return
        while True:
            self._skip_ws()
            if self._peek() != 0x22:
                self._fail("looking for beginning of object key string")
            self._string()
            self._skip_ws()
            if self._peek() != 0x3A:
                self._fail("after object key")
            self.pos += 1
            self.value()
            self._skip_ws()
            c = self._peek()
            if c == 0x2C:
                self.pos += 1
                continue
            if c == 0x7D:
                self.pos += 1
                return
            self._fail("after object key:value pair")

    def _array(self) -> None:
        self.pos += 1
        self._skip_ws()
        if self._peek() == 0x5D:
            self.pos += 1
            return
        while True:
            self.value()
            self._skip_ws()
            c = self._peek()
            if c == 0x2C:
                self.pos += 1
                continue
            if c == 0x5D:
                self.pos += 1
                return
            self._fail("after array element")

    def _string(self) -> None:
        self.pos += 1
        while True:
            c = self._peek()
            if c == 0x22:
                self.pos += 1
                return
            if c == 0x5C:
                self.pos += 1
                e = self._peek()
                if e in b'bfnrt\\/"':
                    self.pos += 1
                elif e == 0x75:
                    self.pos += 1
                    for _ in range(4):
                        h = self._peek()
                        if h not in b"0123456789abcdefABCDEF":
                            self._fail("in \\u hexadecimal character escape")
                        self.pos += 1
                else:
                    self._fail("in string escape code")
            elif c < 0x20:
                self._fail("in string literal")
            else:
                self.pos += 1

    def _digits(self) -> None:
        while self.pos < len(self.data) and 0x30 <= self.data[self.pos] <= 0x39:
            self.pos += 1

    def _number(self) -> None:
        if self.data[self.pos] == 0x2D:
            self.pos += 1
            c = self._peek()
            if not 0x30 <= c <= 0x39:
                self._fail("in numeric literal")
        if self.data[self.pos] == 0x30:
            self.pos += 1
        else:
            self._digits()
        if self.pos < len(self.data) and self.data[self.pos] == 0x2E:
            self.pos += 1
            if not 0x30 <= self._peek() <= 0x39:
                self._fail("after decimal point in numeric literal")
            self._digits()
        if self.pos < len(self.data) and self.data[self.pos] in b"eE":
            self.pos += 1
            if self._peek() in b"+-":
                self.pos += 1
            if not 0x30 <= self._peek() <= 0x39:
                self._fail("in exponent of numeric literal")
            self._digits()

    def _literal(self, word: bytes) -> None:
        self.pos += 1
        for expected in word[1:]:
            if self._peek() != expected:
                self._fail(f"in literal {word.decode()} (expecting '{chr(expected)}')")
            self.pos += 1


def go_syntax_error(data: bytes) -> str:
    """Go's message for the first syntax error in ``data`` (``unexpected EOF`` if truncated)."""
    try:
        _Scanner(data).value()
    except _Syntax as exc:
        return str(exc)
    except RecursionError:
        return "exceeded max depth"
    # Python rejected what Go accepts (e.g. a huge exponent); Go would fail on the type.
    return "unexpected EOF"


# --- typed decoding ---------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How one Go field decodes.

    ``check`` raises ``_TypeMismatch`` when the value does not fit;
    ``custom`` (for types with their own ``UnmarshalJSON``) raises or returns the value.
    """

    go_type: str
    check: Callable[[Any], None] | None = None
    custom: Callable[[Any], Any] | None = None


def describe(value: Any) -> str:
    """Go's ``UnmarshalTypeError.Value`` for a decoded JSON value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _TypeMismatch(Exception):
    def __init__(self, value_desc: str, go_type: str) -> None:
        super().__init__(value_desc)
        self.value_desc = value_desc
        self.go_type = go_type


def _int_check(bits: int, go_type: str) -> Callable[[Any], None]:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _TypeMismatch(describe(value), go_type)
        if isinstance(value, FloatLiteral):
            raise _TypeMismatch(f"number {value.literal}", go_type)
        if not low <= value <= high:
            raise _TypeMismatch(f"number {value}", go_type)

    return check


def _simple(go_type: str, accept: Callable[[Any], bool]) -> Kind:
    def check(value: Any) -> None:
        if not accept(value):
            raise _TypeMismatch(describe(value), go_type)

    return Kind(go_type, check)


STRING = _simple("string", lambda v: isinstance(v, str))
BOOL = _simple("bool", lambda v: isinstance(v, bool))
INT = Kind("int", _int_check(64, "int"))
INT32 = Kind("int32", _int_check(32, "int32"))
FLOAT64 = _simple("float64", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
FLOAT32 = _simple("float32", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
ANY = Kind("interface {}")
MAP = _simple("map[string]interface {}", lambda v: isinstance(v, dict))


def list_of(elem: Kind, go_type: str) -> Kind:
    def check(value: Any) -> None:
        if not isinstance(value, list):
            raise _TypeMismatch(describe(value), go_type)
        for item in value:
            if item is not None and elem.check is not None:
                elem.check(item)

    return Kind(go_type, check)


def map_of(elem: Kind, go_type: str) -> Kind:
    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _TypeMismatch(describe(value), go_type)
        for item in value.values():
            if item is not None and elem.check is not None:
                elem.check(item)

    return Kind(go_type, check)


def struct_of(schema: Mapping[str, Kind], go_type: str) -> Kind:
    """A nested struct: type errors inside surface with the outer field's context."""

    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _TypeMismatch(describe(value), go_type)
        lowered = {name.lower(): name for name in schema}
        for key, item in value.items():
            name = key if key in schema else lowered.get(key.lower())
            if name is None or item is None:
                continue
            kind = schema[name]
            if kind.check is not None:
                kind.check(item)

    return Kind(go_type, check)


def custom(go_type: str, fn: Callable[[Any], Any]) -> Kind:
    return Kind(go_type, custom=fn)


def decode(raw: bytes, schema: Mapping[str, Kind], struct: str) -> dict[str, Any]:
    """Decode ``raw`` into a dict following ``schema`` (Go struct ``struct``)."""
    value = load_json(raw)
    return decode_value(value, schema, struct)


def decode_value(value: Any, schema: Mapping[str, Kind], struct: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BodyError(f"json: cannot unmarshal {describe(value)} into Go value of type {struct}")
    lowered = {name.lower(): name for name in schema}
    out: dict[str, Any] = {}
    first_error: str | None = None
    short = struct.rsplit(".", 1)[-1]
    for key, item in value.items():
        name = key if key in schema else lowered.get(key.lower())
        if name is None or item is None:
            continue
        kind = schema[name]
        if kind.custom is not None:
            out[name] = kind.custom(item)
            continue
        if kind.check is not None:
            try:
                kind.check(item)
            except _TypeMismatch as exc:
                # Go keeps decoding after a type error and reports the first one.
                if first_error is None:
                    first_error = (
                        f"json: cannot unmarshal {exc.value_desc} into Go struct field "
                        f"{short}.{name} of type {exc.go_type}"
                    )
                continue
        out[name] = item
    if first_error is not None:
        raise BodyError(first_error)
    return out
