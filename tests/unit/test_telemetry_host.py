"""psutil host source: CPU baseline handling, memory, disk, the Ollama process tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from management_api.telemetry.host import HostSource, read_disk, read_memory
from management_api.telemetry.reading import CpuReading


def in_new_thread(call: Callable[[], CpuReading]) -> CpuReading:
    result: list[CpuReading] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    thread.join(10)
    return result[0]


def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_first_cpu_reading_of_a_thread_is_not_published() -> None:
    source = HostSource()

    def first_then_second() -> CpuReading:
        first = source.read_cpu()
        assert first.percent is None and first.per_core_percent is None
        time.sleep(0.15)
        return source.read_cpu()

    second = in_new_thread(first_then_second)
    assert second.percent is not None and 0.0 <= second.percent <= 100.0
    assert second.count == psutil.cpu_count()
    assert second.per_core_percent is not None and len(second.per_core_percent) == second.count
    assert second.load_average is not None and len(second.load_average) == 3


def test_prime_in_the_sampler_thread_makes_the_next_read_real() -> None:
    source = HostSource()

    def primed() -> CpuReading:
        source.prime()
        time.sleep(0.12)
        return source.read_cpu()

    assert in_new_thread(primed).percent is not None
    # Priming belongs to the thread: another thread starts unprimed.
    assert in_new_thread(source.read_cpu).percent is None


def test_memory_used_is_total_minus_available() -> None:
    memory = read_memory()
    assert memory.total_bytes and memory.available_bytes is not None
    assert memory.used_bytes == memory.total_bytes - memory.available_bytes
    assert memory.unified is False


def test_disk_of_a_models_dir_not_created_yet(tmp_path: Path) -> None:
    models = tmp_path / "ollama" / "models"
    disk = read_disk(models)
    expected = psutil.disk_usage(str(tmp_path))
    assert disk.path == str(models)
    assert disk.total_bytes == expected.total
    assert disk.free_bytes is not None and disk.free_bytes > 0


def test_read_without_ollama(tmp_path: Path) -> None:
    reading = HostSource(tmp_path, ollama_name="no-such-process-name").read()
    assert reading.ollama is None
    assert reading.own_rss_bytes is not None and reading.own_rss_bytes > 1024 * 1024
    assert reading.disk is not None and reading.disk.path == str(tmp_path)
    assert reading.swap.total_bytes is not None


def unique_name(stem: str) -> str:
    """A process name of this test run's own: any process on the machine named the same (a
    real Ollama, another run of this suite, another xdist worker) would be found instead.
    At most 15 characters, what Linux keeps of a process name."""
    name = f"{stem}{os.getpid()}"
    assert len(name) <= 15, name
    return name


OLLAMA_NAME = unique_name("ollama-")


@pytest.fixture
def fake_ollama(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A process tree named like Ollama's: a server with a runner child (same binary)."""
    binary = tmp_path / OLLAMA_NAME
    shutil.copy(shutil.which("sh") or "/bin/sh", binary)
    # "; true" keeps the shells from exec-ing into sleep, so both keep the binary's name.
    script = f"{binary} -c 'sleep 30; true' & sleep 30; true"
    proc = subprocess.Popen([str(binary), "-c", script], start_new_session=True)
    try:
        wait_for(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 3)
        yield proc
    finally:
        # Only the group this fixture created (start_new_session: pgid == pid).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def test_ollama_found_by_name_is_the_server_and_sums_its_runners(
    fake_ollama: subprocess.Popen,
) -> None:
    source = HostSource(ollama_name=OLLAMA_NAME)
    first = source.read_ollama()
    assert first is not None
    assert first.pid == fake_ollama.pid  # the root, not the runner named the same
    assert first.process_count == 4  # server, runner, and their two sleeps
    tree = [psutil.Process(fake_ollama.pid), *psutil.Process(fake_ollama.pid).children(True)]
    assert first.rss_bytes is not None and first.rss_bytes >= max(p.memory_info().rss for p in tree)
    assert first.cpu_percent is None  # first measurement of a process is only a baseline
    time.sleep(0.05)
    second = source.read_ollama()
    assert second is not None and second.cpu_percent is not None and second.cpu_percent >= 0.0


def test_ollama_by_pid_and_gone() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        source = HostSource(ollama_pid=proc.pid)
        reading = source.read_ollama()
        assert reading is not None and reading.pid == proc.pid and reading.process_count == 1
    finally:
        proc.kill()
        proc.wait(5)
    assert source.read_ollama() is None


def test_search_by_name_is_rate_limited_while_absent(tmp_path: Path) -> None:
    now = [100.0]
    late = unique_name("late-")
    binary = tmp_path / late
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    source = HostSource(ollama_name=late, rescan_seconds=30.0, clock=lambda: now[0])
    assert source.read_ollama() is None
    proc = subprocess.Popen([str(binary), "30"])
    try:
        wait_for(lambda: psutil.Process(proc.pid).name() == late)
        now[0] += 10
        assert source.read_ollama() is None  # not searched again yet
        now[0] += 25
        found = source.read_ollama()
        assert found is not None and found.pid == proc.pid
    finally:
        proc.kill()
        proc.wait(5)
