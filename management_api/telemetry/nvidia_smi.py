"""``nvidia-smi --query-gpu`` CSV: the last GPU source before "none".

Unsupported values appear as ``[N/A]`` / ``[Not Supported]`` (bare ``N/A`` / ``Not Supported``
in table mode); all four mean unknown. Values may carry units (``7234 MiB``, ``98 %``,
``121.77 W``) unless ``nounits`` is given. A header line, if present, names the columns.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

from management_api.telemetry.commands import run_command
from management_api.telemetry.reading import MIB, GpuReading, aggregate_gpus
from management_api.telemetry.source import TelemetryError

QUERY_FIELDS = (
    "index",
    "name",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "memory.free",
    "temperature.gpu",
    "power.draw",
    "clocks.sm",
)
TEXT_FIELDS = frozenset(
    {"name", "driver_version", "uuid", "serial", "pci.bus_id", "vbios_version", "pstate"}
)
UNKNOWN_VALUES = frozenset({"[n/a]", "[not supported]", "n/a", "not supported", "[unknown error]"})
_HEADER_TOKEN = re.compile(r"^[a-z_]+(\.[a-z_]+)*( \[[^\]]+\])?$")
_NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?)\s*(?:MiB|%|W|MHz|C)?$")
_GPU_LIST = re.compile(r"^GPU (\d+): (.+?)(?: \(UUID: [^)]*\))?$")

Value = str | int | float | None


def parse_value(field: str, raw: str) -> Value:
    """One CSV cell: text fields stay text; anything unknown or unparseable is None."""
    raw = raw.strip()
    if raw.lower() in UNKNOWN_VALUES or not raw:
        return None
    if field in TEXT_FIELDS:
        return raw
    match = _NUMBER.match(raw)
    if not match:
        return None
    number = float(match.group(1))
    return int(number) if field == "index" else number


def parse_query_gpu(text: str, fields: Sequence[str] = QUERY_FIELDS) -> list[dict[str, Value]]:
    """Rows of a ``--query-gpu`` CSV. A header line, when present, overrides `fields`."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if not line.strip() or (len(cells) < 2 <= len(fields)):
            continue  # blank lines, table mode, "command not found": not CSV rows
        if all(_HEADER_TOKEN.match(cell) for cell in cells) and any(
            "." in cell or cell in ("name", "index") for cell in cells
        ):
            fields = [cell.split(" [", 1)[0] for cell in cells]
            continue
        rows.append({f: parse_value(f, cell) for f, cell in zip(fields, cells, strict=False)})
    return rows


def parse_gpu_list(text: str) -> list[str]:
    """Names from ``nvidia-smi -L`` (``GPU 0: Orin (nvgpu) (UUID: ...)``)."""
    return [m.group(2) for line in text.splitlines() if (m := _GPU_LIST.match(line.strip()))]


def gpu_reading_from_rows(rows: Sequence[dict[str, Value]]) -> GpuReading:
    return aggregate_gpus([_row_reading(row) for row in rows])


def _row_reading(row: dict[str, Value]) -> GpuReading:
    name = row.get("name")
    name = name if isinstance(name, str) else None

    def number(field: str) -> float | None:
        value = row.get(field)
        return float(value) if isinstance(value, (int, float)) else None

    def mib(field: str) -> int | None:
        value = number(field)
        return int(value * MIB) if value is not None else None

    used, total, free = mib("memory.used"), mib("memory.total"), mib("memory.free")
    if free is None and used is not None and total is not None:
        free = total - used
    return GpuReading(
        name=name,
        utilization_percent=number("utilization.gpu"),
        memory_used_bytes=used,
        memory_total_bytes=total,
        memory_free_bytes=free,
        memory_shared=bool(name and "nvgpu" in name),
        temperature_c=number("temperature.gpu"),
        power_w=number("power.draw"),
        frequency_mhz=number("clocks.sm"),
        device_count=1,
    )


class NvidiaSmiSource:
    name = "nvidia_smi"

    def __init__(self, binary: str = "nvidia-smi", timeout: float = 2.0) -> None:
        self._binary = binary
        self._timeout = timeout

    def available(self) -> bool:
        if shutil.which(self._binary) is None:
            return False
        try:
            return bool(self._query())
        except TelemetryError:
            return False

    def read(self) -> GpuReading:
        rows = self._query()
        if not rows:
            raise TelemetryError("nvidia-smi listed no GPU")
        return gpu_reading_from_rows(rows)

    def _query(self) -> list[dict[str, Value]]:
        args = [
            shutil.which(self._binary) or self._binary,
            "--query-gpu=" + ",".join(QUERY_FIELDS),
            "--format=csv,noheader,nounits",
        ]
        return parse_query_gpu(run_command(args, self._timeout))

    def close(self) -> None:
        """Nothing is kept between samples."""
