"""jtop: the recorded dumps (reference §10.1, J1-J6 and E3) and the optional-source behaviour."""

from __future__ import annotations

import ast
import datetime
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jtop import JtopException

from management_api.telemetry.jtop_source import (
    JtopSource,
    _default_client,
    reading_from_jtop,
    reading_from_jtop_stats,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry" / "jtop"
KIB = 1024


def j1() -> dict[str, Any]:
    """The J1 dump's ``# jetson.<name>`` sections as Python values."""
    sections: dict[str, Any] = {}
    text = (FIXTURES / "j1_orin_nano_jp62.txt").read_text()
    for block in text.split("# jetson.")[1:]:
        name, _, body = block.partition("\n")
        if name.strip() == "stats":  # holds datetime(...) / timedelta(...) calls
            sections["stats"] = eval(body, {"__builtins__": {}, "datetime": datetime})
        else:
            sections[name.strip()] = ast.literal_eval(body.strip())
    return sections


def j4_stats() -> dict[str, Any]:
    """J4 as quoted in the issue: ``KEY, VALUE / KEY, VALUE``, with ``...`` eliding CPUs."""
    stats: dict[str, Any] = {}
    text = (FIXTURES / "j4_stats_xavier_2020.txt").read_text().strip()
    for item in text.replace(" ... ", " / ").split(" / "):
        key, _, value = item.partition(", ")
        try:
            stats[key] = float(value)
        except ValueError:
            stats[key] = value
    return stats


def test_j1_full_dump_orin_nano() -> None:
    dump = j1()
    r = reading_from_jtop(dump["gpu"], dump["memory"], dump["power"], dump["temperature"])
    assert r.name == "gpu"
    assert r.utilization_percent == 4.8
    assert r.frequency_mhz == 306.0  # cur 306000 kHz
    assert r.memory_shared is True
    assert r.memory_total_bytes == 3688892 * KIB
    assert r.memory_used_bytes == 36904 * KIB  # 'shared' = NvMapMemUsed
    assert r.memory_free_bytes == (3688892 - 1687344) * KIB
    assert r.temperature_c == 46.406
    assert {z.name: z.temperature_c for z in r.thermal_zones} == {
        "cpu": 46.062,
        "gpu": 46.406,
        "soc0": 45.875,
        "soc1": 47.906,
        "soc2": 45.25,
        "tj": 47.906,
    }  # cv0-cv2 are offline (-256)
    assert r.power_w == pytest.approx(1.064)  # VDD_CPU_GPU_CV
    assert r.power is not None
    assert (r.power.total_mw, r.power.total_source) == (5133.0, "VDD_IN")
    rail = {x.name: x for x in r.power.rails}["VDD_CPU_GPU_CV"]
    assert (rail.power_mw, rail.voltage_mv, rail.current_ma, rail.average_mw) == (
        1064.0,
        4928.0,
        216.0,
        806.0,
    )


def test_j1_flat_stats_fallback() -> None:
    r = reading_from_jtop_stats(j1()["stats"])
    assert r.utilization_percent == 4.8
    assert r.temperature_c == 46.406
    assert "cv0" not in {z.name for z in r.thermal_zones}
    assert r.power_w == pytest.approx(1.064)
    assert r.power is not None and r.power.total_mw == 5133.0


def test_j1_board_identifies_jetpack() -> None:
    hardware = j1()["board"]["hardware"]
    # The platform module maps L4T to JetPack the same way jtop did for this board.
    from management_api.telemetry.platform import jetpack_for_l4t

    assert jetpack_for_l4t(hardware["L4T"]) == hardware["Jetpack"] == "6.2"


def test_j3_gpu_only() -> None:
    gpu = ast.literal_eval("{" + (FIXTURES / "j3_gpu_ros_wrapper.txt").read_text().strip() + "}")
    r = reading_from_jtop(gpu, {}, {}, {})
    assert (r.utilization_percent, r.frequency_mhz, r.memory_shared) == (0.0, 306.0, True)
    assert (r.memory_total_bytes, r.temperature_c, r.power) == (None, None, None)


def test_j4_old_stats_format() -> None:
    stats = j4_stats()
    assert stats["RAM"] == 1745160.0  # kB in 2.x: not a fraction, and not used by us
    r = reading_from_jtop_stats(stats)
    assert r.utilization_percent == 0.0
    assert r.temperature_c == 46.0
    assert {z.name: z.temperature_c for z in r.thermal_zones} == {
        "ao": 44.5,
        "cpu": 46.0,
        "gpu": 46.0,
        "thermal": 45.4,
    }
    assert r.power is not None and r.power.total_mw == 4859.0


class FakeJtop:
    """Stands in for `jtop.jtop`: same members, data from the J1 dump."""

    def __init__(self, start_error: Exception | None = None) -> None:
        self.start_error = start_error
        self.ok_error: Exception | None = None
        self.closed = False
        dump = j1()
        self.gpu, self.memory = dump["gpu"], dump["memory"]
        self.power, self.temperature, self.stats = dump["power"], dump["temperature"], dump["stats"]

    def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    def ok(self, spin: bool = False) -> bool:
        assert spin, "the sampler must never block on jtop"
        if self.ok_error is not None:
            raise self.ok_error
        return True

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def jtop_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # AF_UNIX paths are limited to ~107 bytes; keep it short.
    path = tmp_path_factory.mktemp("jt") / "jtop.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    yield str(path)
    server.close()


def test_no_socket_means_unavailable_without_touching_jtop(tmp_path: Path) -> None:
    calls: list[float] = []

    def factory(interval: float) -> FakeJtop:
        calls.append(interval)
        return FakeJtop()

    assert not JtopSource(str(tmp_path / "jtop.sock"), client_factory=factory).available()
    # A bind mount of a missing socket leaves a directory behind.
    (tmp_path / "dir.sock").mkdir()
    assert not JtopSource(str(tmp_path / "dir.sock"), client_factory=factory).available()
    assert calls == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jtop's own use of distro
def test_real_client_without_service_is_unavailable(jtop_socket: str) -> None:
    # The installed jtop client against a socket nobody serves: its exception means unavailable.
    clients: list[Any] = []

    def real_client(interval: float) -> Any:
        clients.append(_default_client(interval))
        return clients[-1]

    source = JtopSource(jtop_socket, client_factory=real_client)
    try:
        assert not source.available()
        with pytest.raises(RuntimeError):
            source.read()
    finally:
        # jtop's constructor probes nvcc/dpkg in a background thread; let it finish so its
        # forks cannot overlap other tests' exec of freshly written fake tools (ETXTBSY).
        for client in clients:
            client._thread_libraries.join(10)


def e3_messages() -> list[str]:
    lines = (FIXTURES / "e3_start_exceptions.txt").read_text().splitlines()
    mismatch = (FIXTURES / "j6_version_mismatch.txt").read_text().strip()
    return [m.replace("\\n", "\n") for m in lines if m] + [mismatch]


@pytest.mark.parametrize("message", e3_messages())
def test_start_exceptions_mean_unavailable_logged_once(
    jtop_socket: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = JtopSource(jtop_socket, client_factory=lambda _: FakeJtop(JtopException(message)))
    with caplog.at_level(logging.DEBUG, logger="management_api.telemetry.jtop_source"):
        assert not source.available()
        assert not source.available()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert message.splitlines()[0] in warnings[0].getMessage()


def test_reads_through_the_client_and_recovers_after_a_lost_connection(jtop_socket: str) -> None:
    clients: list[FakeJtop] = []

    def factory(interval: float) -> FakeJtop:
        assert interval == 5.0
        clients.append(FakeJtop())
        return clients[-1]

    source = JtopSource(jtop_socket, interval=5.0, client_factory=factory)
    assert source.available()
    assert source.read().utilization_percent == 4.8

    clients[0].ok_error = JtopException("Lost connection with jtop server")
    with pytest.raises(JtopException):
        source.read()
    assert clients[0].closed

    assert source.available()  # a fresh client
    assert len(clients) == 2 and source.read().temperature_c == 46.406


def test_falls_back_to_flat_stats_when_gpu_is_empty(jtop_socket: str) -> None:
    client = FakeJtop()
    client.gpu = {}
    source = JtopSource(jtop_socket, client_factory=lambda _: client)
    assert source.available()
    reading = source.read()
    assert (reading.utilization_percent, reading.temperature_c) == (4.8, 46.406)
