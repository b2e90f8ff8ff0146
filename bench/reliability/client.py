"""One request over a raw HTTP/1.1 connection, ending in exactly one classified outcome.

http.client rather than a higher-level client, because leaving at a chosen stage needs control of
the socket: a short timeout while waiting for headers (leave while queued or before the first
byte), or closing after N streamed lines (leave mid-stream).
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from bench.reliability import ledger as lg
from bench.reliability.ledger import RequestResult, RequestSpec

PROMPTS = ("why is the sky blue", "write a haiku about rivers", "count to ten", "hello")
MAX_ERROR_BODY = 64 * 1024


def request_for(spec: RequestSpec) -> tuple[str, dict[str, Any]]:
    """Path and JSON body of a request in the spec's API dialect."""
    prompt = PROMPTS[hash(spec.request_id) % len(PROMPTS)]
    messages = [{"role": "user", "content": prompt}]
    if spec.api == "generate":
        return "/api/generate", {"model": spec.model, "prompt": prompt, "stream": spec.stream}
    if spec.api == "chat":
        return "/api/chat", {"model": spec.model, "messages": messages, "stream": spec.stream}
    if spec.api == "openai":
        body = {"model": spec.model, "messages": messages, "stream": spec.stream}
        return "/v1/chat/completions", body
    if spec.api == "hermes":
        path = f"/v1/llm/{spec.model}" + ("/stream" if spec.stream else "")
        return path, {"prompt": prompt}
    raise ValueError(f"unknown api {spec.api!r}")


def _terminal(api: str, line: bytes) -> tuple[str | None, bool]:
    """(outcome, is_data) for one streamed line: an outcome when the line ends the stream."""
    text = line.strip()
    if not text:
        return None, False
    if api in ("openai", "hermes"):
        if text.startswith(b":"):  # SSE comment: heartbeat while the model loads
            return None, False
        if not text.startswith(b"data:"):
            return None, False
        text = text[5:].strip()
        if api == "openai" and text == b"[DONE]":
            return lg.COMPLETED, True
    try:
        item = json.loads(text)
    except ValueError:
        return lg.TRUNCATED, True
    if not isinstance(item, dict):
        return None, True
    if "error" in item:
        return lg.ERROR_LINE, True
    if api != "openai" and item.get("done") is True:
        return lg.COMPLETED, True
    return None, True


def _complete_body(api: str, raw: bytes) -> str:
    try:
        item = json.loads(raw)
    except ValueError:
        return lg.TRUNCATED
    if not isinstance(item, dict):
        return lg.OTHER
    if "error" in item:
        return lg.ERROR_LINE
    done = {
        "generate": item.get("done") is True,
        "chat": item.get("done") is True,
        "openai": bool(item.get("choices")),
        "hermes": "result" in item,
    }[api]
    return lg.COMPLETED if done else lg.OTHER


def _status_outcome(response: http.client.HTTPResponse) -> tuple[str, str]:
    status = response.status
    if status == 429:
        retry_after = response.getheader("Retry-After", "")
        if retry_after.isdigit() and 1 <= int(retry_after) <= 60:
            return lg.REJECTED_429, ""
        return lg.BAD_429, f"Retry-After={retry_after!r}"
    if status == 503:
        return lg.UNAVAILABLE_503, ""
    if status >= 500:
        return lg.ERROR_STATUS, f"status {status}"
    return lg.OTHER, f"status {status}"


def execute(spec: RequestSpec, host: str, port: int, deadline_s: float) -> RequestResult:
    """Send `spec` and classify how it ended; never raises, never waits past `deadline_s`."""
    started = time.monotonic()
    deadline = started + deadline_s
    path, body = request_for(spec)
    headers = {"Content-Type": "application/json", "X-Request-ID": spec.request_id}
    conn = http.client.HTTPConnection(host, port, timeout=min(5.0, deadline_s))

    def done(outcome: str, **extra: Any) -> RequestResult:
        return RequestResult(spec, outcome, started, time.monotonic(), **extra)

    got_headers = False
    response: http.client.HTTPResponse | None = None
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        # Kept: http.client lets go of conn.sock once a response says "Connection: close".
        sock = conn.sock
        assert sock is not None
        if spec.cancel == "before_headers":
            sock.settimeout(spec.cancel_after_s)
            try:
                response = conn.getresponse()
            except TimeoutError:
                return done(lg.CLIENT_CANCELLED, cancel_stage="before_headers")
        else:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            response = conn.getresponse()
        got_headers = True
        # One bound for the rest: every blocking read ends by the request's deadline.
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        status = response.status
        if status != 200:
            response.read(MAX_ERROR_BODY)
            outcome, detail = _status_outcome(response)
            return done(outcome, status=status, detail=detail)
        if not spec.stream:
            return done(_complete_body(spec.api, response.read()), status=status)
        lines = 0
        while True:
            if time.monotonic() > deadline:
                return done(lg.CLIENT_TIMEOUT, status=status, lines=lines)
            line = response.readline()
            if not line:
                return done(lg.TRUNCATED, status=status, lines=lines, detail="EOF")
            outcome, is_data = _terminal(spec.api, line)
            lines += int(is_data)
            if outcome is not None:
                return done(outcome, status=status, lines=lines)
            if spec.cancel == "mid_stream" and lines >= spec.cancel_after_lines:
                return done(
                    lg.CLIENT_CANCELLED, status=status, lines=lines, cancel_stage="mid_stream"
                )
    except TimeoutError:
        return done(lg.CLIENT_TIMEOUT, detail="socket timeout")
    except (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError) as exc:
        outcome = lg.TRUNCATED if got_headers else lg.CONNECTION_ERROR
        return done(outcome, detail=type(exc).__name__)
    except Exception as exc:  # any other failure is still one outcome, never a lost request
        return done(lg.OTHER, detail=f"{type(exc).__name__}: {exc}")
    finally:
        if response is not None:
            response.close()
        conn.close()
