"""Static checks of the container files (also run by `make lint`) and the timeouts they share."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service_harness import ROOT

BIN = Path(sys.executable).parent
SHELL_SCRIPTS = [
    "entrypoint.sh",
    "healthcheck.sh",
    "scripts/run-dev.sh",
    "scripts/import-gguf.sh",
    "scripts/ollama-shim/ollama",
]


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from the virtual environment; run `make venv`")
    return str(path)


def test_shell_scripts_pass_shellcheck():
    present = [script for script in SHELL_SCRIPTS if (ROOT / script).exists()]
    assert "entrypoint.sh" in present
    result = subprocess.run(
        [_tool("shellcheck"), *present], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _supervisor_programs() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(ROOT / "supervisord.conf")
    return parser


def test_stop_timeouts_nest_so_streams_drain_before_any_kill():
    gunicorn = (ROOT / "config" / "gunicorn.conf.py").read_text()
    graceful = int(re.search(r"^graceful_timeout = (\d+)", gunicorn, re.M).group(1))
    programs = _supervisor_programs()
    api_wait = programs.getint("program:api", "stopwaitsecs")
    ollama_wait = programs.getint("program:ollama", "stopwaitsecs")
    assert api_wait > graceful, "supervisord would SIGKILL gunicorn while it drains streams"
    compose = (ROOT / "docker-compose.yml").read_text()
    grace = int(re.search(r"^\s+stop_grace_period: (\d+)s$", compose, re.M).group(1))
    # supervisord stops the API, then Ollama; Docker must wait for both.
    assert grace > api_wait + ollama_wait


def test_ollama_starts_first_and_stops_last():
    programs = _supervisor_programs()
    assert programs.getint("program:ollama", "priority") < programs.getint(
        "program:api", "priority"
    )
    for name in ("program:ollama", "program:api"):
        assert programs.getboolean(name, "stopasgroup")
        assert programs.getboolean(name, "killasgroup")


def test_image_and_compose_agree_on_ports_and_health_check():
    dockerfile = (ROOT / "Dockerfile").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"^EXPOSE 11434 11436$", dockerfile, re.M)
    assert 'CMD ["/app/healthcheck.sh"]' in dockerfile
    assert 'test: ["CMD", "/app/healthcheck.sh"]' in compose
    for port in ("11434", "11436"):
        assert f':{port}:{port}"' in compose
