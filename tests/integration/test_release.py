"""A slot is given back when Ollama has let go of the request, not when we have.

Ollama keeps evaluating a prompt whose client left until the first token (ollama/ollama#11889);
the emulator does the same with ``prompt_eval_uncancellable``. Before this was handled, the
proxy freed the slot when it closed its own side, so the next queued request reached Ollama
while the abandoned one was still running there: one more than the limit (the `make chaos`
failure, where the emulator's own wind-down after a close was the short window).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_proxy import RawClient, post_async, upstream_connection

MODEL = "qwen3:14b-q8"
PROMPT_EVAL_S = 1.2


def _limits(limit: int, release_timeout: float = 30) -> str:
    return f"""
[defaults]
max_concurrency = 1
max_queue = 8
max_wait_seconds = 30
first_byte_timeout_seconds = 10
idle_timeout_seconds = 5
release_timeout_seconds = {release_timeout}

[[models]]
match = "{MODEL}"
max_concurrency = {limit}
"""


def _access_lines(service, request_id: str) -> list[dict]:
    found = []
    for line in service.process.output().splitlines():
        if "llm_service.access: " in line and f'"request_id":"{request_id}"' in line:
            found.append(json.loads(line.split("llm_service.access: ", 1)[1]))
    return found


@pytest.fixture
def evaluating(service, emulator):
    """Prompt evaluation takes PROMPT_EVAL_S and is not interrupted by a client leaving."""
    emulator.configure(prompt_eval_uncancellable=True)
    emulator.set_model(MODEL, ttft_seconds=PROMPT_EVAL_S, tokens=4, tokens_per_second=100)
    yield service
    emulator.configure(prompt_eval_uncancellable=False)


@pytest.mark.parametrize("limit", [1, 2])
def test_a_client_leaving_during_prompt_evaluation_keeps_its_slot(evaluating, emulator, limit):
    service = evaluating
    service.set_limits(_limits(limit))
    leavers = [
        RawClient(service.proxy, "/api/generate", {"model": MODEL, "prompt": "p"}, f"leave-{i}")
        for i in range(limit)
    ]
    service.wait_for(
        lambda: all(
            (c := upstream_connection(emulator, f"leave-{i}")) and c["slot_entered_at"]
            for i in range(limit)
        )
    )
    waiter, result = post_async(
        service.proxy + "/api/generate",
        {"model": MODEL, "prompt": "next", "stream": False},
        request_id="next-in-line",
    )
    service.wait_for(lambda: service.model_counters(MODEL)["queued"] == 1)
    dropped_at = min(client.close() for client in leavers)

    waiter.join(15)
    assert result.get("status") == 200, result
    observed = emulator.observations()
    assert observed["max_in_flight"][MODEL] <= limit, observed["max_in_flight"]
    left = [upstream_connection(emulator, f"leave-{i}") for i in range(limit)]
    nxt = upstream_connection(emulator, "next-in-line")
    assert nxt is not None
    # It reached Ollama only once an abandoned request had stopped there, which Ollama did at
    # its first token, not when the client left.
    first_free = min(c["slot_left_at"] for c in left)
    assert first_free - dropped_at > PROMPT_EVAL_S / 3, (first_free, dropped_at)
    assert nxt["opened_at"] >= first_free, (nxt, left)
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0)
    # The access log says how long Ollama took to let go.
    released = [_access_lines(service, f"leave-{i}")[0]["released_after_ms"] for i in range(limit)]
    assert all(ms > PROMPT_EVAL_S * 1000 / 3 for ms in released), released


def test_release_timeout_bounds_the_wait(evaluating, emulator):
    service = evaluating
    service.set_limits(_limits(1, release_timeout=0.3))
    emulator.set_model(MODEL, ttft_seconds=6, tokens=4, tokens_per_second=100)
    client = RawClient(service.proxy, "/api/generate", {"model": MODEL, "prompt": "p"}, "stuck")
    service.wait_for(
        lambda: (c := upstream_connection(emulator, "stuck")) is not None and c["slot_entered_at"]
    )
    closed_at = client.close()
    service.wait_for(lambda: service.model_counters(MODEL)["in_flight"] == 0, timeout=5)
    freed_after = time.monotonic() - closed_at
    assert freed_after < 5
    line = _access_lines(service, "stuck")[0]
    assert line["status"] == 499 and line["outcome"] == "client_gone_before_first_byte"
    assert 250 <= line["released_after_ms"] < 5000, line
    assert "request stuck: Ollama had not closed the connection" in service.process.output()
    emulator.set_model(MODEL, ttft_seconds=0.01)


def test_a_complete_answer_frees_its_slot_at_once(evaluating, emulator):
    """The wait is for early exits only: an answer read to its end has nothing to wait for."""
    service = evaluating
    service.set_limits(_limits(1))
    emulator.set_model(MODEL, ttft_seconds=0.01, tokens=4, tokens_per_second=200)
    thread, result = post_async(
        service.proxy + "/api/generate",
        {"model": MODEL, "prompt": "p", "stream": False},
        request_id="whole",
    )
    thread.join(10)
    assert result.get("status") == 200
    # The access line is written when the WSGI response closes, a moment after the client has
    # read the last byte; "at once" is the absence of a release wait, checked on the line.
    service.wait_for(lambda: _access_lines(service, "whole"), timeout=2)
    line = _access_lines(service, "whole")[0]
    assert line["outcome"] == "completed" and "released_after_ms" not in line
    assert service.model_counters(MODEL)["in_flight"] == 0
