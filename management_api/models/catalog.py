"""Installed-model catalog: Ollama's /api/tags behind a TTL cache with single-flight refresh.

Many concurrent misses cause one upstream call (the others wait for its result). Every mutation
made through this service (pull, create, copy, delete, also when passed through the proxy)
invalidates it. When Ollama is down and a copy exists, the copy is served marked stale.

Besides the cache, the catalog answers the other questions about installed models: which are
loaded (`/api/ps`), and how to delete one properly (unload it first, since Ollama's delete leaves
a running model in memory).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from management_api import names
from management_api.ollama import OllamaClient, OllamaError, OllamaStatusError

log = logging.getLogger(__name__)

LOADED_READ_TIMEOUT_SECONDS = 5.0
UNLOAD_TIMEOUT_SECONDS = 5.0
UNLOAD_POLL_SECONDS = 0.1

_PARAMETER_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMBT])\s*\Z", re.IGNORECASE)
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def parameter_count(parameter_size: object) -> int | None:
    """``"3.2B"`` → 3200000000; None for anything else (the display string stays as it is)."""
    if not isinstance(parameter_size, str):
        return None
    match = _PARAMETER_SIZE.match(parameter_size)
    if match is None:
        return None
    return round(float(match.group(1)) * _SCALE[match.group(2).upper()])


def model_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """One /api/tags (or /api/ps) entry, flattened: the legacy fields first, then the details."""
    details = raw.get("details")
    details = details if isinstance(details, dict) else {}
    family = details.get("family")
    families = details.get("families")
    if not isinstance(families, list):
        families = [family] if family else []
    entry: dict[str, Any] = {
        "name": raw.get("name") or raw.get("model"),
        "model": raw.get("model") or raw.get("name"),
        "size": raw.get("size"),
        "modified_at": raw.get("modified_at"),
        "digest": raw.get("digest"),
        "format": details.get("format"),
        "family": family,
        "families": families,
        "parameter_size": details.get("parameter_size"),
        "parameter_count": parameter_count(details.get("parameter_size")),
        "quantization": details.get("quantization_level"),
    }
    # Newer Ollama builds add these (all omitempty); pass them on when present.
    for key in ("capabilities", "remote_model", "remote_host"):
        if key in raw:
            entry[key] = raw[key]
    for key in ("context_length", "embedding_length"):
        if key in details:
            entry[key] = details[key]
    return entry


def _key_of(raw: dict[str, Any]) -> str | None:
    name = raw.get("name") or raw.get("model")
    if isinstance(name, str) and names.is_valid(name):
        return names.normalize(name)
    return None


@dataclass(frozen=True)
class CatalogView:
    models: tuple[dict[str, Any], ...]  # /api/tags entries as Ollama sent them
    fetched_at: float  # clock() of the upstream answer
    cached: bool  # served from the cache rather than fetched for this call
    stale: bool  # Ollama failed; this is the last good copy
    entries: tuple[dict[str, Any], ...] = ()  # `model_metadata` of each model, same order
    age_seconds: float = 0.0  # how old the list was when it was served

    def keys(self) -> frozenset[str]:
        return frozenset(key for key in map(_key_of, self.models) if key is not None)

    @cached_property
    def digests(self) -> dict[str, str]:
        """Normalised name → manifest digest (the response cache keys on it)."""
        out: dict[str, str] = {}
        for raw in self.models:
            key, digest = _key_of(raw), raw.get("digest")
            if key is not None and isinstance(digest, str) and digest:
                out[key] = digest
        return out


@dataclass(frozen=True)
class DeleteResult:
    model: str  # as the caller named it
    deleted_name: str  # as Ollama lists it
    freed_bytes: int
    was_loaded: bool
    unloaded: bool  # was loaded, and gone from /api/ps before the delete
    unload_error: str | None = field(default=None)


class ModelNotFound(Exception):
    """The model is not installed."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"model '{model}' not found")


class Catalog:
    def __init__(
        self,
        ollama: OllamaClient,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        read_timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ollama = ollama
        self._ttl = ttl_seconds
        self._clock = clock
        self._read_timeout = read_timeout
        self._sleep = sleep
        self._lock = threading.Lock()
        self._view: CatalogView | None = None
        self._keys: frozenset[str] = frozenset()
        self._generation = 0  # bumped by invalidate(); a fetch started before it is not cached
        # Pulls, creates and deletes under way through the proxy: while any runs, each list is
        # asked of Ollama, since its client may have the answer before the proxy has closed it.
        self._mutations = 0
        self._inflight: threading.Event | None = None
        self._inflight_error: OllamaError | None = None
        self._inflight_view: CatalogView | None = None
        self._inflight_generation = -1
        self._last_good: CatalogView | None = None
        self._refreshing = False  # a background refresh thread is running

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._view = None

    def mutation_started(self) -> None:
        """A request that may change the installed models is on its way to Ollama."""
        with self._lock:
            self._mutations += 1
            self._generation += 1
            self._view = None

    def mutation_ended(self) -> None:
        """That request is over (answered, failed or cut); call once per mutation_started."""
        with self._lock:
            self._mutations = max(0, self._mutations - 1)
            self._generation += 1
            self._view = None

    def view(self) -> CatalogView:
        """The installed models; raises OllamaError only when no copy exists at all."""
        while True:
            with self._lock:
                view = self._view
                young = view is not None and self._clock() - view.fetched_at < self._ttl
                if view is not None and young and not self._mutations:
                    return self._served(view, stale=False)
                waiter = self._inflight
                if waiter is None:
                    self._inflight = threading.Event()
                    generation = self._generation
                    leader = True
                else:
                    leader = False
            if not leader:
                answered = waiter.wait(self._read_timeout * 4)
                with self._lock:
                    # The leader's answer (cached or not: it is not while a mutation runs),
                    # unless the list was invalidated after the leader asked.
                    current = self._inflight_generation == self._generation
                    fresh = self._inflight_view if answered and current else None
                    error = self._inflight_error
                if fresh is not None:
                    return self._served(fresh, stale=False)
                if error is not None:
                    return self._stale_or_raise(error)
                continue
            return self._fetch(generation)

    def _served(self, view: CatalogView, *, stale: bool) -> CatalogView:
        return replace(view, cached=True, stale=stale, age_seconds=self.age_seconds(view))

    def _fetch(self, generation: int) -> CatalogView:
        error: OllamaError | None = None
        view: CatalogView | None = None
        try:
            models = self._ollama.tags(read_timeout=self._read_timeout)
            view = CatalogView(
                tuple(models),
                self._clock(),
                cached=False,
                stale=False,
                entries=tuple(model_metadata(m) for m in models),
            )
        except OllamaError as exc:
            error = exc
        with self._lock:
            if view is not None:
                self._last_good = view
                self._keys = view.keys()
                if generation == self._generation and not self._mutations:
                    self._view = view
            self._inflight_error = error
            self._inflight_view = view
            self._inflight_generation = generation
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
        return self._served(last, stale=True)

    def age_seconds(self, view: CatalogView) -> float:
        return max(0.0, self._clock() - view.fetched_at)

    def known_keys(self) -> frozenset[str]:
        """Normalised names of the last model list Ollama gave (fresh or stale); never waits."""
        with self._lock:
            return self._keys

    def has_list(self) -> bool:
        """Whether Ollama ever gave a model list (so a name missing from it is unknown)."""
        with self._lock:
            return self._last_good is not None or self._view is not None

    def is_installed(self, model_key: str) -> bool | None:
        """Whether a normalised name is installed; None when Ollama cannot tell us now.

        Every proxied inference request asks this, so a model last seen installed answers at
        once even when the list is past its TTL or invalidated (it is then refreshed in the
        background, one fetch at a time). Only a name the last list did not have waits for a
        fresh one, so a model pulled a moment ago is admitted like any other.
        """
        with self._lock:
            known = model_key in self._keys
            view = self._view
            expired = view is None or self._clock() - view.fetched_at >= self._ttl
        if known:
            if expired:
                self._refresh_in_background()
            return True
        try:
            view = self.view()
        except OllamaError:
            return None
        if view.stale:
            return None
        with self._lock:
            return model_key in self._keys

    def digest(self, model_key: str) -> str | None:
        """The installed model's manifest digest; None when it is not installed or Ollama
        cannot tell us now.

        After an invalidation (a pull, copy, create or delete went through this service) the
        list is fetched again before answering, so a changed digest is seen at once; a list
        merely past its TTL answers from the last copy and refreshes in the background (a name
        it lacks waits for the fresh list, as in `is_installed`).
        """
        with self._lock:
            view = self._view
            expired = view is None or self._clock() - view.fetched_at >= self._ttl
        if view is not None:
            digest = view.digests.get(model_key)
            if digest is not None or not expired:
                if expired:
                    self._refresh_in_background()
                return digest
        try:
            view = self.view()  # invalidated, or a name the expired list did not have
        except OllamaError:
            return None
        return None if view.stale else view.digests.get(model_key)

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing or self._inflight is not None:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh, name="catalog-refresh", daemon=True).start()

    def _refresh(self) -> None:
        try:
            self.view()  # one bounded fetch (read timeout, retries), then the thread ends
        except OllamaError:
            pass  # the last good list stays; the next expired lookup tries again
        except Exception:
            log.exception("catalog refresh failed")
        finally:
            with self._lock:
                self._refreshing = False

    # --- loaded models

    def loaded(self, *, read_timeout: float = LOADED_READ_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
        """Models in memory (`/api/ps`), with metadata; one bounded try (callers poll this)."""
        payload = self._ollama.get_json("/api/ps", read_timeout=read_timeout, retry=False)
        models = payload.get("models") if isinstance(payload, dict) else None
        rows = []
        for raw in models if isinstance(models, list) else []:
            if not isinstance(raw, dict):
                continue
            row = model_metadata(raw)
            row.pop("modified_at", None)
            row.update(
                size_vram=raw.get("size_vram"),
                expires_at=raw.get("expires_at"),
                context_length=raw.get("context_length", row.get("context_length")),
            )
            rows.append(row)
        return rows

    # --- delete

    def delete(self, model: str, *, unload_timeout: float = UNLOAD_TIMEOUT_SECONDS) -> DeleteResult:
        """Delete an installed model, unloading it first if it is running.

        Raises ModelNotFound when it is not installed, OllamaError when Ollama fails. The cache
        is invalidated whatever happens once Ollama was asked.
        """
        key = names.normalize(model)
        installed = self._ollama.tags(read_timeout=self._read_timeout)
        entry = next((m for m in installed if _key_of(m) == key), None)
        if entry is None:
            self.invalidate()  # the cached list may still show it
            raise ModelNotFound(model)
        name = str(entry.get("name") or entry.get("model"))
        was_loaded, unloaded, unload_error = self._unload(key, unload_timeout)
        try:
            self._ollama.delete(name, read_timeout=self._read_timeout)
        except OllamaStatusError as exc:
            if exc.status == 404:
                raise ModelNotFound(model) from None
            raise
        finally:
            self.invalidate()
        return DeleteResult(
            model=model,
            deleted_name=name,
            freed_bytes=_freed_bytes(entry, installed),
            was_loaded=was_loaded,
            unloaded=unloaded,
            unload_error=unload_error,
        )

    def _unload(self, key: str, timeout: float) -> tuple[bool, bool, str | None]:
        """(was loaded, gone from /api/ps now, why not) for the model `key`."""
        running = [m for m in self._ollama.ps(read_timeout=self._read_timeout) if _key_of(m) == key]
        if not running:
            return False, False, None
        name = str(running[0].get("name") or running[0].get("model"))
        try:
            self._send_unload(name, timeout)
        except OllamaError:
            return True, False, "the unload request failed"
        deadline = self._clock() + timeout
        while True:
            try:
                still = any(_key_of(m) == key for m in self._ollama.ps(read_timeout=timeout))
            except OllamaError:
                return True, False, "Ollama did not answer /api/ps after the unload"
            if not still:
                return True, True, None
            if self._clock() >= deadline:
                # Busy: Ollama unloads it once its running requests finish.
                return True, False, f"still loaded after {timeout:g} s (busy)"
            self._sleep(UNLOAD_POLL_SECONDS)

    def _send_unload(self, name: str, timeout: float) -> None:
        # Ollama's unload form; embedding-only models reject /api/generate, so they get /api/embed.
        try:
            self._ollama.post_json(
                "/api/generate", {"model": name, "keep_alive": 0}, read_timeout=timeout
            )
        except OllamaStatusError as exc:
            if "does not support generate" not in exc.message:
                raise
            self._ollama.post_json(
                "/api/embed", {"model": name, "input": [], "keep_alive": 0}, read_timeout=timeout
            )


def _freed_bytes(entry: dict[str, Any], installed: list[dict[str, Any]]) -> int:
    """The model's size, or 0 when another name shares its manifest (a copy frees nothing)."""
    size = entry.get("size")
    digest = entry.get("digest")
    shared = digest and any(m is not entry and m.get("digest") == digest for m in installed)
    if shared or not isinstance(size, int):
        return 0
    return size
