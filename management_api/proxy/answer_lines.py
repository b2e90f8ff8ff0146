"""Ollama's answers read a line at a time without generate's ``context`` (no Flask, no I/O).

A generate answer's last line (its only line without streaming) carries ``context``: one number
per token of the prompt and the answer, megabytes for a long prompt, which nothing here uses.
Parsed, it costs a Python int per token; so the array is cut out of a line before the line is
parsed (`without_context`), or dropped from a stream as it arrives (`LineReader`), and a tail
that starts inside it is read from the array's end (`last_object`).

Matching the array's key by its bytes is safe: a quote inside a JSON string is escaped, so
``,"context":[`` or ``{"context":[`` can only be a key, and the array holds only numbers, so
its first ``]`` ends it.
"""

from __future__ import annotations

import re

CONTEXT_KEYS = (b',"context":[', b'{"context":[')
_NUMBERS = re.compile(rb"[0-9,\s-]*")
_BLANK = b" \t\r\n"


def without_context(data: bytes | bytearray, start: int = 0, end: int | None = None) -> bytes:
    """``data[start:end]`` (one line) without its ``context`` array, copying only the rest."""
    end = len(data) if end is None else end
    found = [(at, key) for key in CONTEXT_KEYS if (at := data.find(key, start, end)) >= 0]
    if not found:
        return bytes(data[start:end])
    at, key = min(found)
    close = data.find(b"]", at + len(key), end)
    if close < 0 or _NUMBERS.fullmatch(data, at + len(key), close) is None:
        return bytes(data[start:end])  # not generate's array of token ids: left as it is
    after = close + 1
    if key[:1] == b"{":
        if data[after : after + 1] == b",":
            after += 1
        return bytes(data[start:at]) + b"{" + bytes(data[after:end])
    return bytes(data[start:at]) + bytes(data[after:end])


def last_object(tail: bytes | bytearray) -> bytes | None:
    """The last line of ``tail`` that holds a JSON object (NDJSON, an SSE ``data:`` line or a
    whole JSON answer), without ``context``; None when there is none. When the tail begins
    inside a line longer than itself (a generate answer whose ``context`` outgrew it, a large
    embedding batch, a long chat message), the fields after its last ``],"`` or ``},"`` are
    the object's last ones: the metrics or ``usage``, which hold no array and no object but
    ``usage``'s own (a quote inside a string is escaped, so neither can be inside one)."""
    end = len(tail)
    while end > 0:
        line_start = tail.rfind(b"\n", 0, end) + 1
        start, stop = line_start, end
        end = line_start - 1
        while start < stop and tail[start] in _BLANK:
            start += 1
        while stop > start and tail[stop - 1] in _BLANK:
            stop -= 1
        if tail.startswith(b"data: ", start):
            start += 6
        if start >= stop:
            continue
        if tail[start] == ord("{"):
            return without_context(tail, start, stop)
        if line_start == 0:  # the tail's first line: maybe the end of a longer one
            cut = max(tail.rfind(b'],"', start, stop), tail.rfind(b'},"', start, stop))
            if cut >= 0:
                return b"{" + bytes(tail[cut + 2 : stop])
    return None


class LineReader:
    """A stream of NDJSON as complete lines, ``context`` dropped as it arrives: the line that
    carries it is never held whole."""

    def __init__(self) -> None:
        self._buffer = bytearray()  # grows in place: no copy of the whole line per piece
        self._skipping = False  # inside the array
        self._drop_comma = False  # the array was the first field: the comma after it goes

    def feed(self, piece: bytes) -> list[bytearray]:
        data = piece
        while data:
            if self._skipping:
                end = data.find(b"]")
                if end < 0:
                    break
                data, self._skipping = data[end + 1 :], False
            if self._drop_comma and data:
                data, self._drop_comma = (data[1:] if data[:1] == b"," else data), False
            if not data:
                break
            # Look again at the last bytes already held: a key may arrive split in two.
            scan = max(0, len(self._buffer) - len(CONTEXT_KEYS[0]) + 1)
            self._buffer += data
            data = b""
            found = [(at, k) for k in CONTEXT_KEYS if (at := self._buffer.find(k, scan)) >= 0]
            if found:
                at, key = min(found)
                data = bytes(self._buffer[at + len(key) :])
                del self._buffer[at:]
                if key[:1] == b"{":
                    self._buffer += b"{"
                    self._drop_comma = True
                self._skipping = True
        end = self._buffer.rfind(b"\n")
        if end < 0:
            return []
        lines = self._buffer[:end].split(b"\n")
        del self._buffer[: end + 1]
        return lines
