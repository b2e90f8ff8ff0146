"""Optional API keys with roles (no Flask; the app calls `KeyRing.authorize` per request).

Keys come from ``LLM_API_KEYS`` (``name:key:role[:max_concurrency]`` entries separated by
commas, optionally followed by ``:priority=C``, ``:ceiling=C`` and ``:weight=W``: the key's
default priority class, the highest it may ask for, its fair share; proxy/priority.py) and/or
``LLM_API_KEYS_FILE`` (one entry per line, ``#`` comments). Roles:

* ``admin`` — everything, including management mutations;
* ``user`` — inference and read-only routes.

``LLM_AUTH_MODE``: ``off`` (default: existing callers keep working), ``management`` (only
mutating routes need an admin key), ``all`` (every route needs a key; mutations an admin key).
Health probes never need a key: Docker's health check and the self-healing engine carry none;
nor do the status page's static files under ``/ui/`` (its data, ``/api/status``, is a read).

Keys are stored as SHA-256 digests and compared with `hmac.compare_digest` against every
configured key, so neither the match nor its position leaks through timing. The key itself is
never logged or forwarded (the proxy drops ``Authorization`` and ``X-API-Key``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from management_api.proxy.priority import DEFAULT_POLICY, CallerPolicy
from management_api.proxy.wait_queue import CLASSES
from management_api.settings import SettingsError

ADMIN, USER = "admin", "user"
ROLES = (ADMIN, USER)
OFF, MANAGEMENT, ALL = "off", "management", "all"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
MIN_KEY_LENGTH = 16

# Routes that change what is installed or loaded, or the service's own configuration.
_MUTATION_EXACT = {
    ("POST", "/api/models/pull"),
    ("DELETE", "/api/models/delete"),
    ("POST", "/api/cache/clear"),
    ("DELETE", "/api/cache"),
    ("POST", "/api/gpu/recover"),
    ("POST", "/api/session/reset"),
    ("POST", "/api/limits/reload"),
    ("POST", "/api/tasks/reload"),
    # Ollama's own mutations, reachable through the pass-through.
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
}
# Reads that tell one caller what the others do: an admin key whenever keys are on.
ADMIN_READS = frozenset({("GET", "/api/usage")})
_MUTATION_PREFIXES = (("DELETE", "/api/models/pulls/"), ("POST", "/api/blobs/"))
PUBLIC_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/ui"})
# The status page's files carry no data (the page reads /api/status with the user's key), and a
# browser cannot send a key header when it loads a page.
PUBLIC_PREFIXES = ("/ui/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_mutation(method: str, path: str) -> bool:
    if (method, path) in _MUTATION_EXACT:
        return True
    return any(method == m and path.startswith(p) for m, p in _MUTATION_PREFIXES)


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    max_concurrency: int | None
    digest: bytes
    policy: CallerPolicy = DEFAULT_POLICY  # its priority default, ceiling and fair-share weight


@dataclass(frozen=True)
class Decision:
    """The outcome of `KeyRing.authorize`: allowed (with the key, if any) or refused."""

    allowed: bool
    key: ApiKey | None = None
    status: int = 200  # 401 no/invalid key, 403 role not allowed
    message: str = ""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_ENTRY_FORM = "name:key:role[:max_concurrency][:priority=C][:ceiling=C][:weight=W]"


def _policy(options: list[str], where: str) -> CallerPolicy:
    """The optional ``priority=``, ``ceiling=`` and ``weight=`` fields of a key entry."""
    found: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in ("priority", "ceiling", "weight") or name in found:
            raise SettingsError(f"{where} is invalid: {option!r}; expected {_ENTRY_FORM}")
        found[name] = value
    for name in ("priority", "ceiling"):
        if name in found and found[name].lower() not in CLASSES:
            raise SettingsError(f"{where} is invalid: {name} must be one of {', '.join(CLASSES)}")
    weight = 1.0
    if "weight" in found:
        try:
            weight = float(found["weight"])
        except ValueError:
            weight = 0.0
        if not 0 < weight <= 1000:
            raise SettingsError(f"{where} is invalid: weight must be a number in (0, 1000]")
    priority, ceiling = found.get("priority"), found.get("ceiling")
    return CallerPolicy(
        priority.lower() if priority else None, ceiling.lower() if ceiling else None, weight
    )


def parse_entries(entries: Iterable[str], source: str) -> list[ApiKey]:
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for index, raw in enumerate(entries, start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":")
        where = f"{source} entry {index}"
        if len(parts) < 3:
            raise SettingsError(f"{where} is invalid: expected {_ENTRY_FORM}")
        options = parts[3:]
        if options and "=" not in options[0]:
            parts, options = parts[:4], options[1:]
        else:
            parts = parts[:3]
        name, secret, role = parts[0].strip(), parts[1].strip(), parts[2].strip().lower()
        if not _NAME.match(name):
            raise SettingsError(f"{where} is invalid: the name must be 1-64 of A-Z a-z 0-9 _ . -")
        if len(secret) < MIN_KEY_LENGTH:
            raise SettingsError(
                f"{where} ({name}) is invalid: keys must be at least {MIN_KEY_LENGTH} characters"
            )
        if role not in ROLES:
            raise SettingsError(f"{where} ({name}) is invalid: the role must be admin or user")
        limit = None
        if len(parts) == 4:
            try:
                limit = int(parts[3])
            except ValueError:
                limit = 0
            if limit < 1:
                raise SettingsError(
                    f"{where} ({name}) is invalid: max_concurrency must be a whole number >= 1"
                )
        if name in seen:
            raise SettingsError(f"{where} is invalid: the name {name!r} is used twice")
        seen.add(name)
        policy = _policy(options, f"{where} ({name})")
        keys.append(ApiKey(name, role, limit, _digest(secret), policy))
    return keys


def load_keys(inline: Iterable[str], file: Path | None) -> list[ApiKey]:
    keys = parse_entries(inline, "LLM_API_KEYS")
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError:
            raise SettingsError(f"LLM_API_KEYS_FILE={str(file)!r}: file not readable") from None
        keys += parse_entries(lines, "LLM_API_KEYS_FILE")
    names_seen = [k.name for k in keys]
    duplicates = sorted({n for n in names_seen if names_seen.count(n) > 1})
    if duplicates:
        raise SettingsError(f"API key names used twice: {', '.join(duplicates)}")
    return keys


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class KeyRing:
    def __init__(self, mode: str, keys: list[ApiKey]) -> None:
        if mode != OFF and not keys:
            raise SettingsError(
                f"LLM_AUTH_MODE={mode!r} needs at least one key in LLM_API_KEYS or "
                "LLM_API_KEYS_FILE"
            )
        self.mode = mode
        self.keys = keys
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def identify(self, secret: str | None) -> ApiKey | None:
        if not secret:
            return None
        candidate = _digest(secret)
        found = None
        for key in self.keys:  # no early exit: every key costs the same
            if hmac.compare_digest(candidate, key.digest):
                found = key
        return found

    def authorize(self, method: str, path: str, secret: str | None) -> Decision:
        key = self.identify(secret)
        if method == "OPTIONS" or is_public(path) or self.mode == OFF:
            return Decision(True, key)
        admin_only = is_mutation(method, path) or (method, path) in ADMIN_READS
        if self.mode == MANAGEMENT and not admin_only:
            return Decision(True, key)
        if key is None:
            message = "an API key is required" if not secret else "the API key is not valid"
            return Decision(False, None, 401, message)
        if admin_only and key.role != ADMIN:
            what = "read usage" if (method, path) in ADMIN_READS else "change models or settings"
            return Decision(False, key, 403, f"the key '{key.name}' may not {what} "
                                              "(admin role required)")  # fmt: skip
        return Decision(True, key)

    def may_unload_all(self, key_name: str | None) -> bool:
        """Whether the caller may send Ollama's unload-everything form (``{"model": "",
        "keep_alive": 0}``), which ends every running request. With ``all`` it needs the admin
        role, like ``POST /api/cache/clear``; with ``management`` it stays open without a key,
        because the self-healing engine sends it with none (and ``authorize`` has already
        refused an unknown key wherever a key is needed)."""
        if self.mode != ALL:
            return True
        key = next((k for k in self.keys if k.name == key_name), None)
        return key is not None and key.role == ADMIN

    # --- optional per-key concurrency cap

    def try_acquire(self, key: ApiKey) -> bool:
        if key.max_concurrency is None:
            return True
        with self._lock:
            current = self._in_flight.get(key.name, 0)
            if current >= key.max_concurrency:
                return False
            self._in_flight[key.name] = current + 1
            return True

    def release(self, key: ApiKey) -> None:
        if key.max_concurrency is None:
            return
        with self._lock:
            current = self._in_flight.get(key.name, 0)
            self._in_flight[key.name] = max(0, current - 1)

    def in_flight(self, name: str) -> int:
        with self._lock:
            return self._in_flight.get(name, 0)
