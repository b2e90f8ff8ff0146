"""The early-headers body on its own: cadence of the spaces, errors, and closing."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future

from management_api import errors
from management_api.proxy.early_headers import EarlyBody
from management_api.proxy.gateway import ForwardedResponse


class Body(list):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def later(future: Future, seconds: float, value=None, exc: BaseException | None = None) -> None:
    def run() -> None:
        time.sleep(seconds)
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)

    threading.Thread(target=run, daemon=True).start()


def test_one_space_per_keepalive_interval_then_the_body():
    future: Future = Future()
    inner = Body([b'{"done":', b"true}"])
    later(future, 0.55, ForwardedResponse(200, [], inner))
    stamps, chunks = [], []
    started = time.monotonic()
    body = EarlyBody(future, "rid", keepalive=0.2)
    for chunk in body:
        stamps.append(time.monotonic() - started)
        chunks.append(chunk)
    body.close()
    spaces = [c for c in chunks if c == b" "]
    assert len(spaces) == 3  # at once, then after 0.2 s and 0.4 s
    assert stamps[0] < 0.1 and 0.15 < stamps[1] < 0.35
    assert json.loads(b"".join(chunks)) == {"done": True}
    assert inner.closed == 1


def test_an_upstream_error_status_becomes_error_and_details_only():
    future: Future = Future()
    future.set_result(ForwardedResponse(500, [], Body([b'{"error":"model runner crashed"}'])))
    out = b"".join(EarlyBody(future, "rid", keepalive=1))
    # n8n routes an item to the error output only when its keys are among error/message/details
    assert json.loads(out) == {
        "error": "model runner crashed",
        "details": {"type": "upstream_error", "status": 500},
    }


def test_our_own_error_keeps_its_type_status_and_fields_in_details():
    future: Future = Future()
    later(future, 0.05, exc=errors.UpstreamTimeout("Ollama sent no response within 600 s"))
    out = json.loads(b"".join(EarlyBody(future, "rid", keepalive=1)))
    assert set(out) == {"error", "details"}
    assert out["error"] == "Ollama sent no response within 600 s"
    assert out["details"] == {"type": errors.UpstreamTimeout.type, "status": 504}


def test_a_late_429_names_its_wait_in_details():
    future: Future = Future()
    exc = errors.ConcurrencyLimit("queue full", headers={"Retry-After": "7"}, reason="queue_full")
    later(future, 0.05, exc=exc)
    out = json.loads(b"".join(EarlyBody(future, "rid", keepalive=1)))
    assert set(out) == {"error", "details"}
    assert out["details"] == {
        "type": "concurrency_limit",
        "status": 429,
        "reason": "queue_full",
        "retry_after_seconds": 7,
    }


def test_an_unexpected_failure_is_a_500_in_details_with_the_request_id():
    future: Future = Future()
    later(future, 0.05, exc=RuntimeError("boom"))
    out = json.loads(b"".join(EarlyBody(future, "rid-9", keepalive=1)))
    assert set(out) == {"error", "details"} and "boom" not in out["error"]
    assert out["details"] == {"type": "internal_error", "status": 500, "request_id": "rid-9"}


def test_closing_before_the_answer_still_releases_what_comes_later():
    future: Future = Future()
    body = EarlyBody(future, "rid", keepalive=1)
    iterator = iter(body)
    assert next(iterator) == b" "
    body.close()  # the client went away while we waited
    inner = Body([b"{}"])
    future.set_result(ForwardedResponse(200, [], inner))
    assert inner.closed == 1
