"""Free disk space where Ollama keeps its models: the pre-check of a pull.

The models directory may not exist yet (a fresh volume, or the emulator standing in for Ollama),
so the check looks at its nearest existing ancestor, which is on the same file system.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1_000_000_000  # decimal, like the sizes Ollama prints

DiskUsage = Callable[[Path], Any]  # shutil.disk_usage's shape: .free, .total


class InsufficientDiskSpace(Exception):
    """Less free space than a pull needs; carries the figures for the 507 answer."""

    def __init__(self, free_bytes: int, needed_bytes: int) -> None:
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes
        super().__init__(
            f"not enough free disk space for the pull: {free_bytes / GB:.2f} GB free, "
            f"{needed_bytes / GB:.2f} GB needed"
        )

    def figures(self) -> dict[str, float | int]:
        return {
            "free_bytes": self.free_bytes,
            "needed_bytes": self.needed_bytes,
            "free_gb": round(self.free_bytes / GB, 2),
            "needed_gb": round(self.needed_bytes / GB, 2),
        }


@dataclass(frozen=True)
class DiskSpace:
    path: Path  # the directory actually measured
    free_bytes: int
    total_bytes: int


def existing_ancestor(path: Path) -> Path:
    """`path` itself, or its nearest parent that exists."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def disk_space(path: Path, usage: DiskUsage = shutil.disk_usage) -> DiskSpace:
    """Free and total bytes of the file system holding `path` (raises OSError)."""
    where = existing_ancestor(path)
    result = usage(where)
    return DiskSpace(where, int(result.free), int(result.total))


def require_free_space(
    path: Path, needed_bytes: int, usage: DiskUsage = shutil.disk_usage
) -> DiskSpace:
    """Raise InsufficientDiskSpace when less than `needed_bytes` is free at `path`."""
    space = disk_space(path, usage)
    if space.free_bytes < needed_bytes:
        raise InsufficientDiskSpace(space.free_bytes, needed_bytes)
    return space
