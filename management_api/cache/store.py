"""The in-memory store: least recently used entries go first once the byte cap is reached, and
no entry is served after its TTL. Thread-safe; every operation is O(1) except the periodic
sweep of expired entries (at most once per tenth of the TTL)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Entry bookkeeping (key, dict slot, dataclass) costs memory beyond the stored bytes.
ENTRY_OVERHEAD_BYTES = 256


@dataclass
class Entry:
    key: str
    route: str
    model: str  # the normalised model name (a bounded label)
    value: Any
    size: int
    expires_at: float


class LruStore:
    def __init__(
        self,
        *,
        max_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        # Bytes held by answers being recorded right now: they count against the cap too.
        self._reserved = 0
        self._lock = threading.Lock()
        self._next_sweep = clock() + ttl_seconds / 10
        self.evictions = 0
        self.expirations = 0

    def get(self, key: str) -> Entry | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires_at <= now:
                self._drop(entry)
                self.expirations += 1
                return None
            self._entries.move_to_end(key)
            return entry

    def put(
        self,
        key: str,
        route: str,
        model: str,
        value: Any,
        size: int,
        *,
        ttl_seconds: float | None = None,
    ) -> bool:
        """Store (or replace) an entry, for `ttl_seconds` (default: the store's TTL); False
        when it alone is larger than a quarter of the cap (one huge answer must not flush
        everything else)."""
        size += ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes // 4:
            return False
        now = self._clock()
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        entry = Entry(key, route, model, value, size, now + ttl)
        with self._lock:
            old = self._entries.get(key)
            if old is not None:
                self._drop(old)
            if now >= self._next_sweep:
                self._sweep(now)
            while self._bytes + self._reserved + size > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries.values())))
                self.evictions += 1
            self._entries[key] = entry
            self._bytes += size
        return True

    def reserve(self, size: int) -> bool:
        """Hold `size` bytes of the cap for an answer being recorded, evicting the least
        recently used entries as needed; False when recordings already hold the rest of the cap
        (the answer is then simply not cached). Give the bytes back with `unreserve`."""
        with self._lock:
            if self._reserved + size > self.max_bytes:
                return False
            while self._bytes + self._reserved + size > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries.values())))
                self.evictions += 1
            self._reserved += size
            return True

    def unreserve(self, size: int) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - size)

    @property
    def reserved(self) -> int:
        with self._lock:
            return self._reserved

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self._bytes = 0
        return count

    def _drop(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._bytes -= entry.size

    def _sweep(self, now: float) -> None:
        for entry in [e for e in self._entries.values() if e.expires_at <= now]:
            self._drop(entry)
            self.expirations += 1
        self._next_sweep = now + self.ttl_seconds / 10

    def snapshot(self) -> dict[str, Any]:
        """Entries and bytes, in total and per (route, model); expired entries are swept."""
        with self._lock:
            self._sweep(self._clock())
            groups: dict[tuple[str, str], list[int]] = {}
            for entry in self._entries.values():
                group = groups.setdefault((entry.route, entry.model), [0, 0])
                group[0] += 1
                group[1] += entry.size
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "recording_bytes": self._reserved,
                "groups": {k: {"entries": v[0], "bytes": v[1]} for k, v in groups.items()},
                "evictions": self.evictions,
                "expirations": self.expirations,
            }

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self._entries), self._bytes
