"""Config files that are re-read while the service runs: what changed, when to apply it.

`SettledFileReloader` is the machinery the limits file and the tasks file share: a poll thread
compares the file's identity between polls and applies a change only once it has stayed the
same for one more poll (editors truncate, then write; a reload in between would apply an empty
file and keep it as the last good config), ``reload_now`` for the reload routes, and
``request_reload`` for SIGHUP. A broken or vanished file keeps the last good config and logs one
line per change of the file, not one per poll. Subclasses say how to load and apply.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable

log = logging.getLogger(__name__)

FileIdentity = tuple[str, int, int, int, int]


def file_identity(path: str | os.PathLike[str]) -> FileIdentity | None:
    """What a config reloader compares between polls: the file the path resolves to (symlinks
    followed) and that file's device, inode, mtime and size; None when it cannot be read.

    Kubernetes updates a mounted ConfigMap by writing a new ``..<timestamp>/`` directory and
    renaming a ``..data`` symlink onto it; ``limits.toml`` is a symlink to ``..data/limits.toml``
    whose own metadata never changes. The resolved path differs after every such swap, even
    when the new file happens to get the old size, mtime or a recycled inode. The stat comes
    first: a swap between the two calls then reads as one more change, never as a missing file.
    """
    try:
        st = os.stat(path)
        real = os.path.realpath(path)
    except OSError:
        return None
    return (real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class SettledFileReloader:
    """Polls ``path`` every ``interval_seconds``; see the module docstring."""

    kind = "config"  # names the file in log lines and the thread

    def __init__(self, path: str | os.PathLike[str], *, interval_seconds: float = 2.0) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self.path = os.fspath(path)
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._seen: Hashable | None = None
        self._settling: Hashable | None = None  # changed at the last check, not yet applied
        self._wake = threading.Event()
        self._forced = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- what subclasses provide

    def _signature(self) -> Hashable | None:
        """What is compared between polls; None when the file cannot be read."""
        return file_identity(self.path)

    def _reload_locked(self) -> bool:
        """Load and apply the file (the lock is held); True when a new config applies."""
        raise NotImplementedError

    def _not_found(self) -> None:
        log.error("%s file %s not found; keeping the last good config", self.kind, self.path)

    # --- polling and reloading

    def check(self) -> bool:
        """Reload if the file changed since last seen and has stayed unchanged since the
        previous check; True when a new config was applied."""
        with self._lock:
            signature = self._signature()
            if signature == self._seen:
                self._settling = None
                return False
            if signature != self._settling:
                self._settling = signature  # look again at the next check
                return False
            self._settling = None
            self._seen = signature
            if signature is None:
                log.error(
                    "%s file %s disappeared; keeping the last good config", self.kind, self.path
                )
                return False
            return self._reload_locked()

    def reload_now(self) -> bool:
        """Reload whatever the file holds now (a route, SIGHUP); True when a new config applies."""
        with self._lock:
            self._seen = self._signature()
            if self._seen is None:
                self._not_found()
                return False
            return self._reload_locked()

    def request_reload(self) -> None:
        """Ask the poll thread to reload now; takes no lock of ours, so fit for a signal handler."""
        self._forced = True
        self._wake.set()

    def start(self) -> None:
        """Start the poll thread (after the worker forks, never at import)."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-reloader", daemon=True)
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
