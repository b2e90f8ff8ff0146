"""A ConfigMap volume on disk, laid out and updated the way the kubelet does it, for reloader
tests (limits, tasks): each version is a ``..<timestamp>/`` directory, ``..data`` is a symlink to
the current one, and every top-level name is a symlink ``<name> -> ..data/<name>``. A path
with directories (a volume's ``items: [{key, path: prompts/judge.md}]``) lies inside the
version directory and only its first component is linked (``prompts -> ..data/prompts``), as
the kubelet's atomic writer does. An update writes a new directory, points a temporary symlink
at it, renames that onto ``..data`` (the one atomic step) and removes the old directory, so a
reader sees the old or the new files, never a mix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ConfigMapVolume:
    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self._versions = 0
        mount.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The path a container reads (the key's symlink)."""
        return self.mount / key

    def current_dir(self) -> Path:
        return self.mount / os.readlink(self.mount / "..data")

    def write(self, files: dict[str, str], mtime: float | None = None) -> Path:
        """Publish a new version holding `files` (relative path -> text); `mtime` forces the
        files' modification time (to show a reload does not depend on it). Returns the new
        version's directory."""
        self._versions += 1
        version = self.mount / f"..2026_12_03_08_00_{self._versions:02d}.{self._versions:09d}"
        version.mkdir()
        for key, text in files.items():
            (version / key).parent.mkdir(parents=True, exist_ok=True)
            (version / key).write_text(text)
            if mtime is not None:
                os.utime(version / key, (mtime, mtime))
        data = self.mount / "..data"
        old = self.current_dir() if data.is_symlink() else None
        tmp = self.mount / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, data)  # rename(2) over the old link: the atomic swap
        for top in {Path(key).parts[0] for key in files}:
            link = self.mount / top
            if not link.is_symlink():
                link.symlink_to(Path("..data") / top)
        if old is not None:
            shutil.rmtree(old)
        return version
