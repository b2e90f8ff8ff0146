"""One Ollama version everywhere: the image we ship, compose, deploy/ and the emulator.

The version is the newest Ollama release whose arm64 image carries the JetPack 6 runners
(``/usr/lib/ollama/cuda_jetpack6``); the emulator's behaviour is that release's, so the tests
exercise the Ollama the image ships.
"""

from __future__ import annotations

import re
from pathlib import Path

import requests

from tests.fake_ollama.harness import FakeOllama
from tests.fake_ollama.management import VERSION

ROOT = Path(__file__).resolve().parents[2]
_TAG = re.compile(r"ollama/ollama:([0-9A-Za-z._-]+)")


def _dockerfile_default() -> str:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ARG OLLAMA_IMAGE=ollama/ollama:(\S+)$", text, re.MULTILINE)
    assert match, "Dockerfile has no `ARG OLLAMA_IMAGE=ollama/ollama:<tag>`"
    return match.group(1)


def _compose_default() -> str:
    text = (ROOT / "docker-compose.yml").read_text()
    match = re.search(r"\$\{OLLAMA_IMAGE:-ollama/ollama:([^}]+)\}", text)
    assert match, "docker-compose.yml has no `${OLLAMA_IMAGE:-ollama/ollama:<tag>}` default"
    return match.group(1)


def test_dockerfile_compose_and_emulator_name_one_version() -> None:
    assert _dockerfile_default() == VERSION
    assert _compose_default() == VERSION


def test_deploy_manifests_name_no_other_ollama_version() -> None:
    mentions = {
        (str(path.relative_to(ROOT)), tag)
        for path in (ROOT / "deploy").rglob("*")
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json", ".md", ".env", "")
        for tag in _TAG.findall(path.read_text(errors="replace"))
    }
    assert {m for m in mentions if m[1] != VERSION} == set()


def test_emulator_reports_the_shipped_version(fake: FakeOllama) -> None:
    reply = requests.get(fake.url + "/api/version", timeout=5)
    assert reply.status_code == 200
    assert reply.json() == {"version": _dockerfile_default()}


def test_container_standin_reports_the_shipped_version() -> None:
    # tests/container/ollama_standin.py plays `ollama` in the image tests (where it exists).
    standin = ROOT / "tests" / "container" / "ollama_standin.py"
    if not standin.exists():
        return
    match = re.search(r'^VERSION = "([^"]+)"', standin.read_text(), re.MULTILINE)
    assert match and match.group(1) == VERSION
