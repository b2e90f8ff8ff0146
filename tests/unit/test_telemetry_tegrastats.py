"""tegrastats parser against every recorded line (reference §10.2, T1-T9)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from management_api.telemetry.reading import MIB
from management_api.telemetry.tegrastats import (
    CoreLoad,
    EngineState,
    TegrastatsSource,
    gpu_reading_from_tegrastats,
    parse_tegrastats,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry" / "tegrastats"


def line(name: str, index: int = 0) -> str:
    return (FIXTURES / f"{name}.txt").read_text().splitlines()[index]


def rails(sample) -> dict[str, tuple[float, float | None]]:
    return {r.name: (r.power_mw, r.average_mw) for r in sample.rails}


def test_t1_agx_orin_jp621_root() -> None:
    s = parse_tegrastats(line("t1_agx_orin_jp621_root"))
    assert s.timestamp == "05-09-2026 18:42:06"
    assert (s.ram_used_bytes, s.ram_total_bytes) == (18207 * MIB, 62841 * MIB)
    assert (s.lfb_blocks, s.lfb_block_bytes) == (466, 4 * MIB)
    assert (s.swap_used_bytes, s.swap_total_bytes, s.swap_cached_bytes) == (
        86 * MIB,
        31420 * MIB,
        0,
    )
    assert len(s.cpu_cores) == 12
    assert s.cpu_cores[0] == CoreLoad(14.0, 2188.0)
    assert s.cpu_cores[-1] == CoreLoad(10.0, 1036.0)
    assert (s.emc_percent, s.emc_mhz) == (3.0, 2133.0)
    # GR3D_FREQ 0%@[0,0]: two GPCs, both clock-gated.
    assert (s.gpu_percent, s.gpu_mhz, s.gpu_gpc_mhz) == (0.0, 0.0, (0.0, 0.0))
    assert s.engines["NVENC"] == EngineState(True, 79.0, 166.0)
    assert s.engines["VIC"] == EngineState(True, 36.0, 115.0)
    assert s.engines["NVDEC"] == EngineState(False)
    assert s.engines["PVA0"] == EngineState(False)
    assert s.engines["APE"] == EngineState(True, mhz=174.0)
    assert "EMC_FREQ" not in s.engines and "GR3D_FREQ" not in s.engines
    assert dict(s.temperatures) == {
        "cpu": 52.562,
        "soc2": 48.437,
        "soc0": 49.093,
        "tj": 52.562,
        "soc1": 49.656,
    }
    assert rails(s) == {
        "VDD_GPU_SOC": (2412.0, 2412.0),
        "VDD_CPU_CV": (1607.0, 1607.0),
        "VIN_SYS_5V0": (4707.0, 4707.0),
    }
    gpu = gpu_reading_from_tegrastats(s)
    assert gpu.utilization_percent == 0.0
    assert gpu.frequency_mhz == 0.0
    assert gpu.temperature_c == 52.562  # JP6 prints no gpu@ on AGX Orin: tj stands in
    assert gpu.power_w == pytest.approx(2.412)
    assert gpu.power is not None
    assert (gpu.power.total_mw, gpu.power.total_source) == (8726.0, "sum of rails")
    assert gpu.memory_shared is True
    assert gpu.memory_used_bytes is None  # tegrastats does not show the GPU's share
    assert gpu.memory_total_bytes == 62841 * MIB
    assert gpu.memory_free_bytes == (62841 - 18207) * MIB


def test_t2_agx_orin_jp6_non_root() -> None:
    s = parse_tegrastats(line("t2_agx_orin_jp6_nonroot"))
    assert s.timestamp is None
    assert (s.ram_used_bytes, s.ram_total_bytes) == (13123 * MIB, 62841 * MIB)
    assert (s.emc_percent, s.emc_mhz) == (None, None)
    assert (s.gpu_percent, s.gpu_mhz, s.gpu_gpc_mhz) == (0.0, None, ())
    assert len(s.cpu_cores) == 12 and s.cpu_cores[0] == CoreLoad(3.0, 729.0)
    assert s.temperatures["tj"] == 48.156 and "gpu" not in s.temperatures
    assert rails(s)["VDD_GPU_SOC"] == (3193.0, 3193.0)
    gpu = gpu_reading_from_tegrastats(s)
    assert (gpu.utilization_percent, gpu.frequency_mhz) == (0.0, None)
    assert gpu.temperature_c == 48.156
    assert gpu.power_w == pytest.approx(3.193)


def test_t3_agx_orin_jp5_offline_sensors_and_second_monitor() -> None:
    s = parse_tegrastats(line("t3_agx_orin_jp5_root"))
    assert s.timestamp == "04-11-2025 10:36:27"
    assert (s.gpu_percent, s.gpu_mhz) == (0.0, 0.0)
    assert set(s.offline_sensors) == {"CV0", "CV1", "GPU", "CV2"}
    assert dict(s.temperatures) == {
        "CPU": 44.562,
        "Tboard": 32.0,
        "SOC2": 40.093,
        "Tdiode": 33.0,
        "SOC0": 41.093,
        "tj": 44.343,
        "SOC1": 41.25,
    }
    assert s.engines["VIC"] == EngineState(True, mhz=729.0)  # VIC_FREQ 729
    # The two NC channels of the second INA3221 are not rails.
    assert rails(s) == {
        "VDD_GPU_SOC": (2340.0, 2340.0),
        "VDD_CPU_CV": (390.0, 390.0),
        "VIN_SYS_5V0": (4025.0, 4025.0),
        "VDDQ_VDD2_1V8AO": (301.0, 301.0),
    }
    gpu = gpu_reading_from_tegrastats(s)
    assert gpu.temperature_c == 44.343  # GPU@-256C is offline; tj is the fallback
    assert gpu.power is not None and gpu.power.total_mw == 2340 + 390 + 4025 + 301
    assert {z.name for z in gpu.thermal_zones} == {
        "cpu", "tboard", "soc2", "tdiode", "soc0", "tj", "soc1"
    }  # fmt: skip


def test_t4_orin_nano_single_gpc_array_busy_gpu() -> None:
    s = parse_tegrastats(line("t4_orin_nano_jp6_root"))
    assert (s.ram_used_bytes, s.ram_total_bytes) == (6185 * MIB, 7620 * MIB)
    assert (s.lfb_blocks, s.lfb_block_bytes) == (8, 2 * MIB)
    assert (s.swap_used_bytes, s.swap_total_bytes, s.swap_cached_bytes) == (
        851 * MIB,
        3810 * MIB,
        1 * MIB,
    )
    assert len(s.cpu_cores) == 6
    assert (s.emc_percent, s.emc_mhz) == (43.0, 2133.0)
    assert (s.gpu_percent, s.gpu_mhz, s.gpu_gpc_mhz) == (63.0, 621.0, (621.0,))
    assert s.temperatures["gpu"] == 53.343
    gpu = gpu_reading_from_tegrastats(s)
    assert (gpu.utilization_percent, gpu.frequency_mhz, gpu.temperature_c) == (63.0, 621.0, 53.343)
    assert gpu.power_w == pytest.approx(4.667)  # VDD_CPU_GPU_CV
    assert gpu.power is not None
    assert (gpu.power.total_mw, gpu.power.total_source) == (12479.0, "VDD_IN")


def test_t5_orin_nano_non_root() -> None:
    s = parse_tegrastats(line("t5_orin_nano_jp6_nonroot"))
    assert s.timestamp == "06-18-2025 11:25:24"
    assert (s.gpu_percent, s.gpu_mhz) == (0.0, None)
    assert (s.swap_used_bytes, s.swap_cached_bytes) == (1518 * MIB, 174 * MIB)
    assert s.cpu_cores[0] == CoreLoad(1.0, 1420.0) and s.cpu_cores[-1] == CoreLoad(1.0, 729.0)
    assert s.temperatures["soc0"] == 50.0
    gpu = gpu_reading_from_tegrastats(s)
    assert gpu.temperature_c == 49.031
    assert gpu.power_w == pytest.approx(0.518)
    assert gpu.power is not None and gpu.power.total_mw == 4824.0


def test_t6_tx2_old_power_format_without_units() -> None:
    s = parse_tegrastats(line("t6_tx2_jp4"))
    assert (s.gpu_percent, s.gpu_mhz) == (0.0, 114.0)  # GR3D_FREQ 0%@114
    assert (s.emc_percent, s.emc_mhz) == (1.0, 1866.0)
    assert s.cpu_cores[1] == CoreLoad(49.0, 2031.0)
    assert "MTS" not in s.engines and s.engines["APE"] == EngineState(True, mhz=150.0)
    assert s.temperatures["GPU"] == 39.5 and s.temperatures["thermal"] == 41.3
    assert rails(s) == {
        "VDD_SYS_GPU": (182.0, 182.0),
        "VDD_SYS_SOC": (730.0, 730.0),
        "VDD_4V0_WIFI": (0.0, 0.0),
        "VDD_IN": (5297.0, 5297.0),
        "VDD_SYS_CPU": (1917.0, 1917.0),
        "VDD_SYS_DDR": (1241.0, 1241.0),
    }
    gpu = gpu_reading_from_tegrastats(s)
    assert (gpu.temperature_c, gpu.power_w) == (39.5, pytest.approx(0.182))
    assert gpu.power is not None
    assert (gpu.power.total_mw, gpu.power.total_source) == (5297.0, "VDD_IN")


def test_t7_cores_off_and_no_frequencies() -> None:
    s = parse_tegrastats(line("t7_tx2_nano_jp4_cores_off"))
    assert s.cpu_cores == (
        CoreLoad(3.0, 345.0),
        CoreLoad(None, None),
        CoreLoad(None, None),
        CoreLoad(0.0, 345.0),
        CoreLoad(1.0, 345.0),
        CoreLoad(1.0, 345.0),
    )
    assert (s.emc_percent, s.emc_mhz, s.gpu_percent, s.gpu_mhz) == (0.0, None, 0.0, None)
    assert s.rails == ()
    gpu = gpu_reading_from_tegrastats(s)
    assert (gpu.temperature_c, gpu.power_w, gpu.power) == (50.0, None, None)


def test_t8_jetpack7_arrays_double_temperatures_triple_power() -> None:
    s = parse_tegrastats(line("t8_agx_orin_jp72_root"))
    assert (s.ram_used_bytes, s.lfb_blocks, s.lfb_block_bytes) == (20642 * MIB, 1, 2 * MIB)
    assert s.swap_total_bytes is None  # no SWAP field on this line
    assert (s.gpu_percent, s.gpu_mhz, s.gpu_gpc_mhz) == (12.0, 1300.0, (1300.0, 1300.0))
    assert (s.emc_percent, s.emc_mhz) == (3.0, 3199.0)
    assert s.engines["NVENC0"] == EngineState(False)
    assert dict(s.temperatures) == {"cpu": 52.968, "soc2": 48.406, "soc0": 49.531, "gpu": 47.625}
    assert rails(s)["VDD_GPU_SOC"] == (5139.0, 5139.0)
    gpu = gpu_reading_from_tegrastats(s)
    assert (gpu.utilization_percent, gpu.frequency_mhz, gpu.temperature_c) == (12.0, 1300.0, 47.625)
    assert gpu.power is not None and gpu.power.total_mw == 5139 + 3268 + 5500


def test_t9_emulator_xavier_and_nano_filled() -> None:
    xavier = parse_tegrastats(line("t9_emulator_filled", 0))
    assert (xavier.gpu_percent, xavier.gpu_mhz) == (37.0, 1377.0)
    assert len(xavier.cpu_cores) == 8
    assert xavier.temperatures["iwlwifi"] == 30.0 and xavier.temperatures["PMIC"] == 100.0
    gpu = gpu_reading_from_tegrastats(xavier)
    assert (gpu.temperature_c, gpu.power_w) == (28.0, pytest.approx(1.155))  # rail "GPU"
    assert gpu.power is not None
    assert (gpu.power.total_mw, gpu.power.total_source) == (6926.0, "sum of rails")

    nano = parse_tegrastats(line("t9_emulator_filled", 1))
    assert (nano.iram_used_bytes, nano.iram_total_bytes) == (0, 252 * 1024)
    assert (nano.gpu_percent, nano.gpu_mhz) == (15.0, 76.0)
    assert rails(nano)["POM_5V_CPU"] == (84.0, 105.0)
    gpu = gpu_reading_from_tegrastats(nano)
    assert (gpu.temperature_c, gpu.power_w) == (22.5, 0.0)
    assert gpu.power is not None
    assert (gpu.power.total_mw, gpu.power.total_source) == (933.0, "POM_5V_IN")


def test_t9_abridged_placeholders_do_not_break_the_parser() -> None:
    xavier = parse_tegrastats(line("t9_emulator_abridged", 0))
    assert xavier.ram_total_bytes == 15823 * MIB
    assert xavier.gpu_percent is None  # "N%" is a placeholder, not a number
    assert xavier.temperatures["GPU"] == 28.0
    nano = parse_tegrastats(line("t9_emulator_abridged", 1))
    assert nano.ram_total_bytes is None and nano.iram_total_bytes == 252 * 1024
    assert rails(nano)["POM_5V_IN"] == (933.0, 933.0)


def test_thor_array_without_percentage() -> None:
    # §5.1: Thor prints GR3D_FREQ @[1000,1000,1000] (no load figure).
    s = parse_tegrastats("RAM 1000/2000MB (lfb 1x4MB) GR3D_FREQ @[1000,1000,1000] cpu@40C")
    assert (s.gpu_percent, s.gpu_mhz, s.gpu_gpc_mhz) == (None, 1000.0, (1000.0,) * 3)


def write_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_source_reads_one_line_then_stops_the_tool(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    binary = write_script(
        tmp_path / "tegrastats",
        f"echo $$ > {pid_file}\nwhile true; do cat {FIXTURES / 't4_orin_nano_jp6_root.txt'}; "
        "sleep 0.05; done\n",
    )
    source = TegrastatsSource(binary, timeout=5.0)
    assert source.available()
    reading = source.read()
    assert (reading.utilization_percent, reading.frequency_mhz) == (63.0, 621.0)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid), "tegrastats kept running after its line was read"


def test_source_bounded_when_the_tool_prints_nothing(tmp_path: Path) -> None:
    binary = write_script(tmp_path / "tegrastats", "sleep 30\n")
    source = TegrastatsSource(binary, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RuntimeError):
        source.read()
    assert time.monotonic() - started < 5


def test_source_absent_binary_is_unavailable(tmp_path: Path) -> None:
    assert not TegrastatsSource(str(tmp_path / "missing")).available()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_source_fails_when_the_tool_exits_silently(tmp_path: Path) -> None:
    binary = write_script(tmp_path / "tegrastats", "echo 'tegrastats: not root' >&2\nexit 1\n")
    with pytest.raises(RuntimeError, match="without printing a line"):
        TegrastatsSource(binary, timeout=5.0).read()
