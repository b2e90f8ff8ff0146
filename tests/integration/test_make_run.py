"""`make run`'s script: the real supervisord.conf with the emulator standing in for Ollama;
both ports answer; Ctrl-C stops everything it started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import requests

from tests.e2e.supervised import session_processes, wait_until
from tests.service_harness import ROOT, free_port

SYSTEM_PATH = "/usr/bin:/bin"


def test_run_dev_starts_supervisord_with_the_emulator_and_stops_on_ctrl_c():
    if shutil.which("ollama", path=SYSTEM_PATH):
        pytest.skip("a real ollama is installed; this test is about the emulator stand-in")
    proxy, management, upstream = free_port(), free_port(), free_port()
    # Not .run/ in the checkout: a developer's own `make run` may be using it.
    run_dir = Path(tempfile.mkdtemp(prefix="llm-make-run-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OLLAMA_"))},
        "PY": sys.executable,
        "PATH": SYSTEM_PATH,  # no `ollama` binary: the emulator must stand in
        "LLM_RUN_DIR": str(run_dir),
        "OLLAMA_URL": f"http://127.0.0.1:{upstream}",
        "LLM_PROXY_PORT": str(proxy),
        "LLM_MANAGEMENT_PORT": str(management),
        # No LLM_BIND_HOST: `make run` must listen on loopback by default (issue 28, #9).
    }
    output = run_dir / "run.log"
    with output.open("ab") as log:  # append: supervisord reopens /dev/stdout for its programs
        # A new session stands for the terminal: Ctrl-C signals its foreground process group.
        process = subprocess.Popen(
            ["bash", "scripts/run-dev.sh"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def ready() -> bool:
        assert process.poll() is None, output.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{management}/health/ready", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_until(ready, 45, "the API to be ready", 0.2)
        assert requests.get(f"http://127.0.0.1:{proxy}/health/live", timeout=5).ok
        tags = requests.get(f"http://127.0.0.1:{proxy}/api/tags", timeout=5)
        assert tags.status_code == 200 and tags.json()["models"]
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port in (proxy, management)
        }
        assert listening == {("127.0.0.1", proxy), ("127.0.0.1", management)}, listening
        assert "listening on 127.0.0.1 (LLM_BIND_HOST)" in output.read_text()

        # The real supervisord, reachable with the command the script prints.
        socket_path = run_dir / "supervisor.sock"
        hint = f"LLM_SUPERVISOR_SOCKET={socket_path} .venv/bin/supervisorctl -c supervisord.conf"
        assert hint in output.read_text()
        status = subprocess.run(
            [str(Path(sys.executable).parent / "supervisorctl"), "-c", "supervisord.conf",
             "status", "api", "ollama"],
            env={**env, "LLM_SUPERVISOR_SOCKET": str(socket_path)},
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
        assert "api " in status.stdout and "ollama " in status.stdout, status
        assert "FATAL" not in status.stdout and "BACKOFF" not in status.stdout, status

        text = output.read_text()
        assert "Ollama EMULATOR" in text  # said loudly, in the terminal ...
        assert "Ollama EMULATOR" in (run_dir / "logs" / "ollama.log").read_text()  # ... and log
        assert (run_dir / ".gitignore").read_text().strip().endswith("*")
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(60)
        # Whatever is left in the session (supervisord's programs have their own process
        # groups) is an orphan: record it, then clean up.
        leftovers = session_processes(process.pid)
        for leftover in leftovers:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        if process.poll() is None:
            process.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)

    assert leftovers == [], f"processes outlived Ctrl-C: {leftovers}"
    for port in (proxy, management, upstream):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
        except requests.ConnectionError:
            continue
        raise AssertionError(f"port {port} still answers after Ctrl-C")
