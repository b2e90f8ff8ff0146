"""Installed-model catalog: Ollama's /api/tags behind a TTL cache with single-flight refresh.

Many concurrent misses cause one upstream call (the others wait for its result). Every mutation
made through this service (pull, create, copy, delete, also when passed through the proxy)
invalidates it. When Ollama is down and a copy exists, the copy is served marked stale.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from management_api import names
from management_api.ollama import OllamaClient, OllamaError


@dataclass(frozen=True)
class CatalogView:
    models: tuple[dict[str, Any], ...]
    fetched_at: float  # clock() of the upstream answer
    cached: bool  # served from the cache rather than fetched for this call
    stale: bool  # Ollama failed; this is the last good copy

    def keys(self) -> frozenset[str]:
        out = set()
        for model in self.models:
            name = model.get("name") or model.get("model")
            if isinstance(name, str) and names.is_valid(name):
                out.add(names.normalize(name))
        return frozenset(out)


class Catalog:
    def __init__(
        self,
        ollama: OllamaClient,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        read_timeout: float = 5.0,
    ) -> None:
        self._ollama = ollama
        self._ttl = ttl_seconds
        self._clock = clock
        self._read_timeout = read_timeout
        self._lock = threading.Lock()
        self._view: CatalogView | None = None
        self._keys: frozenset[str] = frozenset()
        self._generation = 0  # bumped by invalidate(); a fetch started before it is not cached
        self._inflight: threading.Event | None = None
        self._inflight_error: OllamaError | None = None
        self._last_good: CatalogView | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._view = None

    def view(self) -> CatalogView:
        """The installed models; raises OllamaError only when no copy exists at all."""
        while True:
            with self._lock:
                view = self._view
                if view is not None and self._clock() - view.fetched_at < self._ttl:
                    return CatalogView(view.models, view.fetched_at, cached=True, stale=False)
                waiter = self._inflight
                if waiter is None:
                    self._inflight = threading.Event()
                    generation = self._generation
                    leader = True
                else:
                    leader = False
            if not leader:
                waiter.wait(self._read_timeout * 4)
                with self._lock:
                    fresh = self._view
                    error = self._inflight_error
                if fresh is not None:
                    return CatalogView(fresh.models, fresh.fetched_at, cached=True, stale=False)
                if error is not None:
                    return self._stale_or_raise(error)
                continue
            return self._fetch(generation)

    def _fetch(self, generation: int) -> CatalogView:
        error: OllamaError | None = None
        view: CatalogView | None = None
        try:
            models = self._ollama.tags(read_timeout=self._read_timeout)
            view = CatalogView(tuple(models), self._clock(), cached=False, stale=False)
        except OllamaError as exc:
            error = exc
        with self._lock:
            if view is not None:
                self._last_good = view
                self._keys = view.keys()
                if generation == self._generation:
                    self._view = view
            self._inflight_error = error
            event, self._inflight = self._inflight, None
        assert event is not None
        event.set()
        if view is not None:
            return view
        assert error is not None
        return self._stale_or_raise(error)

    def _stale_or_raise(self, error: OllamaError) -> CatalogView:
        with self._lock:
            last = self._last_good
        if last is None:
            raise error
        return CatalogView(last.models, last.fetched_at, cached=True, stale=True)

    def age_seconds(self, view: CatalogView) -> float:
        return max(0.0, self._clock() - view.fetched_at)

    def is_installed(self, model_key: str) -> bool | None:
        """Whether a normalised name is installed; None when Ollama cannot tell us now."""
        try:
            view = self.view()
        except OllamaError:
            return None
        if view.stale:
            return None
        with self._lock:
            return model_key in self._keys
