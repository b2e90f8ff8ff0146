"""The ``/_fake/*`` control plane (JSON in, JSON out; never counted in observations).

* ``POST /_fake/faults`` ``{"kind", "route"="*", "model"=null, "times"=1, …params}`` -> ``{"id"}``
* ``GET /_fake/faults`` -> armed faults; ``DELETE /_fake/faults`` -> clear them
* ``POST|GET|DELETE /_fake/scripts`` -> scripted answers per model (see scripts.py)
* ``GET /_fake/observations`` -> requests, in-flight, connections, loads, pulls, …
* ``POST /_fake/reset`` -> fresh state: start models, default settings and timings
* ``POST /_fake/models`` ``{"model", "load_seconds"?, "ttft_seconds"?, "tokens_per_second"?,
  "tokens"?}`` -> that model's timing (404 if the model is unknown)
* ``GET|POST /_fake/config`` ``{"num_parallel"?, "max_queue"?, "max_loaded_models"?,
  "memory_bytes"?, "load_seconds_per_gb"?, "loopback_checks"?, "prompt_eval_uncancellable"?,
  "keep_alive"?, "pull_bytes_per_second"?, timing defaults?}`` -> the settings now in force;
  ``num_parallel`` also resizes the slots of loaded runners; ``prompt_eval_uncancellable`` makes
  a generation whose client leaves during prompt evaluation (``ttft_seconds``) keep its slot
  until its first token, as Ollama does. A model's load takes ``load_seconds`` plus its size in
  GB (10^9 bytes) times ``load_seconds_per_gb``; ``memory_bytes`` > 0 is a budget of runner
  bytes (``/api/ps`` sizes) that evicts like ``max_loaded_models`` does

Times in observations are ``time.monotonic()`` seconds (CLOCK_MONOTONIC on Linux, shared by
all processes on the machine, so tests can compare them with their own readings).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .control import FAULT_KINDS, fault_params
from .durations import parse_keep_alive
from .errors import ApiError
from .names import parse_name

if TYPE_CHECKING:
    from .server import Emulator

_TIMING_FIELDS = {
    "load_seconds": float,
    "ttft_seconds": float,
    "tokens_per_second": float,
    "tokens": int,
}


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(obj, default=str).encode(),
        headers={"Content-Type": "application/json"},
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("body must be a JSON object")
    return value


async def handle(emulator: Emulator, request: web.Request) -> web.StreamResponse:
    path, method = request.path, request.method
    try:
        body = await _body(request) if method in ("POST", "PUT", "DELETE") else {}
        if path == "/_fake/faults":
            if method == "POST":
                return _add_fault(emulator, body)
            if method == "DELETE":
                emulator.state.faults.clear()
                return _json({"cleared": True})
            if method == "GET":
                return _json({"faults": emulator.state.faults.describe()})
        elif path == "/_fake/scripts":
            if method == "POST":
                return _json({"id": emulator.state.scripts.add(body).id})
            if method == "DELETE":
                emulator.state.scripts.clear()
                return _json({"cleared": True})
            if method == "GET":
                return _json({"scripts": emulator.state.scripts.describe()})
        elif path == "/_fake/observations" and method == "GET":
            return _json(emulator.state.snapshot())
        elif path == "/_fake/reset" and method == "POST":
            emulator.reset()
            return _json({"reset": True})
        elif path == "/_fake/models" and method == "POST":
            return _set_model(emulator, body)
        elif path == "/_fake/config" and method in ("GET", "POST"):
            if method == "POST":
                _configure(emulator, body)
            return _json(_settings_view(emulator))
        else:
            return _error(404, f"unknown control route {method} {path}")
        return _error(405, f"method {method} not allowed on {path}")
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))


def _add_fault(emulator: Emulator, body: dict[str, Any]) -> web.Response:
    kind = body.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(FAULT_KINDS)}")
    route = body.get("route", "*") or "*"
    model = body.get("model")
    model_key = parse_name(str(model).strip()).key if model else None
    times = body.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or times < 0:
        raise ValueError("'times' must be a non-negative integer (0 = until cleared)")
    params = fault_params(kind, body)
    fault = emulator.state.faults.add(kind, str(route), model_key, times, params)
    return _json({"id": fault.id})


def _set_model(emulator: Emulator, body: dict[str, Any]) -> web.Response:
    name = parse_name(str(body.get("model", "")).strip())
    state = emulator.state
    entry = state.catalog.get(name) or state.catalog.lookup_registry(name)
    if entry is None:
        return _error(404, f"model '{name.display}' not found")
    changes = {}
    for key, kind in _TIMING_FIELDS.items():
        if key in body:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key!r} must be a non-negative number")
            changes[key] = kind(value)
    timing = state.set_timing(entry, changes)
    return _json({"model": entry.name.display, **dataclasses.asdict(timing)})


def _configure(emulator: Emulator, body: dict[str, Any]) -> None:
    settings = emulator.state.settings
    for key in ("num_parallel", "max_queue", "max_loaded_models", "memory_bytes"):
        if key in body:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key!r} must be a non-negative integer")
            setattr(settings, key, value)
    if "loopback_checks" in body:
        settings.loopback_checks = bool(body["loopback_checks"])
    if "prompt_eval_uncancellable" in body:
        settings.prompt_eval_uncancellable = bool(body["prompt_eval_uncancellable"])
    if "keep_alive" in body:
        settings.keep_alive = parse_keep_alive(body["keep_alive"])
    if "load_seconds_per_gb" in body:
        value = body["load_seconds_per_gb"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError("'load_seconds_per_gb' must be a non-negative number")
        settings.load_seconds_per_gb = float(value)
    if "pull_bytes_per_second" in body:
        settings.pull_bytes_per_second = float(body["pull_bytes_per_second"])
    for key, kind in _TIMING_FIELDS.items():
        if key in body:
            settings.timing = dataclasses.replace(settings.timing, **{key: kind(body[key])})
    if "num_parallel" in body:
        settings.num_parallel = max(1, settings.num_parallel)
        emulator.state.scheduler.resize_slots(settings.num_parallel)


def _settings_view(emulator: Emulator) -> dict[str, Any]:
    settings = emulator.state.settings
    return {
        "num_parallel": settings.num_parallel,
        "max_queue": settings.max_queue,
        "max_loaded_models": settings.max_loaded_models,
        "memory_bytes": settings.memory_bytes,
        "load_seconds_per_gb": settings.load_seconds_per_gb,
        "loopback_checks": settings.loopback_checks,
        "prompt_eval_uncancellable": settings.prompt_eval_uncancellable,
        "keep_alive": -1 if math.isinf(settings.keep_alive) else settings.keep_alive,
        "pull_bytes_per_second": settings.pull_bytes_per_second,
        "context_length": settings.context_length,
        **dataclasses.asdict(settings.timing),
    }
