"""Fixtures for the image tests: a real engine, the built image, containers started from it.

The engine is rootful podman (tests/container/engine.py says what this machine type needs).
Where it cannot run, every test here skips with one line naming the reason, unless
LLM_REQUIRE_CONTAINER_TESTS=1 (set by `make test` when it runs as root, where the engine can
be installed): then that is a failure, so the image is never silently left untested.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

from tests.container import engine as oci

COMPOSE_FILE = oci.ROOT / "docker-compose.yml"
RELEASE_FIXTURE = oci.ROOT / "tests/fixtures/telemetry/platform/r1_nv_tegra_release_jp62.txt"
# Host ports for published container ports: below the integration harness's 20000-32000 and
# below Linux's ephemeral range, so neither can take them between our check and podman's bind.
HOST_PORTS = (14000, 19999)
_ports_given: set[int] = set()


def host_port() -> int:
    for _ in range(1000):
        port = random.randrange(*HOST_PORTS)
        if port in _ports_given:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free host port for a container")


@pytest.fixture(scope="session")
def engine() -> oci.Engine:
    try:
        return oci.engine()
    except oci.EngineUnavailable as exc:
        if os.environ.get("LLM_REQUIRE_CONTAINER_TESTS") == "1":
            pytest.fail(f"image tests required but the engine cannot run: {exc}")
        pytest.skip(f"IMAGE TESTS SKIPPED: {exc}")


@pytest.fixture(scope="session")
def image(engine: oci.Engine) -> dict[str, Any]:
    """The product image, built from this checkout; with the build's duration and size."""
    try:
        base = oci.ensure_base_image(engine)
    except oci.EngineUnavailable as exc:
        if os.environ.get("LLM_REQUIRE_CONTAINER_TESTS") == "1":
            pytest.fail(f"image tests required but the base image cannot be made: {exc}")
        pytest.skip(f"IMAGE TESTS SKIPPED: {exc}")
    seconds = oci.build_image(engine, base, oci.ensure_standin_image(engine))
    size = engine.run("image", "inspect", "--format", "{{.Size}}", oci.IMAGE).stdout.strip()
    return {"name": oci.IMAGE, "build_seconds": seconds, "size_bytes": int(size)}


def compose_service() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]["llm-service"]


def _default(value: str) -> str:
    """`${VAR:-default}` as compose resolves it with VAR unset; literal text stays."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def _seconds(text: str) -> int:
    return int(str(text).rstrip("s"))


class Container:
    """One container of the image, started the way docker-compose.yml describes it."""

    def __init__(self, engine: oci.Engine, image: str, name: str, env: dict[str, str]) -> None:
        self.engine, self.image, self.name = engine, image, name
        self.extra_env = env
        self.proxy_port, self.management_port = host_port(), host_port()
        self.volumes: list[str] = []  # the named volumes made for it, one per compose volume

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def run_args(self, restart: str | None = None) -> list[str]:
        """docker-compose.yml's service as `podman run` flags, less the NVIDIA/Jetson-only parts
        (runtime: nvidia, the GPU reservation), with the release file from a fixture."""
        service = compose_service()
        args = ["--name", self.name, "--detach"]
        published = {"11434": self.proxy_port, "11436": self.management_port}
        for port in service["ports"]:
            container_port = _default(port).rsplit(":", 1)[1]
            args += ["--publish", f"127.0.0.1:{published[container_port]}:{container_port}"]
        for key, value in {**service["environment"], **self.extra_env}.items():
            args += ["--env", f"{key}={_default(value)}"]
        for volume in service["volumes"]:
            if isinstance(volume, str):
                source, target = volume.split(":", 1)
                self.volumes.append(f"{self.name}-{source}")
                args += ["--volume", f"{self.volumes[-1]}:{target}"]
            elif volume["target"] == "/etc/nv_tegra_release":
                args += ["--volume", f"{RELEASE_FIXTURE}:/etc/nv_tegra_release:ro"]
        for group in service.get("group_add", []):
            args += ["--group-add", str(group)]
        for path in service.get("tmpfs", []):
            args += ["--tmpfs", path]
        memory = service["deploy"]["resources"]["limits"]["memory"]
        args += ["--memory", _default(memory)]
        args += ["--restart", restart or service["restart"]]
        args += ["--stop-timeout", str(_seconds(service["stop_grace_period"]))]
        return args

    def start(self, restart: str | None = None) -> Container:
        self.engine.run("run", *self.run_args(restart), self.image)
        return self

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return requests.get(url, timeout=kwargs.pop("timeout", 10), **kwargs)

    def healthcheck(self) -> tuple[int, str]:
        """The image's own HEALTHCHECK command, run now (no systemd timer runs it here): its
        exit status and the line it printed, as the engine recorded them."""
        result = self.engine.run("healthcheck", "run", self.name, check=False, timeout=30)
        log = (self.state().get("Health") or {}).get("Log") or [{}]
        return result.returncode, str(log[-1].get("Output", result.stdout + result.stderr))

    def wait_healthy(self, timeout: float) -> float:
        started = time.monotonic()
        last = (None, "")
        while time.monotonic() - started < timeout:
            last = self.healthcheck()
            if last[0] == 0:
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(f"not healthy after {timeout} s: {last}\n{self.logs()}")

    def exec(self, *command: str, check: bool = True) -> str:
        return self.engine.run("exec", self.name, *command, check=check).stdout

    def top(self) -> list[dict[str, str]]:
        out = self.engine.run("top", self.name, "user", "pid", "args").stdout.splitlines()
        rows = []
        for line in out[1:]:
            user, pid, args = line.split(None, 2)
            rows.append({"user": user, "pid": pid, "args": args.strip()})
        return rows

    def state(self) -> dict[str, Any]:
        inspected = self.engine.run(
            "inspect", "--format", "{{json .State}}", self.name, check=False
        )
        return json.loads(inspected.stdout) if inspected.returncode == 0 else {}

    def logs(self) -> str:
        result = self.engine.run("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def remove(self) -> None:
        self.engine.run("rm", "--force", "--time", "0", self.name, check=False, timeout=120)
        for volume in self.volumes:
            self.engine.run("volume", "rm", "--force", volume, check=False)


@pytest.fixture
def make_container(engine: oci.Engine, image: dict[str, Any]) -> Iterator[Any]:
    made: list[Container] = []

    def make(env: dict[str, str] | None = None) -> Container:
        container = Container(engine, image["name"], f"llm-test-{uuid.uuid4().hex[:8]}", env or {})
        made.append(container)
        return container

    yield make
    for container in made:
        container.remove()


@pytest.fixture(scope="module")
def running(engine: oci.Engine, image: dict[str, Any]) -> Iterator[Container]:
    """One healthy container shared by a module's read-mostly tests."""
    container = Container(
        engine,
        image["name"],
        f"llm-test-{uuid.uuid4().hex[:8]}",
        {"LLM_MODEL": "llama3.2:1b", "OLLAMA_STANDIN_TOKEN_SECONDS": "0.01"},
    )
    container.start()
    container.healthy_after = container.wait_healthy(timeout=120)
    yield container
    container.remove()
