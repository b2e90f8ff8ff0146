"""`make run`'s script starts the emulator and the API; both ports answer; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.service_harness import ROOT, free_port


def test_run_dev_starts_emulator_and_api_and_stops_on_interrupt(tmp_path):
    proxy, management, upstream = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PY": sys.executable,
        "PATH": "/usr/bin:/bin",  # no `ollama` binary: the emulator must stand in
        "OLLAMA_URL": f"http://127.0.0.1:{upstream}",
        "LLM_PROXY_PORT": str(proxy),
        "LLM_MANAGEMENT_PORT": str(management),
        "LLM_BIND_HOST": "127.0.0.1",
    }
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        ["bash", "scripts/run-dev.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            try:
                ready = requests.get(f"http://127.0.0.1:{management}/health/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, (tmp_path / "run.log").read_text()
        assert requests.get(f"http://127.0.0.1:{proxy}/health/live", timeout=2).ok
        tags = requests.get(f"http://127.0.0.1:{proxy}/api/tags", timeout=5)
        assert tags.status_code == 200 and tags.json()["models"]
        assert "Ollama EMULATOR" in (tmp_path / "run.log").read_text()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    # Everything it started is gone.
    for port in (proxy, management, upstream):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
        except requests.ConnectionError:
            continue
        raise AssertionError(f"port {port} still answers after Ctrl-C")
