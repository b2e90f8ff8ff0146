"""entrypoint.sh in dry-run mode: validation, the LLM_* -> Ollama mapping, Jetson detection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service_harness import ROOT

ENTRYPOINT = ROOT / "entrypoint.sh"
R1_RELEASE = ROOT / "tests/fixtures/telemetry/platform/r1_nv_tegra_release_jp62.txt"


def run_entrypoint(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OLLAMA_", "JETSON_"))
    }
    full_env = {
        **clean,
        "LLM_ENTRYPOINT_DRY_RUN": "1",
        "LLM_PYTHON": sys.executable,
        "LLM_NV_TEGRA_RELEASE": "/nonexistent/nv_tegra_release",  # not a Jetson unless asked
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(ENTRYPOINT)], env=full_env, capture_output=True, text=True, timeout=30
    )


def planned(env: dict[str, str] | None = None) -> tuple[dict[str, str], str, str]:
    """The environment and command a successful dry run prints, and its stderr."""
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    variables, command = {}, ""
    for line in result.stdout.splitlines():
        if line.startswith("exec:"):
            command = line
        else:
            key, _, value = line.partition("=")
            variables[key] = value
    return variables, command, result.stderr


def test_defaults_are_the_container_layout():
    env, command, _ = planned()
    assert env["OLLAMA_URL"] == "http://127.0.0.1:11433"
    assert env["OLLAMA_HOST"] == "127.0.0.1:11433"
    assert env["LLM_RUN_DIR"] == "/run/llm-service"
    assert env["LLM_SUPERVISOR_SOCKET"] == "/run/llm-service/supervisor.sock"
    # Same default as management_api/settings.py, so /health reads the file Ollama writes.
    assert env["LLM_LOG_DIR"] == str(ROOT / "logs")
    assert env["LLM_OLLAMA_LOG_FILE"] == str(ROOT / "logs" / "ollama.log")
    assert env["LLM_IMPORT_AUTOSTART"] == "false"
    for unset in ("OLLAMA_KEEP_ALIVE", "OLLAMA_CONTEXT_LENGTH", "JETSON_JETPACK"):
        assert unset not in env
    assert command.split()[1:] == [
        sys.executable, str(ROOT / "scripts" / "run_supervisord.py"), "--nodaemon",
        "--configuration", str(ROOT / "supervisord.conf"),
    ]  # fmt: skip


def test_settings_are_mapped_to_ollamas_variables():
    env, _, _ = planned(
        {
            "OLLAMA_URL": "http://127.0.0.1:12000/",
            "LLM_KEEP_ALIVE_SECONDS": "3600",
            "LLM_CONTEXT_LENGTH": "08192",
            "LLM_IMPORT_DIR": "/models/gguf",
            "LLM_LOG_DIR": "var/log",
            "LLM_RUN_DIR": "/tmp/llm-run",
        }
    )
    assert env["OLLAMA_HOST"] == "127.0.0.1:12000"
    assert env["OLLAMA_KEEP_ALIVE"] == "3600"
    assert env["OLLAMA_CONTEXT_LENGTH"] == "8192"  # decimal, not octal
    assert env["LLM_IMPORT_AUTOSTART"] == "true"
    assert env["LLM_LOG_DIR"] == str(ROOT / "var" / "log")  # relative to the project
    assert env["LLM_SUPERVISOR_SOCKET"] == "/tmp/llm-run/supervisor.sock"


def test_negative_keep_alive_means_forever():
    env, _, _ = planned({"LLM_KEEP_ALIVE_SECONDS": "-1"})
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"


def test_empty_variables_count_as_unset():
    env, _, _ = planned({"LLM_KEEP_ALIVE_SECONDS": "", "OLLAMA_URL": "", "LLM_PROXY_PORT": ""})
    assert "OLLAMA_KEEP_ALIVE" not in env
    assert env["OLLAMA_HOST"] == "127.0.0.1:11433"


def test_legacy_public_ollama_host_is_replaced_and_said_so():
    # Older deployments set OLLAMA_HOST=0.0.0.0:11434; that port belongs to the proxy now.
    env, _, stderr = planned({"OLLAMA_HOST": "0.0.0.0:11434"})
    assert env["OLLAMA_HOST"] == "127.0.0.1:11433"
    assert "OLLAMA_HOST=0.0.0.0:11434 replaced by 127.0.0.1:11433" in stderr


def test_proxy_disabled_lets_ollama_serve_the_public_port():
    env, _, _ = planned({"LLM_PROXY_ENABLED": "false"})
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert env["OLLAMA_URL"] == "http://127.0.0.1:11434"

    env, _, stderr = planned(
        {
            "LLM_PROXY_ENABLED": "no",
            "LLM_PROXY_PORT": "12434",
            "LLM_BIND_HOST": "127.0.0.1",
            "OLLAMA_URL": "http://127.0.0.1:11433",
        }
    )
    assert env["OLLAMA_HOST"] == "127.0.0.1:12434"
    assert env["OLLAMA_URL"] == "http://127.0.0.1:12434"
    assert "OLLAMA_URL=http://127.0.0.1:11433 replaced" in stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLM_PROXY_PORT": "99999"},
         "LLM_PROXY_PORT='99999' is invalid: expected a TCP port number between 1 and 65535"),
        ({"LLM_PROXY_PORT": "abc"}, "LLM_PROXY_PORT='abc' is invalid"),
        ({"LLM_MANAGEMENT_PORT": "0"}, "LLM_MANAGEMENT_PORT='0' is invalid"),
        ({"LLM_KEEP_ALIVE_SECONDS": "5m"},
         "LLM_KEEP_ALIVE_SECONDS='5m' is invalid: expected whole seconds"),
        ({"LLM_CONTEXT_LENGTH": "0"},
         "LLM_CONTEXT_LENGTH='0' is invalid: expected a whole number of 1 or more"),
        ({"LLM_CONTEXT_LENGTH": "4k"}, "LLM_CONTEXT_LENGTH='4k' is invalid"),
        ({"LLM_PROXY_ENABLED": "maybe"},
         "LLM_PROXY_ENABLED='maybe' is invalid: expected true or false"),
        ({"OLLAMA_URL": "localhost:11433"},
         "OLLAMA_URL='localhost:11433' is invalid: expected an http:// URL"),
        ({"OLLAMA_URL": "https://127.0.0.1:11433"},
         "OLLAMA_URL='https://127.0.0.1:11433' is invalid: the bundled Ollama serves plain http"),
        ({"OLLAMA_URL": "http://127.0.0.1:70000"},
         "OLLAMA_URL='http://127.0.0.1:70000' is invalid"),
        ({"OLLAMA_URL": "http://127.0.0.1:11434"},
         "OLLAMA_URL='http://127.0.0.1:11434' is invalid: port 11434 is where the API listens"),
        ({"JETSON_JETPACK": "six"}, "JETSON_JETPACK='six' is invalid"),
        ({"LLM_ENTRYPOINT_DRY_RUN": "perhaps"}, "LLM_ENTRYPOINT_DRY_RUN='perhaps' is invalid"),
        ({"LLM_SUPERVISOR_SOCKET": "/tmp/" + "s" * 120},
         "LLM_SUPERVISOR_SOCKET='/tmp/sss"),
        # Everything else is checked by management_api/settings.py, with its own wording.
        ({"LLM_STATS_INTERVAL": "abc"},
         "LLM_STATS_INTERVAL='abc' is invalid: expected a number of seconds greater than 0"),
        ({"LLM_PROXY_PORT": "9000", "LLM_MANAGEMENT_PORT": "9000"},
         "LLM_PROXY_PORT and LLM_MANAGEMENT_PORT are both 9000"),
    ],
)  # fmt: skip
def test_invalid_environment_stops_with_one_line_and_exit_2(env, message):
    result = run_entrypoint(env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llm-service: configuration error: " + message), lines[0]


def _release_file(tmp_path: Path, release: str) -> Path:
    path = tmp_path / "nv_tegra_release"
    path.write_text(R1_RELEASE.read_text().replace("# R36 ", f"# {release} ", 1))
    return path


def test_jetpack_6_detected_from_the_release_file():
    env, _, stderr = planned({"LLM_NV_TEGRA_RELEASE": str(R1_RELEASE)})
    assert env["JETSON_JETPACK"] == "6"
    assert "Jetson detected" in stderr


def test_jetpack_5_detected_from_an_r35_release(tmp_path):
    env, _, _ = planned({"LLM_NV_TEGRA_RELEASE": str(_release_file(tmp_path, "R35"))})
    assert env["JETSON_JETPACK"] == "5"


def test_unknown_l4t_release_leaves_jetpack_to_ollama(tmp_path):
    env, _, stderr = planned({"LLM_NV_TEGRA_RELEASE": str(_release_file(tmp_path, "R38"))})
    assert "JETSON_JETPACK" not in env
    assert "L4T R38" in stderr


def test_explicit_jetpack_wins_over_the_release_file():
    env, _, _ = planned({"LLM_NV_TEGRA_RELEASE": str(R1_RELEASE), "JETSON_JETPACK": "5"})
    assert env["JETSON_JETPACK"] == "5"


def test_no_release_file_means_no_jetpack():
    env, _, stderr = planned()
    assert "JETSON_JETPACK" not in env
    assert "Jetson" not in stderr
