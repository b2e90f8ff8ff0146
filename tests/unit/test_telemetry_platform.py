"""Platform detection: release files, L4T -> JetPack, model strings (reference §2, §10.4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from management_api.telemetry.platform import (
    jetpack_for_l4t,
    parse_l4t_core_version,
    parse_nv_tegra_release,
    read_model,
    read_platform,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry"
PLATFORM = FIXTURES / "platform"
TREES = FIXTURES / "sysfs"


def fixture(name: str) -> str:
    return (PLATFORM / f"{name}.txt").read_text()


def test_r1_release_file_jp62() -> None:
    fields = parse_nv_tegra_release(fixture("r1_nv_tegra_release_jp62"))
    assert fields["l4t"] == "36.4.3"
    assert (fields["release"], fields["revision"], fields["board"]) == ("36", "4.3", "generic")
    assert fields["gcid"] == "38968081" and fields["eabi"] == "aarch64"
    assert fields["date"] == "Wed Jan  8 01:49:37 UTC 2025"
    assert jetpack_for_l4t(fields["l4t"]) == "6.2"


@pytest.mark.parametrize(
    ("index", "l4t", "board", "jetpack"),
    [(0, "36.4.7", "generic", "6.2.1"), (1, "36.4.4", "t186ref", "6.2.1")],
)
def test_r2_other_first_lines(index: int, l4t: str, board: str, jetpack: str) -> None:
    fields = parse_nv_tegra_release(fixture("r2_first_lines").splitlines()[index])
    assert (fields["l4t"], fields["board"]) == (l4t, board)
    assert jetpack_for_l4t(fields["l4t"]) == jetpack


def test_not_a_release_file() -> None:
    assert parse_nv_tegra_release("") == {}
    assert parse_nv_tegra_release("TARGET_USERSPACE_LIB_DIR=nvidia\n") == {}


def test_r3_dpkg_version_of_l4t_core() -> None:
    assert parse_l4t_core_version(fixture("r3_dpkg_l4t_core")) == "36.4.4"


@pytest.mark.parametrize(
    ("l4t", "jetpack"),
    [
        ("36.0.0", "6.0 EA"),
        ("36.2.0", "6.0 DP"),
        ("36.3", "6.0"),
        ("36.4.0", "6.1"),
        ("36.4.2", "6.1 (rev1)"),
        ("36.4.3", "6.2"),
        ("36.4.4", "6.2.1"),
        ("36.4.7", "6.2.1"),
        ("36.5.0", "6.2.2"),
        ("35.1.0", "5.0.2 GA"),
        ("35.6.4", "5.1.6"),
        ("38.2.1", "7.0"),
        ("38.4.0", "7.1"),
        ("39.0.0", "7.2 EA"),
        ("39.2.0", "7.2 GA"),
        ("36.9.9", None),
    ],
)
def test_l4t_to_jetpack_table(l4t: str, jetpack: str | None) -> None:
    assert jetpack_for_l4t(l4t) == jetpack


@pytest.mark.parametrize("kernel", fixture("r4_kernel_release").split())
def test_r4_tegra_kernel_alone_marks_a_jetson(tmp_path: Path, kernel: str) -> None:
    info = read_platform(tmp_path, environ={}, kernel=kernel, query_dpkg=False)
    assert info.jetson and info.kernel == kernel
    assert (info.l4t, info.jetpack, info.model) == (None, None, None)


def test_d1_device_tree_model_is_nul_terminated(tmp_path: Path) -> None:
    values = {}
    for line in fixture("d1_device_tree").splitlines():
        path, _, value = line.partition(":")
        values[path.strip()] = value.strip().replace("\\x00", "\0")
    model_file = tmp_path / "proc/device-tree/model"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(values["/proc/device-tree/model"].encode())
    assert read_model(tmp_path) == "NVIDIA Jetson AGX Orin Developer Kit"


def test_d2_masked_device_tree_still_detects_from_release_file(tmp_path: Path) -> None:
    masked = fixture("d2_docker_masked_paths").split()
    assert "/sys/firmware" in masked  # so sys/firmware/devicetree is unreadable in a container
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(fixture("r1_nv_tegra_release_jp62"))
    (tmp_path / "proc/device-tree").mkdir(parents=True)  # present but empty, as reported
    info = read_platform(tmp_path, environ={}, kernel="5.15.148-tegra", query_dpkg=False)
    assert info.jetson and info.model is None
    assert (info.l4t, info.jetpack, info.jetpack_major) == ("36.4.3", "6.2", 6)


def test_jetson_jetpack_environment_variable(tmp_path: Path) -> None:
    info = read_platform(tmp_path, environ={"JETSON_JETPACK": "6"}, kernel="x", query_dpkg=False)
    assert info.jetson and info.jetpack_major == 6 and info.jetpack is None


def test_agx_orin_tree() -> None:
    info = read_platform(TREES / "agx_orin_jp6", environ={}, kernel=None, query_dpkg=False)
    assert info.jetson
    assert info.model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert (info.l4t, info.jetpack, info.jetpack_major, info.board) == (
        "36.4.7",
        "6.2.1",
        6,
        "generic",
    )


def test_orin_nano_tree_model_from_jetson_containers_file() -> None:
    info = read_platform(TREES / "orin_nano_jp6", environ={}, kernel=None, query_dpkg=False)
    assert info.model == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert (info.l4t, info.jetpack) == ("36.4.3", "6.2")


def test_x86_tree_is_not_a_jetson() -> None:
    info = read_platform(
        TREES / "x86_no_gpu", environ={}, kernel="6.8.0-45-generic", query_dpkg=False
    )
    assert not info.jetson
    assert (info.model, info.l4t, info.jetpack, info.jetpack_major) == (None, None, None, None)


def test_this_machine_does_not_crash() -> None:
    info = read_platform()
    assert isinstance(info.jetson, bool) and info.kernel
