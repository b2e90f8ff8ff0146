"""The status page in a real headless Chromium (Debian's), driven by Selenium.

The real service under gunicorn with the emulator behind it, as everywhere in tests/integration.
`make test` installs the browser (scripts/install-browser.sh); where it cannot be installed the
tests skip and say so. One browser serves every test (start-up is the slow part). Screenshots of
the page (desktop and 375 px) are written to bench/results/ui/.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.service_harness import ROOT, ServiceProcess

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = ROOT / "bench" / "results" / "ui"
WAIT_SECONDS = 20
MODEL = "llama3.2:1b"
ADMIN_KEY = "admin-key-0123456789abcdef"
USER_KEY = "user-key-0123456789abcdef"
NONE = "\u2013"  # the page's en dash: no value

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver "
    "(scripts/install-browser.sh does, as root)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests and CI run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = WAIT_SECONDS, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def text_of(driver, selector: str) -> str | None:
    """The text of the first match, read in one step (rows are re-rendered on every poll)."""
    return driver.execute_script(
        "const n = document.querySelector(arguments[0]); return n ? n.textContent : null;",
        selector,
    )


def cell(model: str, field: str) -> str:
    return f'tr[data-model="{model}"] td[data-field="{field}"]'


def open_page(driver, base_url: str) -> None:
    driver.get("about:blank")
    driver.get_log("browser")  # drop what an earlier test left
    driver.get_log("performance")
    driver.get(base_url + "/ui/")
    wait(driver, lambda d: text_of(d, "#verdict-word") in ("healthy", "degraded", "unhealthy"),
         message="the verdict never appeared")  # fmt: skip


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _record_timing(driver) -> None:
    """First paint and first rendered snapshot, for the README (measured, not asserted)."""
    timing = driver.execute_script(
        "const p = performance.getEntriesByName('first-contentful-paint')[0];"
        "const s = performance.getEntriesByName('first-status')[0];"
        "return {first_contentful_paint_ms: p ? Math.round(p.startTime) : null,"
        "        first_status_rendered_ms: s ? Math.round(s.startTime) : null};"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")


def confirm(driver) -> None:
    wait(
        driver, lambda d: d.find_element(By.ID, "confirm-dialog").get_attribute("open") is not None
    )
    driver.find_element(By.ID, "confirm-ok").click()


def hold_requests(base_url: str, model: str, count: int) -> list[socket.socket]:
    """Send `count` long generations on raw sockets and leave them open: closing a socket is
    the client leaving, which frees its slot or queue place at once."""
    host_port = urlsplit(base_url)
    body = json.dumps({"model": model, "prompt": "hold"}).encode()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: {host_port.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host_port.hostname, host_port.port), timeout=10)
        sock.sendall(head.encode() + body)
        sockets.append(sock)
    return sockets


def release(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def loaded_names(service) -> list[str]:
    body = requests.get(service.management + "/api/models/loaded", timeout=5).json()
    return [m["name"] for m in body["loaded_models"]]


def test_page_loads_with_no_error_and_nothing_from_outside(service, browser):
    response = requests.get(service.management + "/ui/", timeout=5)
    assert response.headers["Content-Security-Policy"] == "default-src 'self'"
    open_page(browser, service.management)
    wait(browser, lambda d: text_of(d, cell(MODEL, "limit")) == "1", message="no model rows")
    wait(browser, lambda d: d.execute_script(
        "return document.querySelectorAll('#chart-cpu canvas').length") > 0,
        message="the CPU chart was never drawn")  # fmt: skip
    assert console_errors(browser) == []
    _record_timing(browser)
    urls = requested_urls(browser)
    assert any(u.endswith("/api/status") for u in urls)
    assert any("/api/stats/history" in u for u in urls)
    outside = [u for u in urls if not u.startswith(service.management + "/")]
    assert outside == []
    # Every model the emulator has is listed, with its limit from the limits file.
    tags = requests.get(service.management + "/api/models", timeout=5).json()["models"]
    for name in ("gemma3:4b", "qwen3:14b-q8", MODEL):
        assert name in {m["name"] for m in tags}
        assert text_of(browser, f'tr[data-model="{name}"]') is not None
    assert text_of(browser, cell("qwen3:14b-q8", "limit")) == "2"
    assert text_of(browser, "#freshness") == "live"
    # Copy diagnostics: the text is shown (and copied where the browser allows the clipboard).
    browser.find_element(By.ID, "copy-diagnostics").click()
    wait(browser, lambda d: text_of(d, "#diag-result"))
    text = browser.find_element(By.ID, "diag-text").get_attribute("value")
    assert text.startswith("llm-service ") and "verdict: " in text and f"  {MODEL}: limit 1" in text
    assert console_errors(browser) == []


def test_counters_follow_requests_held_in_a_queue(service, emulator, browser):
    emulator.set_model(MODEL, tokens=400, tokens_per_second=20, ttft_seconds=0)
    open_page(browser, service.management)
    held = hold_requests(service.proxy, MODEL, 3)
    try:
        # Limit 1: one runs, two wait in our queue; the page shows both within a poll or two.
        wait(browser, lambda d: (text_of(d, cell(MODEL, "running")),
                                 text_of(d, cell(MODEL, "queued"))) == ("1", "2"),
             message="the page never showed 1 running and 2 queued")  # fmt: skip
        counters = service.model_counters(MODEL)
        assert (counters["in_flight"], counters["queued"]) == (1, 2)
    finally:
        release(held)
    wait(browser, lambda d: (text_of(d, cell(MODEL, "running")),
                             text_of(d, cell(MODEL, "queued"))) == ("0", "0"),
         message="the counters never went back to 0")  # fmt: skip
    assert console_errors(browser) == []


def test_callers_table_shows_usage_per_caller(service, browser):
    """Requests of two named callers appear in the Callers table with the numbers /api/usage
    gives (this hour and the last 24 h)."""
    for caller, count in (("page-dash", 2), ("page-n8n", 1)):
        for _ in range(count):
            answer = requests.post(service.proxy + "/api/generate",
                                   json={"model": MODEL, "prompt": "hi", "stream": False},
                                   headers={"X-LLM-Caller": caller}, timeout=30)  # fmt: skip
            assert answer.status_code == 200
    usage = requests.get(service.management + "/api/usage", timeout=5).json()
    rows = {row["caller"]: row for row in usage["groups"]}
    open_page(browser, service.management)
    for caller in ("page-dash", "page-n8n"):
        want = rows[caller]
        tokens = str(want["prompt_tokens"] + want["completion_tokens"])
        for window in ("hour", "day"):
            row = f'#callers-body tr[data-caller="{caller}"][data-window="{window}"]'
            requests_cell, count = row + ' td[data-label="Requests"]', str(want["requests"])
            wait(browser, lambda d, c=requests_cell, n=count: text_of(d, c) == n,
                 message=f"no {window} row for {caller}")  # fmt: skip
            assert text_of(browser, row + ' td[data-label="Tokens"]') == tokens
            gpu = f"{want['gpu_seconds']:.1f}"
            assert text_of(browser, row + ' td[data-label="GPU s"]') == gpu
            assert text_of(browser, row + ' td[data-label="Wait p95 standard"]') != NONE
            assert text_of(browser, row + ' td[data-label="Wait p95 batch"]') == NONE
    assert browser.find_element(By.ID, "callers-section").is_displayed()
    assert console_errors(browser) == []


def test_a_pull_started_from_the_page_reaches_100_percent(service, emulator, browser):
    emulator.configure(pull_bytes_per_second=25_000_000)  # all-minilm (46 MB) takes ~2 s
    open_page(browser, service.management)
    field = browser.find_element(By.ID, "pull-model")
    field.send_keys("all-minilm")
    browser.find_element(By.CSS_SELECTOR, "#pull-form button[type=submit]").click()
    wait(browser, lambda d: "started" in (text_of(d, "#pull-result") or ""),
         message="the pull was not started")  # fmt: skip
    job_selector = "#pulls li[data-job]"
    wait(browser, lambda d: text_of(d, job_selector) is not None)
    wait(browser, lambda d: d.execute_script(
        "const li = document.querySelector(arguments[0]);"
        "return li && li.dataset.state === 'succeeded' && li.querySelector('progress').value;",
        job_selector) == 100, message="the progress bar never reached 100 %")  # fmt: skip
    assert "100.0 %" in text_of(browser, job_selector)
    assert console_errors(browser) == []


def test_cache_clear_unloads_only_after_confirming(service, browser):
    requests.post(service.management + "/api/generate",
                  json={"model": MODEL, "prompt": "load me", "stream": False},
                  timeout=30).raise_for_status()  # fmt: skip
    assert MODEL in loaded_names(service)
    open_page(browser, service.management)
    wait(browser, lambda d: (text_of(d, cell(MODEL, "loaded")) or "").startswith("loaded"))
    button = browser.find_element(By.CSS_SELECTOR, '[data-action="cache-clear"]')
    button.click()
    wait(browser, lambda d: d.find_element(By.ID, "confirm-dialog").get_attribute("open"))
    browser.find_element(By.ID, "confirm-cancel").click()  # changed my mind: nothing happens
    assert MODEL in loaded_names(service)
    button.click()
    confirm(browser)
    wait(browser, lambda d: (text_of(d, "#action-result") or "").startswith("done"),
         message="the cache clear did not report back")  # fmt: skip
    assert "Cache cleared" in text_of(browser, "#action-result")
    assert loaded_names(service) == []
    # The action is in the page's log of healing actions, with who did it (no key here).
    wait(browser, lambda d: "cache clear" in (text_of(d, "#healing-body") or ""))
    assert "no key" in text_of(browser, "#healing-body")
    assert console_errors(browser) == []


def _network(driver, offline: bool) -> None:
    driver.execute_cdp_cmd("Network.enable", {})
    conditions = {"offline": offline, "latency": 0, "downloadThroughput": -1,
                  "uploadThroughput": -1}  # fmt: skip
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)


def test_missed_polls_show_stale_and_recover(service, browser):
    open_page(browser, service.management)
    wait(browser, lambda d: text_of(d, "#freshness") == "live")
    _network(browser, offline=True)
    try:
        wait(browser, lambda d: (text_of(d, "#freshness") or "").startswith("stale"),
             message="two missed polls did not show as stale")  # fmt: skip
        assert "stale" in browser.find_element(By.ID, "verdict").get_attribute("class")
    finally:
        _network(browser, offline=False)
    wait(browser, lambda d: text_of(d, "#freshness") == "live", message="never live again")
    browser.get_log("browser")  # the failed fetches were logged, as they should be


def test_screenshots_desktop_and_375_px(service, emulator, browser):
    """Pictures for the README: a queue held on one model, a loaded model, a finished pull."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    emulator.set_model("gemma3:4b", tokens=400, tokens_per_second=20, ttft_seconds=0)
    limits = service.limits_file.read_text()
    gemma = 'match = "gemma3:4b"\nmax_concurrency = '
    service.set_limits(limits.replace(gemma + "4", gemma + "1"))
    held = hold_requests(service.proxy, "gemma3:4b", 3)
    try:
        browser.set_window_size(1280, 1900)
        open_page(browser, service.management)
        wait(browser, lambda d: text_of(d, cell("gemma3:4b", "queued")) == "2")
        browser.save_screenshot(str(SCREENSHOTS / "status-desktop.png"))
        browser.set_window_size(375, 2600)
        wait(browser, lambda d: text_of(d, cell("gemma3:4b", "queued")) == "2")
        browser.save_screenshot(str(SCREENSHOTS / "status-375.png"))
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width} px wide at 375 px"
    finally:
        browser.set_window_size(1280, 1000)
        release(held)
    assert Path(SCREENSHOTS / "status-375.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def keyed_service(emulator, tmp_path_factory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("status-keys")
    (state / "ollama.log").write_text("")
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_AUTH_MODE": "all",
        "LLM_API_KEYS": f"ops:{ADMIN_KEY}:admin,app:{USER_KEY}:user",
        "LLM_OLLAMA_LOG_FILE": str(state / "ollama.log"),
        "LLM_STATS_INTERVAL": "0.5",
    }
    with ServiceProcess(env=env) as process:
        yield process


def test_with_keys_the_page_asks_for_one_and_shows_refusals(keyed_service, browser):
    base = keyed_service.management_url
    browser.get("about:blank")
    browser.get_log("browser")
    browser.get(base + "/ui/")
    # No key yet: /api/status answers 401 and the page asks for a key, saying why.
    wait(browser, lambda d: d.find_element(By.ID, "key-dialog").get_attribute("open"),
         message="no key prompt")  # fmt: skip
    assert "API key is required" in text_of(browser, "#key-reason")
    browser.find_element(By.ID, "key-input").send_keys(USER_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait(browser, lambda d: text_of(d, "#verdict-word") in ("healthy", "degraded", "unhealthy"))
    assert 'key "app" (user)' in text_of(browser, "#access")
    # Who uses the service is for admins (as /api/usage): a user key gets no Callers table.
    assert not browser.find_element(By.ID, "callers-section").is_displayed()
    assert "actions need an admin key" in text_of(browser, "#access")
    # A user key may read but not act: the API's refusal is shown, in its own words.
    browser.find_element(By.CSS_SELECTOR, '[data-action="cache-clear"]').click()
    confirm(browser)
    wait(browser, lambda d: "refused" in (text_of(d, "#action-result") or ""))
    result = text_of(browser, "#action-result")
    assert "403" in result and "admin role required" in result
    # The browser saw the 401 and the 403 as failed requests; nothing else went wrong.
    errors = [e for e in console_errors(browser) if " 401 " not in e and " 403 " not in e]
    assert errors == []
