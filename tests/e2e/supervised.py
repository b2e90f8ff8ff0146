"""The real process tree: entrypoint.sh -> supervisord (supervisord.conf) -> Ollama + API.

`ollama serve` is the emulator, through scripts/ollama-shim placed first on PATH, exactly as
`make run` does on a machine without Ollama. Each `SupervisedService` gets its own free ports,
its own state directory (logs, pid file, control socket) and its own session: everything it
starts can be found (and, at the end, cleaned up) by session id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests
from supervisor.xmlrpc import SupervisorTransport

from tests.service_harness import ROOT, free_port

SHIM_DIR = ROOT / "scripts" / "ollama-shim"
ENTRYPOINT = ROOT / "entrypoint.sh"
DEFAULT_MODEL = "llama3.2:1b"  # installed in the emulator's default model set


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def session_processes(session_id: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a session."""
    found = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) != session_id:
                continue
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


class SupervisedService:
    """entrypoint.sh run as a subprocess in a new session, on loopback and free ports."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        # A short /tmp path: a unix socket path may not exceed 107 bytes.
        self.state_dir = Path(tempfile.mkdtemp(prefix="llm-e2e-"))
        self.proxy_port = free_port()
        self.management_port = free_port()
        self.ollama_port = free_port()
        self.socket = self.state_dir / "supervisor.sock"
        self.log_dir = self.state_dir / "logs"
        self.output_path = self.state_dir / "output.log"
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LLM_", "OLLAMA_", "FAKE_OLLAMA_", "GUNICORN_"))
        }
        self.env = {
            **inherited,
            "PATH": f"{SHIM_DIR}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
            "LLM_PYTHON": sys.executable,
            "LLM_RUN_DIR": str(self.state_dir),
            "LLM_LOG_DIR": str(self.log_dir),
            "LLM_SUPERVISOR_SOCKET": str(self.socket),
            "LLM_BIND_HOST": "127.0.0.1",
            "LLM_PROXY_PORT": str(self.proxy_port),
            "LLM_MANAGEMENT_PORT": str(self.management_port),
            "OLLAMA_URL": f"http://127.0.0.1:{self.ollama_port}",
            "LLM_MODEL": DEFAULT_MODEL,
            "LLM_UPSTREAM_GRACE_SECONDS": "1",
            "LLM_STATS_INTERVAL": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    # --- addresses

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def ollama(self) -> str:
        return f"http://127.0.0.1:{self.ollama_port}"

    @property
    def ollama_log(self) -> Path:
        return self.log_dir / "ollama.log"

    # --- lifecycle

    def start(self, wait_ready: bool = True, timeout: float = 45.0) -> SupervisedService:
        # Append mode: supervisord reopens /dev/stdout for its programs, and writers sharing
        # a regular file must all append or they overwrite each other.
        with self.output_path.open("ab") as out:
            self.process = subprocess.Popen(
                ["bash", str(ENTRYPOINT)], cwd=ROOT, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        if wait_ready:
            wait_until(self._ready, timeout, f"/health/ready on the API\n{self.output()}", 0.2)
        return self

    def _ready(self) -> bool:
        self.assert_running()
        try:
            response = requests.get(self.management + "/health/ready", timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def assert_running(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, (
            f"supervisord exited with {self.process.returncode}:\n{self.output()}"
        )

    def output(self) -> str:
        """Everything supervisord and its programs wrote to stdout/stderr (`docker logs`)."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        """Signal supervisord itself (PID 1 in the container)."""
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisord still running after {timeout} s:\n{self.output()}"
            ) from None

    def leftovers(self) -> list[psutil.Process]:
        assert self.process is not None
        return session_processes(self.process.pid)

    def stop(self) -> None:
        """End everything this service started, however far the test got."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(60)
        for process in self.leftovers():
            with contextlib.suppress(psutil.Error):
                process.kill()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # --- supervisord's XML-RPC interface, over the same socket the hard reset uses

    def rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def program(self, name: str) -> dict[str, Any]:
        return self.rpc().getProcessInfo(name)

    def wait_program_running(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            self.assert_running()
            try:
                info = self.program(name)
            except (OSError, xmlrpc.client.Error):
                return None
            return info if info["statename"] == "RUNNING" else None

        return wait_until(running, timeout, f"program {name} RUNNING\n{self.output()}", 0.2)

    # --- the emulator standing in for Ollama

    def set_model_timing(self, model: str, **timing: float) -> None:
        response = requests.post(
            self.ollama + "/_fake/models", json={"model": model, **timing}, timeout=5
        )
        assert response.status_code == 200, response.text

    def health_path(self) -> str:
        """/health (the 4-point check) where it exists, else /health/ready."""
        response = requests.get(self.management + "/health", timeout=5)
        return "/health/ready" if response.status_code == 404 else "/health"
