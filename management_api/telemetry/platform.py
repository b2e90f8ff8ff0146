"""Which machine this is: Jetson or not, board model, L4T release and JetPack version.

The device tree is masked in a normal container, so the release file (bind-mounted from the
host), an environment variable, a ``-tegra`` kernel or the GPU's sysfs node decide.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from management_api.telemetry.commands import CommandError, run_command
from management_api.telemetry.jetson_sysfs import find_gpu_paths, read_text
from management_api.telemetry.reading import PlatformInfo

RELEASE_FILE = "etc/nv_tegra_release"
MODEL_FILES = (
    "proc/device-tree/model",
    "sys/firmware/devicetree/base/model",
    "tmp/nv_jetson_model",  # written on the host and mounted by jetson-containers
)

# L4T release -> JetPack, as published by NVIDIA (and mirrored in jtop's table).
JETPACK_BY_L4T: Mapping[str, str] = {
    "34.0.1": "5.0 PRE-DP",
    "34.1.0": "5.0 DP",
    "34.1.1": "5.0.1 DP",
    "35.1.0": "5.0.2 GA",
    "35.2.1": "5.1",
    "35.3.0": "5.1.1 PRE",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "35.6.2": "5.1.5",
    "35.6.3": "5.1.5",
    "35.6.4": "5.1.6",
    "35.6.5": "5.1.7",
    "36.0.0": "6.0 EA",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.2": "6.1 (rev1)",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "36.4.7": "6.2.1",
    "36.5.0": "6.2.2",
    "36.5.2": "6.2.3",
    "38.2.0": "7.0",
    "38.2.1": "7.0",
    "38.2.2": "7.0",
    "38.4.0": "7.1",
    "39.0.0": "7.2 EA",
    "39.2.0": "7.2 GA",
}
# The L4T major release fixes the JetPack generation (Ollama's runner selection uses the same).
JETPACK_MAJOR_BY_L4T_MAJOR: Mapping[int, int] = {34: 5, 35: 5, 36: 6, 38: 7, 39: 7}

_FIRST_LINE = re.compile(r"^#\s*R(\d+)\s*\(release\)")


def parse_nv_tegra_release(text: str) -> dict[str, str]:
    """Fields of the first line of ``/etc/nv_tegra_release``, by name; `l4t` is ``36.4.3``."""
    first = text.splitlines()[0] if text.strip() else ""
    match = _FIRST_LINE.match(first)
    if not match:
        return {}
    fields = {"release": match.group(1)}
    for part in first.split(", ")[1:]:
        key, sep, value = part.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if "revision" in fields:
        fields["l4t"] = normalise_l4t(f"{fields['release']}.{fields['revision']}")
    return fields


def parse_l4t_core_version(text: str) -> str | None:
    """``dpkg-query`` version of nvidia-l4t-core (``36.4.4-20250616085344``) -> ``36.4.4``."""
    match = re.match(r"\s*(\d+\.\d+(?:\.\d+)?)", text)
    return normalise_l4t(match.group(1)) if match else None


def normalise_l4t(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts + ["0"] * (3 - len(parts)))


def jetpack_for_l4t(l4t: str | None) -> str | None:
    return JETPACK_BY_L4T.get(normalise_l4t(l4t)) if l4t else None


def jetpack_major_for_l4t(l4t: str | None) -> int | None:
    if not l4t:
        return None
    return JETPACK_MAJOR_BY_L4T_MAJOR.get(int(l4t.split(".", 1)[0]))


def read_model(root: Path) -> str | None:
    for relative in MODEL_FILES:
        text = read_text(root / relative)
        if text and text.strip("\0\n "):
            return text.replace("\0", " ").strip()
    return None


def read_platform(
    root: str | os.PathLike[str] = "/",
    environ: Mapping[str, str] | None = None,
    kernel: str | None = None,
    query_dpkg: bool | None = None,
) -> PlatformInfo:
    """Detect the platform once at start. Outside tests, leave the arguments at their defaults."""
    root_path = Path(root)
    env = os.environ if environ is None else environ
    on_host_root = root_path.resolve() == Path("/")
    if kernel is None and on_host_root:
        kernel = os.uname().release
    release = parse_nv_tegra_release(read_text(root_path / RELEASE_FILE) or "")
    l4t = release.get("l4t")
    if l4t is None and (on_host_root if query_dpkg is None else query_dpkg):
        l4t = _l4t_from_dpkg()
    jetpack_major = jetpack_major_for_l4t(l4t)
    if jetpack_major is None and env.get("JETSON_JETPACK", "").strip().isdigit():
        jetpack_major = int(env["JETSON_JETPACK"])
    model = read_model(root_path)
    gpu = find_gpu_paths(root_path)
    jetson = bool(
        l4t
        or jetpack_major
        or (model and "jetson" in model.lower())
        or (kernel or "").endswith("-tegra")
        or gpu.load
        or gpu.devfreq
    )
    return PlatformInfo(
        jetson=jetson,
        model=model,
        l4t=l4t,
        jetpack=jetpack_for_l4t(l4t),
        jetpack_major=jetpack_major,
        board=release.get("board"),
        kernel=kernel,
    )


def _l4t_from_dpkg() -> str | None:
    binary = shutil.which("dpkg-query")
    if binary is None:
        return None
    try:
        out = run_command(
            [binary, "--showformat=${Version}", "--show", "nvidia-l4t-core"], timeout=2.0
        )
    except CommandError:
        return None
    return parse_l4t_core_version(out)
