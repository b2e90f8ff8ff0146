"""scripts/supervisor_events.py speaking supervisord's event-listener protocol over real pipes.

(Stopping supervisord on FATAL is exercised for real in test_lifecycle.py; a listener run
from here would signal pytest, its parent.)
"""

from __future__ import annotations

import subprocess
import sys

from tests.service_harness import ROOT

LISTENER = ROOT / "scripts" / "supervisor_events.py"


def event(serial: int, eventname: str, payload: bytes) -> bytes:
    header = (
        f"ver:3.0 server:supervisor serial:{serial} pool:listener poolserial:{serial} "
        f"eventname:{eventname} len:{len(payload)}\n"
    )
    return header.encode() + payload


def log_event(serial: int, data: bytes) -> bytes:
    body = b"processname:ollama groupname:ollama pid:42 channel:stdout\n" + data
    return event(serial, "PROCESS_LOG_STDOUT", body)


def run_listener(mode: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(LISTENER), mode], input=stdin, capture_output=True, timeout=30
    )


def test_forward_logs_prefixes_each_line_even_across_events():
    events = (
        log_event(1, b"time=1 level=INFO msg=one\ntime=2 level=INFO msg=tw")
        + log_event(2, b"o\n")
        + log_event(3, b"ggml_cuda_init: failed\r\nlast")
    )
    result = run_listener("forward-logs", events)
    assert result.returncode == 0, result.stderr
    # Every event is acknowledged, and only protocol messages appear on stdout.
    assert result.stdout == b"READY\n" + b"RESULT 2\nOKREADY\n" * 3
    assert result.stderr == (
        b"ollama | time=1 level=INFO msg=one\n"
        b"ollama | time=2 level=INFO msg=two\n"
        b"ollama | ggml_cuda_init: failed\r\n"
        b"ollama | last"
    )


def test_exit_on_fatal_ignores_other_events():
    body = b"processname:api groupname:api from_state:STARTING pid:7"
    result = run_listener("exit-on-fatal", event(1, "PROCESS_STATE_RUNNING", body))
    assert result.returncode == 0
    assert result.stdout == b"READY\nRESULT 2\nOKREADY\n"
    assert result.stderr == b""


def test_unknown_mode_is_refused():
    result = run_listener("nonsense", b"")
    assert result.returncode == 2
    assert b"usage" in result.stderr
