"""The checkers themselves: a defect must show as a failure, not pass unnoticed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.reliability import ledger as lg
from bench.reliability.client import execute
from bench.reliability.ledger import Ledger, RequestResult, RequestSpec
from bench.reliability.memory import analyse
from bench.reliability.observe import ProcessSample


class _Misbehaving(BaseHTTPRequestHandler):
    """Answers by path: the ways a broken proxy could answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/api/generate":  # a stream that stops without done or error
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b'{"response":"a","done":false}\n')
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/api/chat":  # a 429 without Retry-After
            body = b'{"error":"busy"}'
            self.send_response(429)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:  # /v1/chat/completions: never answers within the client's bound
            threading.Event().wait(3)


@pytest.fixture
def broken_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _spec(api: str, stream: bool, **kw: object) -> RequestSpec:
    return RequestSpec(f"t-{api}", api, "llama3.2:1b", stream, **kw)  # type: ignore[arg-type]


def test_client_flags_what_a_broken_service_does(broken_server):
    assert execute(_spec("generate", True), "127.0.0.1", broken_server, 5).outcome == lg.TRUNCATED
    assert execute(_spec("chat", False), "127.0.0.1", broken_server, 5).outcome == lg.BAD_429
    hung = execute(_spec("openai", False), "127.0.0.1", broken_server, 0.5)
    assert hung.outcome == lg.CLIENT_TIMEOUT
    assert hung.ended - hung.started < 2.5  # the client's own bound held


def test_client_leaves_before_headers_at_its_chosen_time(broken_server):
    spec = _spec("openai", False, cancel="before_headers", cancel_after_s=0.2)
    result = execute(spec, "127.0.0.1", broken_server, 5)
    assert (result.outcome, result.cancel_stage) == (lg.CLIENT_CANCELLED, "before_headers")


def test_ledger_counts_a_second_result_as_unaccounted():
    ledger = Ledger()
    spec = _spec("chat", False)
    ledger.launch(spec)
    ledger.launch(_spec("hermes", False))
    ledger.record(RequestResult(spec, lg.COMPLETED, 0.0, 1.0))
    ledger.record(RequestResult(spec, lg.REJECTED_429, 0.0, 1.0))
    assert ledger.recorded_twice == ["t-chat"]
    assert ledger.unrecorded() == ["t-hermes"]
    assert ledger.outcome_counts() == {lg.COMPLETED: 1}


def _samples(rss: list[float], fds: list[int] | None = None) -> list[ProcessSample]:
    fds = fds or [30] * len(rss)
    return [
        ProcessSample(float(i * 10), r, f, 20)
        for i, (r, f) in enumerate(zip(rss, fds, strict=True))
    ]


def test_memory_check_fails_on_growth_after_warmup_only():
    # A big rise during warm-up is fine; a flat line after it passes.
    flat = analyse(_samples([20, 60, 61, 60, 61, 60, 61, 60]), t0=0, warmup_s=10)
    assert flat["failures"] == []
    assert abs(flat["rss_growth_mb"]) < 1

    leaking = analyse(_samples([60 + 3 * i for i in range(10)]), t0=0, warmup_s=10)
    assert any("RSS grew" in f for f in leaking["failures"])
    assert leaking["rss_slope_mb_per_hour"] == pytest.approx(3 / 10 * 3600)

    fd_leak = analyse(_samples([60] * 10, fds=[30 + 10 * i for i in range(10)]), 0, 10)
    assert any("fds kept growing" in f for f in fd_leak["failures"])
