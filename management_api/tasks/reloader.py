"""Keeps the tasks config in force current: settled-file polling, SIGHUP, the reload route.

The same rules as the limits reloader (proxy/limits_config.py): a change is applied only once
the file has stayed unchanged for one poll (editors truncate, then write), a broken or vanished
file keeps the last good config and logs one line per change of the file, and the swap is one
reference assignment, so a request that already holds a config finishes on it.

What is compared between polls is the tasks file's ``file_identity`` (the limits reloader's:
the file the path resolves to, so a Kubernetes ConfigMap's ``..data`` symlink swap counts as a
change) and the identities of the template and schema files it names, so an edit of a prompt
alone is applied too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from management_api.proxy.limits_config import FileIdentity, file_identity
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


class TasksReloader:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval_seconds: float = 2.0,
        on_apply: Callable[[TasksConfig], None] | None = None,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self.path = os.fspath(path)
        self._interval = interval_seconds
        self._on_apply = on_apply
        self._lock = threading.Lock()
        self._seen: _Signature = None
        self._settling: _Signature = None
        # The files the tasks file names, parsed again only when the tasks file changes.
        self._references: tuple[FileIdentity | None, tuple[str, ...]] = (None, ())
        self._current = TasksConfig()
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._forced = False
        self._stopping = False
        self._thread: threading.Thread | None = None

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

    def check(self) -> bool:
        """Reload when the file changed and has settled since the previous check."""
        with self._lock:
            signature = self._signature()
            if signature == self._seen:
                self._settling = None
                return False
            if signature != self._settling:
                self._settling = signature
                return False
            self._settling = None
            self._seen = signature
            if signature is None:
                log.error("tasks file %s disappeared; keeping the last good config", self.path)
                return False
            return self._reload_locked()

    def reload_now(self) -> bool:
        """Reload whatever the file holds now (route, SIGHUP); True when a new config applies."""
        with self._lock:
            self._seen = self._signature()
            if self._seen is None:
                self.last_error = f"{self.path}: file not found"
                log.error("tasks file %s not found; keeping the last good config", self.path)
                return False
            return self._reload_locked()

    def request_reload(self) -> None:
        """Ask the poll thread to reload now; takes no lock, so fit for a signal handler."""
        self._forced = True
        self._wake.set()

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

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tasks-reloader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping:
                return
            forced, self._forced = self._forced, False
            if forced:
                self.reload_now()
            else:
                self.check()
