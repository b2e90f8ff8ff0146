"""supervisord event listeners for llm-service (see supervisord.conf).

    supervisor_events.py exit-on-fatal   stop supervisord when a program goes FATAL
    supervisor_events.py forward-logs    copy PROCESS_LOG output to stderr, line-prefixed

The protocol (supervisor docs, "Event Listeners"): write ``READY``, read one header line of
``key:value`` tokens, read ``len`` bytes of payload, answer ``RESULT 2\\nOK``, repeat. Stdout
carries only that protocol, so everything meant for people goes to stderr.

Standard library only: supervisord runs this with the service's Python, and it must work even
when the application itself is broken.

A stop caused by a FATAL program leaves a marker file (``fatal_marker()``) in the run
directory; scripts/run_supervisord.py turns it into a non-zero exit status of the container.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from typing import BinaryIO

Handler = Callable[[dict[str, str], bytes], None]

FATAL_MARKER_NAME = "fatal-program"


def fatal_marker() -> str:
    """The file naming the program whose FATAL state stopped supervisord (in LLM_RUN_DIR)."""
    return os.path.join(os.environ.get("LLM_RUN_DIR", "/run/llm-service"), FATAL_MARKER_NAME)


# Lines split on "\n" only (bytes.splitlines would also split on "\r" progress output).
_LINES = re.compile(rb"[^\n]*\n|[^\n]+")


def parse_tokens(line: str) -> dict[str, str]:
    """``"a:1 b:2"`` -> ``{"a": "1", "b": "2"}`` (values never contain spaces here)."""
    tokens = {}
    for token in line.split():
        key, _, value = token.partition(":")
        tokens[key] = value
    return tokens


def serve(handler: Handler, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer events until supervisord closes our stdin."""
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        header_line = stdin.readline()
        if not header_line:
            return
        headers = parse_tokens(header_line.decode("utf-8", "replace"))
        payload = stdin.read(int(headers.get("len", "0")))
        try:
            handler(headers, payload)
        finally:
            # Acknowledge even when the handler failed: an unacknowledged event blocks the pool.
            stdout.write(b"RESULT 2\nOK")
            stdout.flush()


def split_payload(payload: bytes) -> tuple[dict[str, str], bytes]:
    """A state/log payload: one line of tokens, then (for PROCESS_LOG) the raw output."""
    first, _, data = payload.partition(b"\n")
    return parse_tokens(first.decode("utf-8", "replace")), data


class ExitOnFatal:
    """SIGTERM to supervisord (our parent) when any program reaches FATAL."""

    def __init__(self, err: BinaryIO) -> None:
        self.err = err
        # Remembered now: if supervisord died and we were re-parented (to init, say), the
        # parent at signal time is not ours to stop.
        self.supervisord_pid = os.getppid()

    def __call__(self, headers: dict[str, str], payload: bytes) -> None:
        if headers.get("eventname") != "PROCESS_STATE_FATAL":
            return
        body, _ = split_payload(payload)
        name = body.get("processname", "?")
        if os.getppid() != self.supervisord_pid:
            self._say(f"program {name} is FATAL, but supervisord is gone; nothing to stop")
            return
        self._say(
            f"program {name} is FATAL (it kept failing to start); stopping supervisord "
            f"(pid {self.supervisord_pid}) so the container exits non-zero and its restart "
            "policy acts"
        )
        try:
            with open(fatal_marker(), "w", encoding="utf-8") as marker:
                marker.write(f"{name}\n")
        except OSError as exc:
            # Still stop: a container that exits 0 is better than one that never exits.
            self._say(f"cannot write {fatal_marker()} ({exc}); the exit status will be 0")
        os.kill(self.supervisord_pid, signal.SIGTERM)

    def _say(self, text: str) -> None:
        self.err.write(f"llm-service exit-on-fatal: {text}\n".encode())
        self.err.flush()


class ForwardLogs:
    """Writes each program's output to `out`, every line prefixed with ``<program> | ``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        # Output arrives in arbitrary chunks; a line may span two events.
        self._mid_line: dict[tuple[str, str], bool] = {}

    def __call__(self, headers: dict[str, str], payload: bytes) -> None:
        if not headers.get("eventname", "").startswith("PROCESS_LOG"):
            return
        body, data = split_payload(payload)
        if not data:
            return
        key = (body.get("processname", "?"), body.get("channel", "stdout"))
        prefix = f"{key[0]} | ".encode()
        pieces = []
        mid_line = self._mid_line.get(key, False)
        for line in _LINES.findall(data):
            pieces.append(line if mid_line else prefix + line)
            mid_line = not line.endswith(b"\n")
        self._mid_line[key] = mid_line
        self.out.write(b"".join(pieces))
        self.out.flush()


def main(argv: list[str]) -> int:
    handlers = {"exit-on-fatal": ExitOnFatal, "forward-logs": ForwardLogs}
    if len(argv) != 1 or argv[0] not in handlers:
        print(f"usage: supervisor_events.py {{{'|'.join(handlers)}}}", file=sys.stderr)
        return 2
    # supervisord stops listeners with SIGTERM; that is a normal end, not a crash to report.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    handler = handlers[argv[0]](sys.stderr.buffer)
    serve(handler, sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
