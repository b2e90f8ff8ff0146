import hmac

import pytest

from management_api.access import auth
from management_api.access.cors import CorsPolicy
from management_api.bodies import json_object, loads_bounded, nesting_depth
from management_api.errors import BadRequest
from management_api.settings import SettingsError

ADMIN = "adm-0123456789abcdef"
USER = "usr-0123456789abcdef"


def ring(mode: str = "all") -> auth.KeyRing:
    keys = auth.parse_entries([f"ops:{ADMIN}:admin", f"n8n:{USER}:user:2"], "LLM_API_KEYS")
    return auth.KeyRing(mode, keys)


def test_entries_are_parsed_with_optional_cap():
    keys = auth.parse_entries([f" ops:{ADMIN}:Admin ", "# comment", "", f"n8n:{USER}:user:2"], "x")
    assert [(k.name, k.role, k.max_concurrency) for k in keys] == [
        ("ops", "admin", None),
        ("n8n", "user", 2),
    ]
    assert all(ADMIN not in repr(k) for k in keys)  # only the digest is kept


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("ops:short:admin", "at least 16 characters"),
        (f"ops:{ADMIN}:root", "role must be admin or user"),
        (f"ops:{ADMIN}", r"expected name:key:role\[:max_concurrency\]"),
        (f"bad name:{ADMIN}:user", "the name must be"),
        (f"ops:{ADMIN}:user:0", "max_concurrency must be a whole number >= 1"),
    ],
)
def test_bad_entries_name_the_problem(entry, message):
    with pytest.raises(SettingsError, match=message):
        auth.parse_entries([entry], "LLM_API_KEYS")


def test_duplicate_names_and_missing_keys_are_refused(tmp_path):
    with pytest.raises(SettingsError, match="used twice"):
        auth.parse_entries([f"ops:{ADMIN}:admin", f"ops:{USER}:user"], "x")
    with pytest.raises(SettingsError, match="needs at least one key"):
        auth.KeyRing("management", [])
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops keys\nops:{ADMIN}:admin\n")
    assert [k.name for k in auth.load_keys([f"n8n:{USER}:user"], keys_file)] == ["n8n", "ops"]


def test_comparison_is_constant_time_over_every_key(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keyring = ring()
    assert keyring.identify(ADMIN).name == "ops"
    assert len(calls) == 2  # no early exit on the first match
    calls.clear()
    assert keyring.identify("x" * 40) is None
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("mode", "method", "path", "secret", "allowed", "status"),
    [
        ("off", "POST", "/api/cache/clear", None, True, 200),
        ("management", "POST", "/api/generate", None, True, 200),
        ("management", "DELETE", "/api/models/delete", None, False, 401),
        ("management", "DELETE", "/api/delete", USER, False, 403),
        ("management", "POST", "/api/blobs/sha256:abc", ADMIN, True, 200),
        ("all", "GET", "/api/tags", None, False, 401),
        ("all", "GET", "/api/tags", "wrong-key-wrong-key", False, 401),
        ("all", "GET", "/api/tags", USER, True, 200),
        ("all", "GET", "/health", None, True, 200),
        ("all", "OPTIONS", "/api/tags", None, True, 200),
        ("all", "DELETE", "/api/models/pulls/abc", USER, False, 403),
    ],
)
def test_authorize(mode, method, path, secret, allowed, status):
    decision = ring(mode).authorize(method, path, secret)
    assert (decision.allowed, decision.status) == (allowed, status)


def test_presented_key_sources():
    assert auth.presented_key("Bearer abc", None) == "abc"
    assert auth.presented_key("Basic abc", None) is None
    assert auth.presented_key("Bearer abc", "xyz") == "xyz"


def test_per_key_cap_is_released_exactly():
    keyring = ring()
    key = keyring.identify(USER)
    assert keyring.try_acquire(key) and keyring.try_acquire(key)
    assert not keyring.try_acquire(key)
    keyring.release(key)
    assert keyring.in_flight("n8n") == 1
    keyring.release(key)
    keyring.release(key)  # extra release never goes negative
    assert keyring.in_flight("n8n") == 0


def test_cors_policy():
    none = CorsPolicy([], ollama_defaults=False)
    assert not none.allows("http://x") and not none.allows("http://localhost:3000")
    some = CorsPolicy(["http://dash:3001/", ""])
    assert some.allows("http://dash:3001") and not some.allows("http://other")
    assert some.response_headers("http://dash:3001")["Access-Control-Allow-Origin"] == (
        "http://dash:3001"
    )
    anyone = CorsPolicy(["*"])
    assert anyone.allows("https://whatever")
    assert anyone.response_headers("https://w")["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in anyone.preflight_headers("https://w", None)


def test_bounded_json():
    assert nesting_depth(b'{"a": "[[[[", "b": [1, {"c": 2}]}') == 3
    assert loads_bounded(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        loads_bounded(b"[" * 1000 + b"]" * 1000)
    with pytest.raises(BadRequest, match="too deeply nested"):
        json_object(b"[" * 100_000)
    with pytest.raises(BadRequest, match="must be a JSON object"):
        json_object(b"[1]")
    assert json_object(b"  ", required=False) == {}


def test_unload_all_needs_admin_only_in_all_mode():
    assert ring("all").may_unload_all("ops")
    assert not ring("all").may_unload_all("n8n")
    assert not ring("all").may_unload_all(None)
    for mode in ("management", "off"):
        assert ring(mode).may_unload_all(None) and ring(mode).may_unload_all("n8n")
