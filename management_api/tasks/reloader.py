"""Keeps the tasks config in force current: settled-file polling, SIGHUP, the reload route.

The same rules as the limits reloader (`SettledFileReloader`, proxy/file_reload.py): a change is
applied only once the file has stayed unchanged for one poll (editors truncate, then write), a
broken or vanished file keeps the last good config and logs one line per change of the file,
and the swap is one reference assignment, so a request that already holds a config finishes on
it.

What is compared between polls is the tasks file's ``file_identity`` (the limits reloader's:
the file the path resolves to, so a Kubernetes ConfigMap's ``..data`` symlink swap counts as a
change) and the identities of the template and schema files it names, so an edit of a prompt
alone is applied too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from management_api.proxy.file_reload import FileIdentity, SettledFileReloader, file_identity
from management_api.tasks.config import TasksConfig, TasksConfigError, load_tasks

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

# (the tasks file, then each file it names with its identity); None: no tasks file.
_Signature = tuple[FileIdentity, tuple[tuple[str, FileIdentity | None], ...]] | None


def referenced_files(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The template and schema files a tasks file names (``tasks.<name>.template``,
    ``.schema``, ``.judge.template``), as paths joined to the directory of the file the path
    resolves to, as the loader reads them. Best effort: a file that cannot be read or parsed
    names nothing (the reload that follows reports the error)."""
    real = os.path.realpath(path)
    try:
        with open(real, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError):
        return ()
    tasks = data.get("tasks")
    if not isinstance(tasks, Mapping):
        return ()
    base = os.path.dirname(real)
    found: dict[str, None] = {}

    def add(value: Any) -> None:
        if isinstance(value, str) and value.strip():
            found[os.path.join(base, value)] = None

    for table in tasks.values():
        if not isinstance(table, Mapping):
            continue
        add(table.get("template"))
        add(table.get("schema"))
        judge = table.get("judge")
        if isinstance(judge, Mapping):
            add(judge.get("template"))
    return tuple(found)


class TasksReloader(SettledFileReloader):
    kind = "tasks"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval_seconds: float = 2.0,
        on_apply: Callable[[TasksConfig], None] | None = None,
    ) -> None:
        super().__init__(path, interval_seconds=interval_seconds)
        self._on_apply = on_apply
        # The files the tasks file names, parsed again only when the tasks file changes.
        self._references: tuple[FileIdentity | None, tuple[str, ...]] = (None, ())
        self._current = TasksConfig()
        self.last_error: str | None = None

    def _signature(self) -> _Signature:
        tasks = file_identity(self.path)
        if tasks is None:
            return None
        if self._references[0] != tasks:
            self._references = (tasks, referenced_files(tasks[0]))
        return (tasks, tuple((ref, file_identity(ref)) for ref in self._references[1]))

    @property
    def current(self) -> TasksConfig:
        """The config in force; read it once per request and keep it for the request's life."""
        return self._current

    def load_initial(self) -> TasksConfig:
        """Load at start-up; errors propagate (there is no last good config yet)."""
        with self._lock:
            self._seen = self._signature()
            config = load_tasks(self.path)
            if config.source is None:
                log.warning("tasks file %s not found; /v1/infer has no tasks", self.path)
            self._current = config
            if self._on_apply is not None:
                self._on_apply(config)
            return config

    def _not_found(self) -> None:
        self.last_error = f"{self.path}: file not found"
        super()._not_found()

    def _reload_locked(self) -> bool:
        try:
            config = load_tasks(self.path)
        except TasksConfigError as exc:
            self.last_error = str(exc)
            log.error("tasks reload refused, keeping the last good config: %s", exc)
            return False
        except Exception:
            self.last_error = f"{self.path}: unexpected error (see the log)"
            log.exception("tasks reload failed, keeping the last good config")
            return False
        self._current = config
        self.last_error = None
        if self._on_apply is not None:
            self._on_apply(config)
        log.info("tasks reloaded from %s: %d tasks", self.path, len(config.tasks))
        return True
