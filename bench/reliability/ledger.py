"""Every request the generator sends, and the one outcome each of them ended with."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

# Outcomes a healthy service may produce under load (and, for chaos, under faults).
COMPLETED = "completed"
REJECTED_429 = "rejected_429"
UNAVAILABLE_503 = "unavailable_503"
ERROR_LINE = "error_line"  # a stream ended by one terminal error in the protocol's form
ERROR_STATUS = "error_status"  # a 5xx other than 503 before anything was streamed
CLIENT_CANCELLED = "client_cancelled"
# Outcomes that are always a defect somewhere.
TRUNCATED = "truncated"  # a stream that stopped without a done marker or an error line
BAD_429 = "bad_429"  # a 429 without a usable Retry-After
CLIENT_TIMEOUT = "client_timeout"  # the service kept the client waiting past its bound
CONNECTION_ERROR = "connection_error"  # the service reset or refused the client connection
OTHER = "other"

HEALTHY_OUTCOMES = frozenset({COMPLETED, REJECTED_429, CLIENT_CANCELLED})
FAULT_OUTCOMES = frozenset({UNAVAILABLE_503, ERROR_LINE, ERROR_STATUS})


@dataclass
class RequestSpec:
    """What to send and how the client behaves: finish, or leave at a chosen stage."""

    request_id: str
    api: str  # "generate" | "chat" | "openai" | "hermes"
    model: str
    stream: bool
    cancel: str | None = None  # None | "before_headers" | "mid_stream"
    cancel_after_s: float = 0.0  # before_headers: how long to wait for headers
    cancel_after_lines: int = 1  # mid_stream: lines read before leaving


@dataclass
class RequestResult:
    spec: RequestSpec
    outcome: str
    started: float  # time.monotonic()
    ended: float
    status: int | None = None
    detail: str = ""
    lines: int = 0
    cancel_stage: str | None = None  # where the client actually left


@dataclass
class Ledger:
    """Thread-safe record of launched requests and their results, one result per request."""

    launched: dict[str, RequestSpec] = field(default_factory=dict)
    results: dict[str, RequestResult] = field(default_factory=dict)
    recorded_twice: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, spec: RequestSpec) -> None:
        with self._lock:
            if spec.request_id in self.launched:
                raise ValueError(f"request id {spec.request_id} launched twice")
            self.launched[spec.request_id] = spec

    def record(self, result: RequestResult) -> None:
        with self._lock:
            if result.spec.request_id in self.results:
                self.recorded_twice.append(result.spec.request_id)
                return
            self.results[result.spec.request_id] = result

    def outcome_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(Counter(r.outcome for r in self.results.values()).items()))

    def unrecorded(self) -> list[str]:
        with self._lock:
            return [rid for rid in self.launched if rid not in self.results]

    def snapshot(self) -> list[RequestResult]:
        with self._lock:
            return list(self.results.values())
