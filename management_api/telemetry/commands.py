"""Bounded runs of external tools (nvidia-smi, tegrastats, dpkg-query).

Each child runs in its own session so a timeout kills the whole process group: killing only a
wrapper shell would leave its children holding our pipes open, and we would wait on them.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence

from management_api.telemetry.source import TelemetryError

# The C locale keeps decimal points as dots in the tools' numbers.
_ENV = {**os.environ, "LC_ALL": "C"}


class CommandError(TelemetryError):
    """The tool is missing, failed, or did not answer in time."""


def run_command(args: Sequence[str], timeout: float) -> str:
    """Run `args` and return its stdout; raise CommandError on a non-zero exit or timeout."""
    proc = _spawn(args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CommandError(f"{args[0]} timed out after {timeout:g} s") from None
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        detail = (err.decode("utf-8", "replace") or text).strip().splitlines()[:1]
        raise CommandError(f"{args[0]} exited {proc.returncode}: {' '.join(detail)}")
    return text


def read_first_line(args: Sequence[str], timeout: float) -> str:
    """Start a tool that prints forever (tegrastats), return its first line, then stop it."""
    proc = _spawn(args)
    deadline = time.monotonic() + timeout
    buffer = b""
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandError(f"{args[0]} printed no line within {timeout:g} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise CommandError(f"{args[0]} exited without printing a line")
                buffer += chunk
    finally:
        _kill_group(proc)
    return buffer.split(b"\n", 1)[0].decode("utf-8", "replace")


def _spawn(args: Sequence[str]) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_ENV,
            start_new_session=True,
            text=False,
        )
    except OSError as exc:
        raise CommandError(f"{args[0]} cannot run: {exc.strerror or exc}") from None


def _kill_group(proc: subprocess.Popen) -> None:
    # Even when the leader has exited, its children may still hold the pipes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # The group is dead, so the pipes reach EOF and this cannot hang.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)
