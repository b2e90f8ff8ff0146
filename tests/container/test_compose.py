"""docker-compose.yml itself, run by podman-compose (PyPI), must start the service healthy.

Two overrides: compose.no-gpu.yml drops the NVIDIA/Jetson-only parts (the runtime, the GPU
reservation, the host's release file), as on any host without them; the test's own adds
free host ports, a container name of its own and the release file from a fixture. Everything
else (environment, volume, restart policy, stop grace period, memory limit, health check,
tmpfs, groups) is the compose file as shipped. The image is the one the image tests built
(`--no-build`): the compose file's own build would need a registry for its base images.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import requests

from tests.container import engine as oci
from tests.container.conftest import RELEASE_FIXTURE, Container

pytestmark = pytest.mark.container

OVERRIDE = oci.ROOT / "tests/container/compose.no-gpu.yml"


def test_compose_file_starts_the_service_healthy(engine, image, tmp_path):
    project = f"llmtest{uuid.uuid4().hex[:8]}"
    container = Container(engine, image["name"], f"{project}-llm-service", {})
    # Literal values: podman-compose does not interpolate inside !override lists.
    mine = tmp_path / "compose.test.yml"
    mine.write_text(
        "services:\n"
        "  llm-service:\n"
        f"    container_name: {container.name}\n"
        "    ports: !override\n"
        f'      - "127.0.0.1:{container.proxy_port}:11434"\n'
        f'      - "127.0.0.1:{container.management_port}:11436"\n'
        "    volumes:\n"
        f"      - {RELEASE_FIXTURE}:/etc/nv_tegra_release:ro\n"
    )
    env = {**engine.env, "LLM_SERVICE_IMAGE": image["name"], "LLM_MODEL": "llama3.2:1b"}
    compose = [
        sys.executable, "-m", "podman_compose", "--project-name", project,
        "--file", str(oci.ROOT / "docker-compose.yml"), "--file", str(OVERRIDE),
        "--file", str(mine),
    ]  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *args], env=env, capture_output=True, text=True, timeout=180
        )

    try:
        up = run("up", "--detach", "--no-build")
        assert up.returncode == 0, up.stdout + up.stderr
        container.wait_healthy(timeout=120)
        # podman-compose applies stop_grace_period when *it* stops the service
        # (`podman-compose stop/down`), not as the container's own stop timeout.
        settings = engine.run(
            "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.Memory}}",
            container.name,
        ).stdout.split()  # fmt: skip
        assert settings == ["unless-stopped", str(48 * 1024**3)], settings
        for base in (container.proxy, container.management):
            assert requests.get(base + "/health", timeout=10).status_code == 200
        answer = requests.post(
            container.proxy + "/api/generate",
            json={"model": "llama3.2:1b", "prompt": "hi", "stream": False},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert "JETSON_JETPACK=6" in container.logs()
    finally:
        down = run("down", "--volumes", "--timeout", "10")
        assert down.returncode == 0, down.stdout + down.stderr
