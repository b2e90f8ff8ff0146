"""Two llm-service nodes (two emulators, two gunicorns) behind LiteLLM's Router, configured with
the ``router_settings`` of deploy/k8s/overlays/router-litellm: a saturated node's 429 +
Retry-After and a node's 503 (its Ollama down) move traffic to the other node, traffic comes
back after recovery, and every request gets an answer or a clear error.

LiteLLM runs in its own venv (``make router-venv``; see tests/router/litellm_driver.py for why)
as a subprocess fed over stdin. Node A is given a far higher routing weight than node B, so
that "A first" is the rule and a move to B shows the router reacting, not chance.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ROOT, ServiceProcess

ROUTER_PYTHON = ROOT / ".venv-router" / "bin" / "python"
DRIVER = Path(__file__).with_name("litellm_driver.py")
LITELLM_CONFIG = ROOT / "deploy" / "k8s" / "overlays" / "router-litellm" / "litellm-config.yaml"
MODEL = "llama3.2:1b"
# One request at a time per node and no queue: a second request is a 429 at once.
LIMITS = "[defaults]\nmax_concurrency = 1\nmax_queue = 0\nmax_wait_seconds = 30\n"

if not ROUTER_PYTHON.exists():
    message = f"{ROUTER_PYTHON} missing: run `make router-venv` (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


class Node:
    """One llm-service instance with its own emulated Ollama."""

    def __init__(self, name: str, state: Path) -> None:
        self.name = name
        self.emulator = FakeOllama(num_parallel=8).start()
        limits = state / f"{name}-limits.toml"
        limits.write_text(LIMITS)
        self.service = ServiceProcess(
            env={
                "OLLAMA_URL": self.emulator.url,
                "LLM_LIMITS_FILE": str(limits),
                "LLM_UPSTREAM_GRACE_SECONDS": "1",
                "LLM_STATS_INTERVAL": "5",
            }
        ).start()

    @property
    def url(self) -> str:
        return self.service.proxy_url

    def counters(self) -> dict:
        totals = requests.get(self.service.management_url + "/api/limits", timeout=5).json()
        return totals["totals"]

    def ready(self) -> int:
        return requests.get(self.url + "/health/ready", timeout=5).status_code

    def hold_slot(self, seconds: float) -> threading.Thread:
        """Take the node's one slot with a direct request answering after `seconds`."""
        self.emulator.set_model(MODEL, ttft_seconds=seconds, tokens=2, tokens_per_second=100)
        before = self.counters()["admitted"]

        def call() -> None:
            requests.post(
                self.url + "/api/generate",
                json={"model": MODEL, "prompt": "hold", "stream": False},
                timeout=seconds + 30,
            )

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        _wait(lambda: self.counters()["in_flight"] == 1 and self.counters()["admitted"] > before)
        return thread

    def stop_ollama(self) -> None:
        self.emulator.stop()

    def start_ollama(self) -> None:
        port = self.emulator.port
        self.emulator = FakeOllama("--port", str(port), num_parallel=8).start()

    def close(self) -> None:
        self.service.stop()
        self.emulator.stop()


def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


class Router:
    """The LiteLLM driver subprocess."""

    def __init__(self, nodes: dict[str, dict]) -> None:
        settings = yaml.safe_load(LITELLM_CONFIG.read_text())["router_settings"]
        config = {"model": MODEL, "nodes": nodes, "router": settings, "timeout": 30}
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.process = subprocess.Popen(
            [str(ROUTER_PYTHON), str(DRIVER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        hello = self._read()
        assert hello["ready"] is True, hello

    def _read(self):
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the LiteLLM driver exited with {self.process.poll()}"
        return json.loads(line)

    def send(self, n: int) -> list[dict]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"n": n, "prompt": "Why is the sky blue?"}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[tuple[Node, Node]]:
    state = tmp_path_factory.mktemp("router")
    a = Node("a", state)
    try:
        b = Node("b", state)
    except BaseException:
        a.close()
        raise
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module")
def driver(nodes) -> Iterator[Router]:
    a, b = nodes
    # Weights: A is tried first unless the router has taken it out.
    router = Router({"node-a": {"url": a.url, "weight": 1000}, "node-b": {"url": b.url}})
    try:
        yield router
    finally:
        router.close()


def _until_served_by(router: Router, node: str, timeout: float = 20.0) -> list[str]:
    """Send one request at a time until `node` answers one; every answer must be a success.
    Returns the nodes that answered, in order."""
    served: list[str] = []

    def answered_by_node() -> bool:
        (result,) = router.send(1)
        assert result["ok"], result  # nothing is lost while a node is out
        served.append(result["node"])
        return result["node"] == node

    _wait(answered_by_node, timeout)
    return served


@pytest.fixture
def router(nodes, driver) -> Router:
    for node in nodes:
        node.emulator.reset()
        _wait(lambda n=node: n.ready() == 200 and n.counters()["in_flight"] == 0)
    # A node the previous test took out comes back once its Retry-After has passed.
    _until_served_by(driver, "node-a")
    return driver


def test_a_saturated_node_answers_429_and_the_router_moves_to_the_other(nodes, router):
    a, b = nodes
    assert [r["node"] for r in router.send(2)] == ["node-a", "node-a"]
    rejected_before = a.counters()["rejected"]["queue_full"]
    admitted_b = b.counters()["admitted"]

    a.hold_slot(seconds=3)
    results = router.send(6)
    assert all(r["ok"] and r["status"] == 200 for r in results), results
    assert [r["node"] for r in results] == ["node-b"] * 6
    # A said 429 + Retry-After once; the router then left it alone instead of asking again.
    assert a.counters()["rejected"]["queue_full"] - rejected_before == 1
    assert b.counters()["admitted"] - admitted_b == 6


def test_a_node_whose_ollama_is_down_is_skipped_and_comes_back_after_recovery(nodes, router):
    a, b = nodes
    assert {r["node"] for r in router.send(2)} == {"node-a"}

    admitted_b = b.counters()["admitted"]
    a.stop_ollama()
    _wait(lambda: a.ready() == 503)
    results = router.send(4)
    assert all(r["ok"] and r["node"] == "node-b" for r in results), results
    assert b.counters()["admitted"] - admitted_b == 4
    # The request that met A's 503 (after A's 1 s reconnect grace) was retried on B.
    assert max(r["seconds"] for r in results) < 10

    a.start_ollama()
    _wait(lambda: a.ready() == 200)
    # A is out for its 503's Retry-After (5 s); then the router sends to it again.
    served = _until_served_by(router, "node-a")
    assert set(served[:-1]) <= {"node-b"}
    assert [r["node"] for r in router.send(3)] == ["node-a"] * 3


def test_with_every_node_saturated_each_request_gets_a_clear_429(nodes, router):
    a, b = nodes
    a.hold_slot(seconds=3)
    b.hold_slot(seconds=3)
    results = router.send(2)
    for result in results:
        assert result["ok"] is False
        assert result["status"] == 429, result
        assert "RateLimit" in result["error"], result
        assert result["seconds"] < 3  # refused at once, not after a wait
