"""Run the real service under the real gunicorn config, as a subprocess, for integration tests.

Like Datasette's ``ds_localhost_http_server``: start, poll until it answers, assert it is still
alive (showing its output if not), and terminate (then kill) at the end.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_ARGS = ("-m", "gunicorn", "-c", "config/gunicorn.conf.py", "management_api.wsgi:app")


# Ports are drawn below Linux's ephemeral range (32768-60999 by default): the kernel hands
# ports from that range to every outgoing connection and to every bind(0), so a number found
# free there can be taken by the next connect() of any process before our service binds it.
FULL_PORT_RANGE = (20000, 32000)


def worker_port_range(
    full: tuple[int, int], worker: str | None, worker_count: int
) -> tuple[int, int]:
    """The part of ``full`` one pytest-xdist worker draws from (``gw0``, ``gw1``, ...), so
    that the workers of one run never hand out the same port; all of it outside xdist."""
    if not worker:
        return full
    index = int(worker.removeprefix("gw"))
    size = (full[1] - full[0]) // worker_count
    return full[0] + index * size, full[0] + (index + 1) * size


PORT_RANGE = worker_port_range(
    FULL_PORT_RANGE,
    os.environ.get("PYTEST_XDIST_WORKER"),
    int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
)
_handed_out: set[int] = set()
_ports_lock = threading.Lock()
_random = random.Random(os.getpid() ^ time.monotonic_ns())
# gunicorn's line when its bind fails (it retries, then exits).
ADDRESS_IN_USE_MARKERS = ("Connection in use", "Address already in use")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port that is free now and was never handed out before in this process.

    Never repeating within a run matters more than it looks: a service given the same number
    for two listeners refuses to start, and a port handed out twice to two services makes one
    of them fail to bind.
    """
    with _ports_lock:
        for _ in range(10_000):
            port = _random.randrange(*PORT_RANGE)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free loopback port left in {PORT_RANGE}")


class ServiceProcess:
    """gunicorn serving management_api on two free loopback ports."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self.proxy_port = free_port()
        self.management_port = free_port()
        self._state_dir = tempfile.mkdtemp(prefix="llm-service-state-")
        # Ports the caller did not choose can be replaced when a bind fails (see start()).
        self._own_ports = not {"LLM_PROXY_PORT", "LLM_MANAGEMENT_PORT"} & set(env or {})
        self.env = {
            **os.environ,
            "LLM_BIND_HOST": "127.0.0.1",
            "LLM_PROXY_PORT": str(self.proxy_port),
            "LLM_MANAGEMENT_PORT": str(self.management_port),
            "OLLAMA_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens unless overridden
            "PYTHONUNBUFFERED": "1",
            # Jobs' SQLite: never the project's own state/ (several services run at once).
            "LLM_STATE_DIR": self._state_dir,
            **(env or {}),
        }
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        # Kept open for the life of the process; closed in stop().
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="llm-service-", suffix=".log", delete=False
        )

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def output(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> ServiceProcess:
        """Start and wait until it answers; once, when another process took one of our ports
        between choosing it and gunicorn binding it, start again on fresh ports."""
        try:
            return self._start_once()
        except RuntimeError as exc:
            if not (self._own_ports and any(m in str(exc) for m in ADDRESS_IN_USE_MARKERS)):
                raise
        self.proxy_port, self.management_port = free_port(), free_port()
        self.env["LLM_PROXY_PORT"] = str(self.proxy_port)
        self.env["LLM_MANAGEMENT_PORT"] = str(self.management_port)
        self._log.seek(0)
        self._log.truncate()
        return self._start_once()

    def _start_once(self) -> ServiceProcess:
        self.process = subprocess.Popen(
            [sys.executable, *GUNICORN_ARGS, *self.extra_args],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                if requests.get(self.management_url + "/health/live", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"gunicorn did not answer within {self.start_timeout} s:\n{self.output()}"
        )

    def assert_alive(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.output()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
        shutil.rmtree(self._state_dir, ignore_errors=True)


def run_gunicorn_expecting_exit(
    env: dict[str, str], extra_args: tuple[str, ...] = (), timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Start gunicorn and expect it to refuse to start; return the finished process."""
    full_env = {
        **os.environ,
        "LLM_BIND_HOST": "127.0.0.1",
        "LLM_PROXY_PORT": str(free_port()),
        "LLM_MANAGEMENT_PORT": str(free_port()),
        **env,
    }
    return subprocess.run(
        [sys.executable, *GUNICORN_ARGS, *extra_args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
