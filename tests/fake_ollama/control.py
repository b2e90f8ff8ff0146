"""Fault injection and observations: what tests set up and what they read back.

All times are ``time.monotonic()`` seconds. On Linux that is the system-wide
CLOCK_MONOTONIC, so a test process on the same machine can compare them with its
own ``time.monotonic()`` readings.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

GENERIC_FAULTS = ("hang", "stall_first_byte", "drop_mid_stream", "error_line", "status")
PULL_FAULTS = ("slow_pull", "fail_pull")
FAULT_KINDS = GENERIC_FAULTS + PULL_FAULTS
FAIL_PULL_MODES = ("drop", "error", "stall")
DEFAULT_FAULT_MESSAGE = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details"
)
DEFAULT_PULL_ERROR = "max retries exceeded: unexpected EOF"
RECORDED_HEADERS = ("host", "origin", "authorization", "x-request-id", "user-agent", "content-type")
MAX_CONNECTIONS = 5000


@dataclass
class Fault:
    id: str
    kind: str
    route: str
    model: str | None  # case-folded full name, or None for any model
    times: int
    params: dict[str, Any]
    used: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "route": self.route,
            "model": self.model,
            "times": self.times,
            "used": self.used,
            **self.params,
        }


def _number(spec: dict[str, Any], key: str, default: float | None = None) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key!r} must be a non-negative number")
    return float(value)


def fault_params(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Validate and complete the kind-specific parameters of a fault."""
    if kind == "stall_first_byte":
        return {"seconds": _number(spec, "seconds")}
    if kind == "drop_mid_stream":
        return {"after_chunks": int(_number(spec, "after_chunks", 2))}
    if kind == "error_line":
        return {
            "after_chunks": int(_number(spec, "after_chunks", 2)),
            "message": str(spec.get("message", DEFAULT_FAULT_MESSAGE)),
        }
    if kind == "status":
        status = int(_number(spec, "status", 500))
        if not 400 <= status <= 599:
            raise ValueError("'status' must be between 400 and 599")
        return {"status": status, "message": str(spec.get("message", DEFAULT_FAULT_MESSAGE))}
    if kind == "slow_pull":
        return {"bytes_per_second": _number(spec, "bytes_per_second")}
    if kind == "fail_pull":
        mode = spec.get("mode", "error")
        if mode not in FAIL_PULL_MODES:
            raise ValueError(f"'mode' must be one of {', '.join(FAIL_PULL_MODES)}")
        return {
            "after_bytes": int(_number(spec, "after_bytes", 0)),
            "mode": mode,
            "message": str(spec.get("message", DEFAULT_PULL_ERROR)),
        }
    return {}


class FaultBook:
    """Armed faults; each matching request consumes one use of each kind."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, kind: str, route: str, model: str | None, times: int, params: dict) -> Fault:
        fault = Fault(f"f{next(self._ids)}", kind, route, model, times, params)
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def take(
        self, routes: tuple[str, ...], model: str | None, kinds: tuple[str, ...]
    ) -> dict[str, Fault]:
        """Consume the first matching fault of every kind in ``kinds``.

        ``routes`` are the names the request answers to: its path and its route pattern.
        """
        taken: dict[str, Fault] = {}
        for fault in list(self._faults):
            if fault.kind in taken or fault.kind not in kinds:
                continue
            if fault.route != "*" and fault.route not in routes:
                continue
            if fault.model is not None and fault.model != model:
                continue
            fault.used += 1
            if fault.times and fault.used >= fault.times:
                self._faults.remove(fault)
            taken[fault.kind] = fault
        return taken

    def describe(self) -> list[dict[str, Any]]:
        return [fault.describe() for fault in self._faults]


class ConnectionRecord:
    """One request as the emulator saw it (bounded history, newest last)."""

    __slots__ = (
        "closed_at",
        "fault",
        "first_byte_at",
        "headers",
        "id",
        "inputs",
        "lines",
        "method",
        "model",
        "nodelay",
        "opened_at",
        "outcome",
        "path",
        "peer",
        "request_id",
        "slot_entered_at",
        "slot_left_at",
        "status",
    )

    def __init__(self, ident: int, method: str, path: str, headers: dict[str, str]) -> None:
        self.id = ident
        self.method = method
        self.path = path
        self.model: str | None = None
        self.headers = headers
        self.request_id = headers.get("x-request-id")
        self.opened_at = time.monotonic()
        self.first_byte_at: float | None = None
        self.closed_at: float | None = None
        # When this request held one of its model's generation slots (None: it never did).
        self.slot_entered_at: float | None = None
        self.slot_left_at: float | None = None
        self.outcome: str | None = None
        self.status: int | None = None
        self.fault: str | None = None
        self.lines = 0
        self.inputs: list[str] | None = None  # what an /api/embed request asked to embed
        self.peer: int | None = None
        self.nodelay: bool | None = None

    def close(self, outcome: str) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self.outcome = outcome

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class Observations:
    requests: Counter = field(default_factory=Counter)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    connections: deque = field(default_factory=lambda: deque(maxlen=MAX_CONNECTIONS))
    loads: int = 0
    unloads: int = 0
    load_aborts: int = 0
    evictions: int = 0
    load_seconds: float = 0.0  # time spent loading, aborted loads included
    rejected: int = 0
    max_pending: int = 0
    pulls: dict[str, Any] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def open(self, method: str, path: str, label: str, headers: dict[str, str]) -> ConnectionRecord:
        self.requests[f"{method} {label}"] += 1
        record = ConnectionRecord(next(self._ids), method, path, headers)
        self.connections.append(record)
        return record

    def enter_slot(self, model: str, record: ConnectionRecord | None = None) -> None:
        if record is not None:
            record.model = record.model or model
            record.slot_entered_at = time.monotonic()
        count = self.in_flight.get(model, 0) + 1
        self.in_flight[model] = count
        if count > self.max_in_flight.get(model, 0):
            self.max_in_flight[model] = count

    def leave_slot(self, model: str, record: ConnectionRecord | None = None) -> None:
        if record is not None:
            record.slot_left_at = time.monotonic()
        self.in_flight[model] = self.in_flight.get(model, 1) - 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "in_flight": dict(self.in_flight),
            "max_in_flight": dict(self.max_in_flight),
            "connections": [record.to_dict() for record in self.connections],
            "loads": self.loads,
            "unloads": self.unloads,
            "load_aborts": self.load_aborts,
            "evictions": self.evictions,
            "load_seconds": self.load_seconds,
            "rejected": self.rejected,
            "max_pending": self.max_pending,
            "pulls": self.pulls,
        }
