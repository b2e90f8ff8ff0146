"""``GET /api/status`` and the page's files over real sockets: ETag/304, the port rule, access,
the healing log, rejections in the last 5 minutes, and the downsampled history."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.service_harness import ServiceProcess

ADMIN_KEY = "admin-key-0123456789abcdef"
USER_KEY = "user-key-0123456789abcdef"
ADMIN = {"X-API-Key": ADMIN_KEY}
USER = {"X-API-Key": USER_KEY}


@pytest.fixture(scope="module")
def quiet(emulator, tmp_path_factory) -> Iterator[ServiceProcess]:
    """Keys for changes only, and a slow sampler, so that nothing changes between two polls
    unless a test changes it."""
    state = tmp_path_factory.mktemp("status-quiet")
    (state / "ollama.log").write_text("")
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_AUTH_MODE": "management",
        "LLM_API_KEYS": f"ops:{ADMIN_KEY}:admin,app:{USER_KEY}:user",
        "LLM_OLLAMA_LOG_FILE": str(state / "ollama.log"),
        "LLM_STATS_INTERVAL": "60",
        "LLM_MODEL_CACHE_TTL": "60",
    }
    with ServiceProcess(env=env) as process:
        # The sampler's first sample comes ~1 s after the start; later ones a minute apart.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = requests.get(process.management_url + "/api/status", timeout=5).json()
            if body["telemetry"]["sampled_at"] is not None:
                break
            time.sleep(0.2)
        yield process


def _status(base: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(base + "/api/status", headers=headers or {}, timeout=10)


def test_an_unchanged_poll_gets_304_and_a_change_a_new_etag(quiet, emulator):
    base = quiet.management_url
    first = _status(base)
    assert first.status_code == 200
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.headers["Cache-Control"] == "no-cache"
    time.sleep(1.2)  # past the 1 s the shared snapshot is kept: this one is built anew
    again = _status(base, {"If-None-Match": etag})
    assert again.status_code == 304, again.text
    assert again.content == b"" and again.headers["ETag"] == etag
    assert again.headers["X-Request-ID"]
    # Loading a model changes what the page shows: a new body, a new tag.
    load = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
    requests.post(base + "/api/generate", json=load, timeout=30).raise_for_status()
    time.sleep(1.2)
    changed = _status(base, {"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    row = next(m for m in changed.json()["models"] if m["model"] == "llama3.2:1b")
    assert row["loaded"]["size_bytes"] > 0 and row["loaded"]["expires_at"]
    requests.post(base + "/api/cache/clear", headers=ADMIN, timeout=15).raise_for_status()


def test_the_snapshot_says_what_each_key_may_do(quiet):
    base = quiet.management_url
    anonymous = _status(base).json()["access"]
    assert anonymous == {"mode": "management", "key": None, "role": None, "can_act": False}
    user = _status(base, USER).json()["access"]
    assert user == {"mode": "management", "key": "app", "role": "user", "can_act": False}
    admin = _status(base, ADMIN).json()["access"]
    assert admin["can_act"] is True and admin["key"] == "ops"
    # ...and the API decides the same way.
    assert requests.post(base + "/api/cache/clear", timeout=10).status_code == 401
    assert requests.post(base + "/api/cache/clear", headers=USER, timeout=10).status_code == 403


def test_healing_actions_are_logged_with_who_did_them(quiet):
    base = quiet.management_url
    assert requests.post(base + "/api/cache/clear", headers=ADMIN, timeout=15).status_code == 200
    # The self-healing agent's form on the Ollama-compatible route counts too.
    unload = requests.post(base + "/api/generate", json={"model": "", "keep_alive": 0},
                           headers=USER, timeout=10)  # fmt: skip
    assert unload.status_code == 200
    time.sleep(1.1)
    entries = _status(base).json()["healing"]
    assert entries[0]["action"] == "unload_all" and entries[0]["via"] == "proxy"
    assert entries[0]["who"] == "app" and entries[0]["ok"] is True
    assert entries[1]["action"] == "cache_clear" and entries[1]["who"] == "ops"
    assert entries[1]["result"].startswith("Cache cleared")
    assert entries[0]["at"] >= entries[1]["at"] > time.time() - 60
    assert len(entries) <= 50


def test_status_and_page_are_on_the_management_port_only(quiet):
    for path in ("/ui/", "/ui/app.js"):
        on_proxy = requests.get(quiet.proxy_url + path, timeout=5)
        assert on_proxy.status_code == 404, path
        assert "management port" in on_proxy.json()["error"]
        assert requests.get(quiet.management_url + path, timeout=5).status_code == 200, path
    # On the proxy port, /api/status is Ollama's own route (issue 28, #8).
    ollamas = requests.get(quiet.proxy_url + "/api/status", timeout=5)
    assert ollamas.status_code == 200 and set(ollamas.json()) == {"cloud"}
    ours = requests.get(quiet.management_url + "/api/status", timeout=5)
    assert ours.status_code == 200 and "telemetry" in ours.json()


def test_page_files_need_no_key_and_carry_the_csp(quiet):
    base = quiet.management_url
    redirect = requests.get(base + "/ui", allow_redirects=False, timeout=5)
    assert redirect.status_code == 308 and redirect.headers["Location"] == "/ui/"
    types = {
        "/ui/": "text/html",
        "/ui/app.js": "text/javascript",
        "/ui/style.css": "text/css",
        "/ui/uPlot.iife.min.js": "text/javascript",
        "/ui/uPlot.min.css": "text/css",
        "/ui/favicon.svg": "image/svg+xml",
    }
    total = 0
    for path, content_type in types.items():
        response = requests.get(base + path, timeout=5)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith(content_type)
        assert response.headers["Content-Security-Policy"] == "default-src 'self'"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        again = requests.get(base + path, headers={"If-None-Match": response.headers["ETag"]},
                             timeout=5)  # fmt: skip
        assert again.status_code == 304
        total += len(response.content)
    assert total <= 150_000, f"the page weighs {total} bytes"
    for name in ("VENDORED.md", "uPlot.LICENSE", "..%2Fsnapshot.py", "nope.js"):
        missing = requests.get(base + "/ui/" + name, timeout=5)
        assert missing.status_code == 404 and missing.json()["type"] == "not_found", name


def test_rejections_in_the_last_5_minutes_degrade_the_verdict(service, emulator):
    model = "llama3.2:1b"
    service.set_limits(service.limits_file.read_text().replace(
        'match = "llama3.2:1b"\nmax_concurrency = 1\nmax_queue = 200',
        'match = "llama3.2:1b"\nmax_concurrency = 1\nmax_queue = 0'))  # fmt: skip
    emulator.set_model(model, tokens=400, tokens_per_second=20, ttft_seconds=0)

    def recent() -> int:
        body = _status(service.management).json()
        return next((m["rejected_recent"] for m in body["models"] if m["model"] == model), 0)

    before = recent()
    holder = requests.post(service.proxy + "/api/generate", json={"model": model, "prompt": "x"},
                           stream=True, timeout=30)  # fmt: skip
    try:
        refused = requests.post(service.proxy + "/api/generate",
                                json={"model": model, "prompt": "y"}, timeout=30)  # fmt: skip
        assert refused.status_code == 429
    finally:
        holder.close()
    service.wait_for(lambda: recent() == before + 1, timeout=5)
    body = _status(service.management).json()
    assert body["verdict"] in ("degraded", "unhealthy")
    texts = [r["text"] for r in body["reasons"] if r["level"] == "warning"]
    assert any(t.startswith(f"{model} rejected ") and t.endswith("in 5 min") for t in texts)


def test_history_is_downsampled_for_plots(service):
    service.wait_for(lambda: requests.get(service.management + "/api/stats/history",
                                          timeout=5).json()["count"] >= 8)  # fmt: skip
    full = requests.get(service.management + "/api/stats/history", timeout=5).json()
    assert full["max_points"] == 720 and full["count"] <= 720
    small = requests.get(service.management + "/api/stats/history?max_points=4", timeout=5).json()
    assert small["count"] <= 4 and small["downsampled"] is True
    assert small["points"][-1]["t"] >= full["points"][-1]["t"] - 1
    point = small["points"][-1]
    for key in ("cpu_per_core_percent", "memory_total_bytes", "memory_cached_bytes",
                "memory_unified", "gpu_frequency_mhz", "thermal_c", "power_rails_w"):  # fmt: skip
        assert key in point, key
    for bad in ("0", "7201", "x", "1.5"):
        response = requests.get(
            service.management + f"/api/stats/history?max_points={bad}", timeout=5
        )
        assert response.status_code == 400 and response.json()["field"] == "max_points", bad
