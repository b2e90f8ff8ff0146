"""nvidia-smi: the recorded outputs (reference §10.3, N1-N9) and the bounded subprocess."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from management_api.telemetry.nvidia_smi import (
    QUERY_FIELDS,
    NvidiaSmiSource,
    gpu_reading_from_rows,
    parse_gpu_list,
    parse_query_gpu,
    parse_value,
)
from management_api.telemetry.reading import MIB

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry" / "nvidia_smi"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def test_n1_table_mode_unknowns_and_no_csv_rows() -> None:
    table = fixture("n1_table_orin_jp6")
    assert parse_query_gpu(table) == []
    # The table's cells: both spellings are "unknown", never zero.
    assert "Not Supported" in table and "N/A" in table
    assert parse_value("memory.used", "Not Supported") is None
    assert parse_value("utilization.gpu", "N/A") is None


def test_n2_gpu_list_and_n3_header_line() -> None:
    assert parse_gpu_list(fixture("n2_list_orin")) == ["Orin (nvgpu)"]
    assert parse_query_gpu(fixture("n3_header_jp6dp")) == []


def test_n4_query_on_jetson_is_all_unknown() -> None:
    first, second = fixture("n4_query_orin").splitlines()
    fields = ("name", "utilization.gpu", "memory.used", "memory.total", "temperature.gpu")
    rows = parse_query_gpu(first, ("index", *fields)) + parse_query_gpu(second, fields)
    assert rows[0] == {
        "index": 0,
        "name": "Orin (nvgpu)",
        "utilization.gpu": None,
        "memory.used": None,
        "memory.total": None,
        "temperature.gpu": None,
    }
    assert rows[1] == {k: v for k, v in rows[0].items() if k != "index"}
    reading = gpu_reading_from_rows(rows[:1])
    assert reading.name == "Orin (nvgpu)"
    assert reading.memory_shared is True  # Tegra, detected by name
    assert (reading.utilization_percent, reading.memory_used_bytes, reading.temperature_c) == (
        None,
        None,
        None,
    )


def test_n5_r39_line_with_ten_fields() -> None:
    fields = (
        "name",
        "utilization.gpu",
        "memory.used",
        "memory.total",
        "memory.free",
        "temperature.gpu",
        "power.draw",
        "clocks.sm",
        "clocks.mem",
        "utilization.memory",
    )
    (row,) = parse_query_gpu(fixture("n5_query_r39_orin"), fields)
    assert row["name"] == "Orin (nvgpu)"
    assert [row[f] for f in fields[1:]] == [None] * 9


def test_n6_driver_version_kept_as_text_and_elision_unknown() -> None:
    fields = ("index", "name", "memory.used", "memory.total", "driver_version")
    (row,) = parse_query_gpu(fixture("n6_query_driver_version"), fields)
    assert row == {
        "index": 0,
        "name": "Orin (nvgpu)",
        "memory.used": None,
        "memory.total": None,  # the "..." of the recording
        "driver_version": "540.5.0",
    }


def test_n7_gb10_header_with_units() -> None:
    (row,) = parse_query_gpu(fixture("n7_gb10"), fields=())
    assert row == {
        "name": "NVIDIA GB10",
        "temperature.gpu": 51.0,
        "power.draw": 12.98,
        "memory.used": None,
        "memory.total": None,
        "utilization.gpu": 5.0,
        "utilization.memory": 0.0,
    }
    reading = gpu_reading_from_rows([row])
    assert (reading.temperature_c, reading.power_w, reading.utilization_percent) == (
        51.0,
        12.98,
        5.0,
    )
    assert (reading.memory_total_bytes, reading.memory_shared) == (None, False)


def test_n8_two_discrete_gpus_aggregate() -> None:
    rows = parse_query_gpu(fixture("n8_discrete_two_gpus"), fields=())
    assert rows == [
        {"index": 0, "memory.used": 103.0, "memory.total": 16303.0},
        {"index": 1, "memory.used": 8311.0, "memory.total": 16303.0},
    ]
    reading = gpu_reading_from_rows(rows)
    assert reading.device_count == 2
    assert reading.memory_used_bytes == (103 + 8311) * MIB
    assert reading.memory_total_bytes == 2 * 16303 * MIB
    assert reading.memory_free_bytes == (2 * 16303 - 103 - 8311) * MIB


def test_n8_values_with_units() -> None:
    fields = ("index", "name", "utilization.gpu", "memory.used", "memory.total", "temperature.gpu")
    (row,) = parse_query_gpu(fixture("n8_discrete_t4"), fields)
    assert row == {
        "index": 0,
        "name": "Tesla T4",
        "utilization.gpu": 98.0,
        "memory.used": 7234.0,
        "memory.total": 15360.0,
        "temperature.gpu": 72.0,
    }
    reading = gpu_reading_from_rows([row])
    assert (reading.utilization_percent, reading.temperature_c) == (98.0, 72.0)
    assert (reading.memory_used_bytes, reading.memory_free_bytes) == (
        7234 * MIB,
        (15360 - 7234) * MIB,
    )


def test_n8_nounits_keeps_brackets() -> None:
    # The recording does not name its columns; this order is our assumption.
    fields = (
        "clocks.sm",
        "clocks.max.sm",
        "utilization.gpu",
        "temperature.gpu",
        "power.draw",
        "memory.used",
        "utilization.memory",
    )
    (row,) = parse_query_gpu(fixture("n8_discrete_nounits"), fields)
    assert row["clocks.sm"] == 2004.0 and row["temperature.gpu"] == 44.0
    assert row["power.draw"] is None
    reading = gpu_reading_from_rows([row])
    assert (reading.frequency_mhz, reading.power_w, reading.utilization_percent) == (
        2004.0,
        None,
        0.0,
    )


def test_old_driver_not_supported_spelling() -> None:
    (row,) = parse_query_gpu("0, Quadro K620, [Not Supported], 42, 1.5 W", (
        "index", "name", "utilization.gpu", "temperature.gpu", "power.draw"
    ))  # fmt: skip
    assert (row["utilization.gpu"], row["temperature.gpu"], row["power.draw"]) == (None, 42.0, 1.5)


def fake_tool(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_source_queries_our_fields(tmp_path: Path) -> None:
    args_file = tmp_path / "args"
    binary = fake_tool(
        tmp_path,
        f'echo "$@" > {args_file}\n'
        'echo "0, NVIDIA H100 80GB HBM3, 37, 40960, 81559, 40599, 45, 312.5, 1980"\n'
        'echo "1, NVIDIA H100 80GB HBM3, 3, 1024, 81559, 80535, 33, 70.25, 345"\n',
    )
    source = NvidiaSmiSource(binary, timeout=5.0)
    assert source.available()
    reading = source.read()
    assert args_file.read_text().split() == [
        "--query-gpu=" + ",".join(QUERY_FIELDS),
        "--format=csv,noheader,nounits",
    ]
    assert reading.device_count == 2
    assert reading.utilization_percent == 20.0
    assert reading.memory_used_bytes == (40960 + 1024) * MIB
    assert reading.memory_free_bytes == (40599 + 80535) * MIB
    assert (reading.temperature_c, reading.power_w, reading.frequency_mhz) == (45.0, 382.75, 1980.0)
    assert reading.memory_shared is False


def test_n9_command_not_found_is_unavailable(tmp_path: Path) -> None:
    message = fixture("n9_jp5").strip()
    binary = fake_tool(tmp_path, f'echo "{message}" >&2\nexit 127\n')
    assert not NvidiaSmiSource(binary).available()
    assert not NvidiaSmiSource(str(tmp_path / "absent-nvidia-smi")).available()


def test_hanging_tool_is_bounded(tmp_path: Path) -> None:
    binary = fake_tool(tmp_path, "sleep 30\n")
    source = NvidiaSmiSource(binary, timeout=0.3)
    started = time.monotonic()
    assert not source.available()
    with pytest.raises(RuntimeError, match="timed out"):
        source.read()
    assert time.monotonic() - started < 5
