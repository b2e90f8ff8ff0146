"""scripts/import-gguf.sh: offline provisioning against a real Ollama API, with a recording CLI.

The `ollama` on PATH is a stub that records its arguments (the real CLI would copy gigabytes);
the wait for Ollama goes to the emulator over HTTP.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ROOT, free_port

IMPORT_SCRIPT = ROOT / "scripts" / "import-gguf.sh"

STUB = """#!/usr/bin/env bash
echo "ollama $*" >>"$STUB_LOG"
case "$1" in
    show) grep -qx "$2" "$STUB_PRESENT" ;;
    create)
        cat "$4" >>"$STUB_LOG"
        if [[ "$2" == *broken* ]]; then
            printf 'transferring model data\\nError: invalid file magic\\n' >&2
            exit 1
        fi
        ;;
esac
"""


@pytest.fixture(scope="module")
def ollama_api() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


def run_import(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "ollama"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    present = tmp_path / "present.txt"
    present.write_text("already-here\n")
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OLLAMA_"))},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "STUB_PRESENT": str(present),
        **env,
    }
    result = subprocess.run(
        ["bash", str(IMPORT_SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60
    )
    return result, log.read_text() if log.exists() else ""


def test_imports_new_files_skips_present_ones_and_survives_failures(tmp_path, ollama_api):
    models = tmp_path / "gguf"
    models.mkdir()
    for name in ("Qwen2.5-7B-Instruct-Q4_K_M.gguf", "already-here.gguf", "broken.gguf"):
        (models / name).write_bytes(b"GGUF")
    (models / "README.txt").write_text("not a model")

    result, calls = run_import(
        tmp_path, {"LLM_IMPORT_DIR": str(models), "OLLAMA_URL": ollama_api.url}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "imported qwen2.5-7b-instruct-q4_k_m" in out
    assert "skipped" in out and "model already-here already exists" in out
    assert "FAILED" in out and "broken.gguf: Error: invalid file magic" in out
    assert "done: 1 imported, 1 skipped (already present), 1 failed" in out

    created = [line for line in calls.splitlines() if line.startswith("ollama create")]
    assert sorted(line.split()[2] for line in created) == ["broken", "qwen2.5-7b-instruct-q4_k_m"]
    assert f"FROM {models / 'Qwen2.5-7B-Instruct-Q4_K_M.gguf'}" in calls
    assert "README" not in calls


def test_gives_up_quietly_when_ollama_never_answers(tmp_path):
    models = tmp_path / "gguf"
    models.mkdir()
    (models / "m.gguf").write_bytes(b"GGUF")
    result, calls = run_import(
        tmp_path,
        {
            "LLM_IMPORT_DIR": str(models),
            "OLLAMA_URL": f"http://127.0.0.1:{free_port()}",
            "LLM_IMPORT_WAIT_SECONDS": "1",
        },
    )
    assert result.returncode == 0
    assert "did not answer" in result.stdout and "1 file(s) not imported" in result.stdout
    assert calls == ""


@pytest.mark.parametrize("import_dir", ["", "/nonexistent/gguf"])
def test_nothing_to_do_without_an_import_folder(tmp_path, import_dir):
    result, calls = run_import(tmp_path, {"LLM_IMPORT_DIR": import_dir})
    assert result.returncode == 0
    assert "nothing" in result.stdout
    assert calls == ""
