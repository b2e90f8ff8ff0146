"""A real OCI engine (rootful podman from Debian's packages) for the image tests.

What this machine type needs, measured (kept here, never in the product):
- crun refuses to start containers ("cgroups in hybrid mode not supported",
  "setrlimit RLIMIT_NOFILE: Operation not permitted"); runc with cgroupfs works, given default
  ulimits below the sandbox's own limits. Both go into a containers.conf of our own, passed
  through CONTAINERS_CONF to every podman call.
- No systemd: podman's health-check timers never fire, so the tests run
  `podman healthcheck run` themselves (it executes the image's own HEALTHCHECK command).
- `--format docker`: the OCI format has no HEALTHCHECK; podman drops it without it.
- No registry is reachable. The base image is Debian bookworm minbase made by mmdebstrap from
  Debian's archive and imported locally; it stands in for the product's `ubuntu:22.04` (same
  glibc line, same apt, a `video` group and no `render` group, like ubuntu:22.04). Ollama
  comes from a stand-in image (tests/container/ollama_standin.py). Builds use `--pull=never`.
- Images stay in podman's store between runs: the base is made once per machine, the stand-in
  is rebuilt when its file changes (its tag is the file's hash), and podman's layer cache
  makes a rebuild of an unchanged Dockerfile take seconds.
- The build's RUN steps fetch from Debian and PyPI over the host's network. Where the host's
  pip trusts an extra CA (a TLS-inspecting egress), that bundle and a pip.conf naming it are
  mounted into the build only (`podman build --volume`): nothing of it enters the image.

    python -m tests.container.engine build     # the same steps as the tests, from a shell
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
STANDIN = Path(__file__).resolve().parent / "ollama_standin.py"
STATE_DIR = Path(os.environ.get("LLM_CONTAINER_TEST_DIR", "/var/tmp/llm-service-container-tests"))

BASE_IMAGE = "localhost/llm-service-test/debian:bookworm-minbase"
IMAGE = "localhost/llm-service:test"
DEBIAN_MIRROR = "http://deb.debian.org/debian"

CONTAINERS_CONF = """\
# Written by tests/container/engine.py for the image tests on this machine type.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class EngineUnavailable(Exception):
    """The engine cannot run here; the message is the one line the skip shows."""


@dataclass
class Engine:
    podman: str
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.podman, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0


def engine() -> Engine:
    """Podman set up for this machine, or EngineUnavailable with the reason."""
    podman = shutil.which("podman")
    if podman is None:
        raise EngineUnavailable("podman is not installed (make test installs it as root via apt)")
    if os.geteuid() != 0:
        raise EngineUnavailable("the image tests need rootful podman; run them as root")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    conf = STATE_DIR / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    found = Engine(podman, env)
    probe = found.run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if probe.returncode != 0:
        raise EngineUnavailable(f"podman cannot run here: {probe.stderr.strip()[-300:]}")
    return found


def ensure_base_image(found: Engine) -> str:
    """Debian bookworm minbase from Debian's archive, imported once per machine."""
    if found.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise EngineUnavailable("mmdebstrap is not installed (make test installs it via apt)")
    with tempfile.TemporaryDirectory(dir=STATE_DIR) as work:
        tarball = Path(work) / "bookworm.tar"
        made = subprocess.run(
            [mmdebstrap, "--variant=minbase", "--format=tar", "bookworm", str(tarball),
             DEBIAN_MIRROR],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if made.returncode != 0:
            raise EngineUnavailable(f"mmdebstrap failed: {made.stderr.strip()[-300:]}")
        found.run("import", str(tarball), BASE_IMAGE, timeout=300)
    return BASE_IMAGE


def ensure_standin_image(found: Engine) -> str:
    """FROM scratch: /usr/bin/ollama (the stand-in) and an empty /usr/lib/ollama."""
    digest = hashlib.sha256(STANDIN.read_bytes()).hexdigest()[:12]
    name = f"localhost/llm-service-test/ollama-standin:{digest}"
    if found.image_exists(name):
        return name
    with tempfile.TemporaryDirectory(dir=STATE_DIR) as work:
        context = Path(work)
        shutil.copy(STANDIN, context / "ollama")
        (context / "ollama").chmod(0o755)
        (context / "lib").mkdir()
        (context / "lib" / "README").write_text("Ollama's runners would be here.\n")
        (context / "Containerfile").write_text(
            "FROM scratch\nCOPY ollama /usr/bin/ollama\nCOPY lib/ /usr/lib/ollama/\n"
        )
        found.run("build", "--pull=never", "--format", "docker", "-t", name, str(context))
    return name


def _build_volumes() -> list[str]:
    """The host pip's extra CA, for the build's `pip install` only (see the module doc)."""
    config = configparser.ConfigParser()
    config.read(["/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf")])
    cert = os.environ.get("PIP_CERT") or config.get("global", "cert", fallback="")
    if not cert or not Path(cert).is_file():
        return []
    pip_conf = STATE_DIR / "build-pip.conf"
    pip_conf.write_text("[global]\ncert = /etc/llm-test-host-ca.pem\n")
    return [
        "--volume", f"{cert}:/etc/llm-test-host-ca.pem:ro",
        "--volume", f"{pip_conf}:/etc/pip.conf:ro",
    ]  # fmt: skip


def build_image(found: Engine, base: str, ollama: str, dockerfile: Path | None = None) -> float:
    """Build the product image from the repository; returns the seconds it took."""
    started = time.monotonic()
    found.run(
        "build", "--pull=never", "--format", "docker", "--network", "host",
        *_build_volumes(),
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"OLLAMA_IMAGE={ollama}",
        "--file", str(dockerfile or ROOT / "Dockerfile"),
        "--tag", IMAGE, str(ROOT),
        timeout=1200,
    )  # fmt: skip
    return time.monotonic() - started


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m tests.container.engine build", file=sys.stderr)
        return 2
    found = engine()
    seconds = build_image(found, ensure_base_image(found), ensure_standin_image(found))
    print(f"built {IMAGE} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
