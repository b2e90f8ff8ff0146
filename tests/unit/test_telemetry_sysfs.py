"""The Jetson sysfs/procfs reader on fixture trees (reference §3, §10.5)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from management_api.telemetry.jetson_sysfs import (
    JetsonSysfsSource,
    find_gpu_paths,
    read_ina3221,
    read_thermal_zones,
    zone_key,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry"
TREES = FIXTURES / "sysfs"
KIB = 1024


def listing(name: str) -> str:
    return (TREES / f"{name}.txt").read_text()


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def zones_of(reading_or_zones) -> dict[str, float]:
    zones = getattr(reading_or_zones, "thermal_zones", reading_or_zones)
    return {z.name: z.temperature_c for z in zones}


def test_agx_orin_jp6_tree() -> None:
    source = JetsonSysfsSource(TREES / "agx_orin_jp6")
    assert source.available()
    r = source.read()
    assert r.name == "17000000.gpu"
    assert r.utilization_percent == 77.4  # "774" per-mille
    assert r.frequency_mhz == 306.0  # devfreq cur_freq in Hz
    assert zones_of(r) == {"cpu": 53.968, "gpu": 51.312, "soc0": 54.812, "tj": 55.125}
    assert r.temperature_c == 51.312
    assert r.memory_shared is True
    assert r.memory_used_bytes == 12582912 * KIB  # NvMapMemUsed
    assert r.memory_total_bytes == 64349184 * KIB
    assert r.memory_free_bytes == 45998452 * KIB  # MemAvailable
    assert r.power is not None
    rails = {rail.name: rail for rail in r.power.rails}
    # Channel 7 ("sum of shunt voltages") and the NC channels are not rails.
    assert set(rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    gpu_rail = rails["VDD_GPU_SOC"]
    assert (gpu_rail.voltage_mv, gpu_rail.current_ma, gpu_rail.power_mw) == (5025, 480, 2412.0)
    assert rails["VIN_SYS_5V0"].power_mw == pytest.approx(4706.6)
    # No VDD_IN on AGX Orin: the total is the sum, and says so.
    assert r.power.total_source == "sum of rails"
    assert r.power.total_mw == pytest.approx(2412.0 + 1605.0 + 4706.6 + 300.0)
    assert r.power_w == pytest.approx(2.412)


def test_agx_orin_tree_matches_the_recorded_listings() -> None:
    root = TREES / "agx_orin_jp6"
    for line in listing("s1_glances_tegra").splitlines():
        path, value = line.split()
        assert (root / path).read_text() == value + "\n"
    for item in listing("s4_jp6_zone_numbering").split():
        zone, zone_type = item.split("=")
        assert (root / f"sys/class/thermal/thermal_{zone}/type").read_text().strip() == zone_type
    for line in listing("s5_agx_orin_devfreq").splitlines():
        name, value = line.split()
        assert (root / f"sys/class/devfreq/17000000.gpu/{name}").read_text().strip() == value


@pytest.mark.parametrize("offline", ["-256000\n", ""])
def test_agx_orin_gpu_zone_offline_falls_back_to_tj(tmp_path: Path, offline: str) -> None:
    root = tmp_path / "tree"
    shutil.copytree(TREES / "agx_orin_jp6", root)
    (root / "sys/class/thermal/thermal_zone1/temp").write_text(offline)
    r = JetsonSysfsSource(root).read()
    assert "gpu" not in zones_of(r)
    assert r.temperature_c == 55.125


def test_nvme_hwmon_neither_hides_zones_nor_counts_as_a_rail() -> None:
    # psutil.sensors_temperatures() would show only the NVMe sensor on this tree (§8).
    root = TREES / "agx_orin_jp6"
    assert (root / "sys/class/hwmon/hwmon0/name").read_text().strip() == "nvme"
    assert "tj" in zones_of(read_thermal_zones(root))
    power = read_ina3221(root)
    assert power is not None and all("nvme" not in rail.name.lower() for rail in power.rails)


def test_orin_nano_jp6_tree_agrees_with_the_jtop_dump() -> None:
    r = JetsonSysfsSource(TREES / "orin_nano_jp6").read()
    # J1 from the same board: load 4.8 %, GPU clock 306000 kHz, Power TOT 5133 mW (VDD_IN).
    assert r.utilization_percent == 4.8
    assert r.frequency_mhz == 306.0  # devfreq found below the device, not in /sys/class
    assert r.name == "17000000.gpu"
    assert zones_of(r) == {
        "cpu": 46.062,
        "gpu": 46.406,
        "soc0": 45.875,
        "soc1": 47.906,
        "soc2": 45.25,
        "tj": 47.906,
    }  # cv0..cv2 offline: unreadable or -256000
    assert r.temperature_c == 46.406
    assert r.power is not None
    assert r.power.total_source == "VDD_IN"
    assert r.power.total_mw == pytest.approx(5133.44)
    assert r.power_w == pytest.approx(4928 * 216 / 1e6)  # VDD_CPU_GPU_CV
    assert r.memory_used_bytes == 36904 * KIB
    assert r.memory_total_bytes == 3688892 * KIB


def test_x86_tree_has_no_jetson_gpu() -> None:
    root = TREES / "x86_no_gpu"
    source = JetsonSysfsSource(root)
    assert not source.available()
    paths = find_gpu_paths(root)
    assert (paths.load, paths.devfreq) == (None, None)
    assert read_ina3221(root) is None


def test_missing_root_is_unavailable(tmp_path: Path) -> None:
    assert not JetsonSysfsSource(tmp_path / "nothing").available()


def j5_paths() -> list[str]:
    paths = []
    for line in (FIXTURES / "jtop/j5_service_log_paths.txt").read_text().splitlines():
        path = line.split(",", 1)[1] if "," in line else line.rsplit(" in ", 1)[1]
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "load_path",
    [p for p in j5_paths() if p.endswith("/load") and "/debug/" not in p],
)
def test_j5_load_paths_from_jtop_logs(tmp_path: Path, load_path: str) -> None:
    write(tmp_path, load_path, "250\n")
    source = JetsonSysfsSource(tmp_path)
    assert source.available()
    assert source.read().utilization_percent == 25.0


def test_j5_jp5_ga10b_status_and_devfreq_directories(tmp_path: Path) -> None:
    status_dir, freq_dir = [p for p in j5_paths() if "ga10b" in p]
    write(tmp_path, f"{status_dir}/load", "1000\n")
    write(tmp_path, f"{freq_dir}/cur_freq", "1300500000\n")
    r = JetsonSysfsSource(tmp_path).read()
    assert (r.utilization_percent, r.frequency_mhz) == (100.0, 1300.5)
    assert r.name == "17000000.ga10b"


def test_generic_devfreq_lookup_through_the_device_link(tmp_path: Path) -> None:
    # A load file in none of the known places, reachable only as <devfreq>/device/load.
    device = tmp_path / "sys/devices/platform/soc/1a000000.gpu"
    write(device, "load", "333\n")
    write(device, "of_node/name", "ga10b\0")
    devfreq = tmp_path / "sys/class/devfreq/1a000000.gpu"
    write(devfreq, "cur_freq", "612000000\n")
    os.symlink(os.path.relpath(device, devfreq), devfreq / "device")
    r = JetsonSysfsSource(tmp_path).read()
    assert (r.utilization_percent, r.frequency_mhz) == (33.3, 612.0)


def test_thor_devfreq_without_load_file(tmp_path: Path) -> None:
    # Thor's gpu-gpc-0 devfreq has no load file: the clock is known, the load is not.
    write(tmp_path, "sys/class/devfreq/gpu-gpc-0/cur_freq", "1575000000\n")
    source = JetsonSysfsSource(tmp_path)
    assert source.available()
    r = source.read()
    assert (r.utilization_percent, r.frequency_mhz) == (None, 1575.0)


def test_s2_zone_type_names_of_every_release() -> None:
    rows = {}
    for line in listing("s2_zone_types").splitlines():
        release, _, names = line.partition(":")
        rows[release.strip()] = names.split("(", 1)[0].split()
    assert [zone_key(t) for t in rows["JP6 (tegra234)"]] == [
        "cpu", "gpu", "cv0", "cv1", "cv2", "soc0", "soc1", "soc2", "tj"
    ]  # fmt: skip
    assert [zone_key(t) for t in rows["JP5"]] == [
        "cpu", "gpu", "cv0", "soc0", "tboard", "tdiode", "tj"
    ]  # fmt: skip
    assert [zone_key(t) for t in rows["Nano (old)"]] == [
        "ao", "cpu", "gpu", "pll", "pmic", "thermal"
    ]  # fmt: skip


def test_s3_jp5_numbering_is_irrelevant_zones_are_read_by_name(tmp_path: Path) -> None:
    jp5_types = listing("s2_zone_types").splitlines()[1].split(":", 1)[1].split()
    by_key = {zone_key(t): t for t in jp5_types}
    expected = {}
    for number, item in enumerate(listing("s3_jp5_zone_numbering").split()):
        name, zone = item.split("=")
        zone_type = by_key.get(name.lower(), f"{name}-therm")
        write(tmp_path, f"sys/class/thermal/thermal_{zone}/type", zone_type + "\n")
        write(tmp_path, f"sys/class/thermal/thermal_{zone}/temp", f"{40000 + number * 500}\n")
        expected[name.lower()] = 40 + number * 0.5
    assert zones_of(read_thermal_zones(tmp_path)) == expected
    assert expected["tdiode"] == 43.0  # zone10, sorted after zone9 numerically


def test_s6_ina3221_under_i2c_devices(tmp_path: Path) -> None:
    path = listing("s6_ina3221_path").split()[0]  # .../1-0040/hwmon/hwmon3/in7_label
    hwmon = Path(path).parent
    write(tmp_path, f"{hwmon}/name", "ina3221\n")
    write(tmp_path, path, "sum of shunt voltages\n")
    write(tmp_path, f"{hwmon}/in7_input", "52\n")
    write(tmp_path, f"{hwmon}/in1_label", "VDD_GPU_SOC\n")
    write(tmp_path, f"{hwmon}/in1_input", "5000\n")
    write(tmp_path, f"{hwmon}/curr1_input", "400\n")
    power = read_ina3221(tmp_path)
    assert power is not None
    assert [(r.name, r.power_mw) for r in power.rails] == [("VDD_GPU_SOC", 2000.0)]
