"""Recent errors in Ollama's log, for the health check (reference jetson-telemetry.md §9, §10.6).

Ollama logs with Go's slog text handler (``time=2025-02-27T21:01:41.135Z level=ERROR …``), gin
request lines (``[GIN] 2025/12/01 - 20:28:50 | 500 | …``) and the runner's own stderr, which has
no timestamp (``ggml_cuda_init: failed to initialize CUDA: …``, ``CUDA error``). An untimed line
takes the time of the nearest timestamped line before it (or, at the top of the tail, after it).

Only real GPU/runner failures count. Harmless Jetson noise (``NvTegraPrivGetProductionMode``…)
and ordinary request errors do not: a health check that fails on noise gets the container
restarted for nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

TAIL_BYTES = 512 * 1024
MAX_REPORTED = 5

_SLOG_TIME = re.compile(r"^time=(\S+)")
_SLOG_LEVEL = re.compile(r"\blevel=(\w+)")
_GIN_TIME = re.compile(r"^\[GIN\] (\d{4}/\d{2}/\d{2} - \d{2}:\d{2}:\d{2})")

# Failures that mean the GPU or the runner is in trouble (case-insensitive substrings).
ERROR_PATTERNS = (
    "cuda error",
    "failed to initialize cuda",
    "out of memory",
    "cudamalloc failed",
    "unable to allocate cuda",
    "llama-server terminated",
    "llama runner terminated",
    "error loading llama server",
    "llama-server completion error",
    "model runner has unexpectedly stopped",
    "couldn't open model file",
    "gpu has fallen off the bus",
    "nvrm: xid",
    "segmentation fault",
    "sigsegv",
)
NOISE_PATTERNS = (
    "nvtegraprivgetproductionmode",
    "expected on kernels without fuse support",
)


@dataclass(frozen=True)
class LogError:
    at: float  # epoch seconds
    line: str


def _parse_time(line: str) -> float | None:
    match = _SLOG_TIME.match(line)
    if match:
        text = match.group(1).replace("Z", "+00:00")
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    match = _GIN_TIME.match(line)
    if match:
        try:
            # gin prints local time without an offset; containers run in UTC.
            stamp = datetime.strptime(match.group(1), "%Y/%m/%d - %H:%M:%S")
        except ValueError:
            return None
        return stamp.replace(tzinfo=timezone.utc).timestamp()
    return None


def is_error_line(line: str) -> bool:
    lowered = line.lower()
    if any(noise in lowered for noise in NOISE_PATTERNS):
        return False
    if any(pattern in lowered for pattern in ERROR_PATTERNS):
        return True
    level = _SLOG_LEVEL.search(line)
    if level and level.group(1).upper() == "ERROR":
        # slog ERROR lines that are about a client's request are not the server's health.
        return "request" not in lowered or "runner" in lowered
    return False


def _read_tail(path: Path) -> list[str]:
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - TAIL_BYTES))
        data = fh.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > TAIL_BYTES and lines:
        lines = lines[1:]  # the first line is probably cut
    return lines


def recent_errors(path: Path, *, window_seconds: float, now: float) -> list[LogError]:
    """Error lines of the last `window_seconds`, newest last (at most MAX_REPORTED).

    Raises OSError when the log cannot be read.
    """
    lines = _read_tail(path)
    stamped: list[tuple[float | None, str]] = []
    current: float | None = None
    for line in lines:
        stamp = _parse_time(line)
        if stamp is not None:
            current = stamp
        stamped.append((current, line))
    # Lines before the first timestamp take the first timestamp after them, or the file's mtime.
    first_known = next((t for t, _ in stamped if t is not None), None)
    fallback = first_known if first_known is not None else path.stat().st_mtime
    cutoff = now - window_seconds
    found = [
        LogError(at=(t if t is not None else fallback), line=line.strip()[:300])
        for t, line in stamped
        if is_error_line(line) and (t if t is not None else fallback) >= cutoff
    ]
    return found[-MAX_REPORTED:]
