"""Host-wide readings through psutil: CPU, load, RAM, swap, the models disk, Ollama, ourselves.

CPU percentages come from ``cpu_percent(interval=None)``, which compares with the previous
call *from the same thread*; the first call in a thread returns a meaningless 0.0. `prime()`
makes that first call, and `read()` reports None for the CPU until the thread is primed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from management_api.telemetry.reading import (
    CpuReading,
    DiskReading,
    HostReading,
    MemoryReading,
    ProcessReading,
    SwapReading,
)

log = logging.getLogger(__name__)

OLLAMA_PROCESS_NAME = "ollama"


class HostSource:
    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None = None,
        ollama_pid: int | None = None,
        ollama_name: str = OLLAMA_PROCESS_NAME,
        rescan_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`ollama_pid` pins the process; otherwise it is found by name, re-searched at most
        every `rescan_seconds` while absent (a scan walks the whole process table)."""
        self._models_dir = Path(models_dir) if models_dir is not None else None
        self._ollama_pid = ollama_pid
        self._ollama_name = ollama_name
        self._rescan_seconds = rescan_seconds
        self._clock = clock
        # Per thread object, not per ident: idents are reused once a thread ends.
        self._thread_state = threading.local()
        self._ollama: psutil.Process | None = None
        self._next_scan = 0.0
        # One Process object per pid: each keeps its own cpu_percent baseline.
        self._tracked: dict[int, psutil.Process] = {}
        self._me = psutil.Process()

    def prime(self) -> None:
        """Start the calling thread's CPU baseline (call once in the sampler thread)."""
        psutil.cpu_percent(interval=None)
        psutil.cpu_percent(interval=None, percpu=True)
        self._thread_state.primed = True

    def read(self) -> HostReading:
        return HostReading(
            cpu=self.read_cpu(),
            memory=read_memory(),
            swap=read_swap(),
            disk=read_disk(self._models_dir) if self._models_dir is not None else None,
            ollama=self.read_ollama(),
            own_rss_bytes=self._me.memory_info().rss,
        )

    def read_cpu(self) -> CpuReading:
        percent: float | None = None
        per_core: tuple[float, ...] | None = None
        if getattr(self._thread_state, "primed", False):
            percent = psutil.cpu_percent(interval=None)
            per_core = tuple(psutil.cpu_percent(interval=None, percpu=True))
        else:
            self.prime()
        load: tuple[float, float, float] | None
        try:
            one, five, fifteen = psutil.getloadavg()
            load = (round(one, 2), round(five, 2), round(fifteen, 2))
        except (OSError, AttributeError):
            load = None
        return CpuReading(percent, per_core, psutil.cpu_count(), load)

    def read_ollama(self) -> ProcessReading | None:
        """Ollama's server process plus its runner children, summed; None when not running."""
        root = self._find_ollama()
        if root is None:
            return None
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            self._ollama = None
            return None
        rss = 0
        cpu: float | None = 0.0
        seen: set[int] = set()
        for proc in tree:
            try:
                proc_rss = proc.memory_info().rss
                share = self._cpu_percent(proc)
            except psutil.Error:
                continue  # a runner exiting between listing and reading
            rss += proc_rss
            seen.add(proc.pid)
            if proc.pid == root.pid and share is None:
                cpu = None
            elif cpu is not None and share is not None:
                cpu += share
        for pid in set(self._tracked) - seen:
            del self._tracked[pid]
        if root.pid not in seen:
            self._ollama = None
            return None
        return ProcessReading(root.pid, rss, cpu, len(seen))

    def _cpu_percent(self, proc: psutil.Process) -> float | None:
        tracked = self._tracked.get(proc.pid)
        if tracked is not None and tracked == proc:  # same pid *and* start time
            return tracked.cpu_percent(interval=None)
        self._tracked[proc.pid] = proc
        proc.cpu_percent(interval=None)  # baseline; this first value is meaningless
        return None

    def _find_ollama(self) -> psutil.Process | None:
        if self._ollama is not None and self._ollama.is_running():
            return self._ollama
        self._ollama = None
        if self._ollama_pid is not None:
            try:
                self._ollama = psutil.Process(self._ollama_pid)
            except psutil.Error:
                return None
            return self._ollama
        now = self._clock()
        if now < self._next_scan:
            return None
        self._next_scan = now + self._rescan_seconds
        self._ollama = find_process_tree_root(self._ollama_name)
        return self._ollama


def find_process_tree_root(name: str) -> psutil.Process | None:
    """The process called `name` whose parent is not also called `name` (the server, not a
    runner: Ollama starts its runners from the same binary)."""
    found = {}
    for proc in psutil.process_iter(["name", "ppid"]):
        if proc.info["name"] == name:
            found[proc.pid] = proc
    roots = [p for p in found.values() if p.info["ppid"] not in found]
    return min(roots, key=lambda p: p.pid) if roots else None


def read_memory() -> MemoryReading:
    vm = psutil.virtual_memory()
    cached = getattr(vm, "cached", None)  # Linux (and BSD) only
    if cached is not None:
        cached += getattr(vm, "buffers", 0) or 0
    return MemoryReading(
        total_bytes=vm.total,
        available_bytes=vm.available,
        used_bytes=vm.total - vm.available,
        percent=vm.percent,
        cached_bytes=cached,
    )


def read_swap() -> SwapReading:
    swap = psutil.swap_memory()
    return SwapReading(swap.total, swap.used, swap.free, swap.percent)


def read_disk(path: Path) -> DiskReading:
    """Usage of the filesystem holding `path`; a models dir not created yet is measured at
    its nearest existing parent, which is where it will be created."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = psutil.disk_usage(str(probe))
    except OSError as exc:
        log.debug("disk usage of %s unavailable: %s", probe, exc)
        return DiskReading(str(path))
    return DiskReading(str(path), usage.total, usage.used, usage.free, usage.percent)
