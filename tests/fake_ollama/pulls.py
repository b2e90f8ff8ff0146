"""Simulated blob downloads for ``/api/pull`` (``server/download.go`` semantics).

* Concurrent pulls of one digest share one download; it stops (keeping its
  progress) only when the last waiting client leaves.
* Progress survives an interrupted attempt, so the next pull resumes from it.
* Waiters report progress about every 60 ms, one line per layer per tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import MANIFEST_MISSING, ApiError
from .models import MODEL_MEDIA, Catalog, Layer, ModelEntry
from .names import ModelName

PROGRESS_INTERVAL = 0.06
_TICK = 0.02

Emit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class FailPlan:
    after_bytes: int
    mode: str  # drop | error | stall
    message: str


class PullFailure(Exception):
    def __init__(self, mode: str, message: str) -> None:
        super().__init__(message)
        self.mode = mode
        self.message = message


class Download:
    def __init__(self, layer: Layer, start: float, rate: float) -> None:
        self.layer = layer
        self.completed = float(start)
        self.rate = rate
        self.waiters = 0
        self.max_waiters = 0
        self.state = "running"  # running | stalled | done | failed | cancelled
        self.plan: FailPlan | None = None
        self.plan_start = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    @property
    def total(self) -> int:
        return self.layer.size

    def arm(self, plan: FailPlan) -> None:
        self.plan = plan
        self.plan_start = self.completed

    def describe(self) -> dict[str, Any]:
        return {
            "completed": int(self.completed),
            "total": self.total,
            "waiters": self.waiters,
            "max_waiters": self.max_waiters,
            "state": self.state,
            "rate": self.rate,
        }


class DownloadManager:
    def __init__(self, catalog: Catalog, default_rate: Callable[[], float]) -> None:
        self.catalog = catalog
        self.default_rate = default_rate
        self.active: dict[str, Download] = {}
        self.partial: dict[str, int] = {}
        self.started: Counter = Counter()
        self.max_waiters: dict[str, int] = {}
        self.counts: Counter = Counter()

    def join(self, layer: Layer, rate: float | None, plan: FailPlan | None) -> Download:
        download = self.active.get(layer.digest)
        if download is None:
            start = self.partial.get(layer.digest, 0)
            download = Download(layer, start, rate if rate is not None else self.default_rate())
            self.active[layer.digest] = download
            self.started[layer.digest] += 1
            self.counts["started"] += 1
            download.task = asyncio.get_running_loop().create_task(self._run(download))
        elif rate is not None:
            download.rate = rate
        if plan is not None:
            download.arm(plan)
        download.waiters += 1
        download.max_waiters = max(download.max_waiters, download.waiters)
        digest = layer.digest
        self.max_waiters[digest] = max(self.max_waiters.get(digest, 0), download.waiters)
        return download

    def leave(self, download: Download) -> None:
        download.waiters -= 1
        if download.waiters > 0 or download.done.done():
            return
        download.state = "cancelled"
        self.counts["cancelled"] += 1
        self._retire(download)
        if download.task is not None:
            download.task.cancel()

    def _retire(self, download: Download) -> None:
        if self.active.get(download.layer.digest) is download:
            del self.active[download.layer.digest]
        if download.state != "done":
            self.partial[download.layer.digest] = int(download.completed)

    async def _run(self, download: Download) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while download.completed < download.total:
            await asyncio.sleep(_TICK)
            now = loop.time()
            step, last = download.rate * (now - last), now
            if download.state == "stalled":
                continue
            plan = download.plan
            if (
                plan is not None
                and download.completed + step - download.plan_start >= plan.after_bytes
            ):
                download.completed = min(download.total, download.plan_start + plan.after_bytes)
                if plan.mode == "stall":
                    download.state = "stalled"
                    continue
                download.state = "failed"
                self.counts["failed"] += 1
                self._retire(download)
                download.done.set_exception(PullFailure(plan.mode, plan.message))
                return
            download.completed = min(download.total, download.completed + step)
        download.state = "done"
        self.counts["completed"] += 1
        self.partial.pop(download.layer.digest, None)
        self.catalog.blobs[download.layer.digest] = download.total
        self._retire(download)
        download.done.set_result(None)

    def close(self) -> None:
        for download in list(self.active.values()):
            if download.task is not None:
                download.task.cancel()
            if not download.done.done():
                download.done.set_exception(PullFailure("error", "emulator reset"))
                download.done.exception()  # mark retrieved
        self.active.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "downloads_started": self.counts["started"],
            "downloads_completed": self.counts["completed"],
            "downloads_failed": self.counts["failed"],
            "downloads_cancelled": self.counts["cancelled"],
            "started": dict(self.started),
            "max_waiters": dict(self.max_waiters),
            "active": {digest: d.describe() for digest, d in self.active.items()},
            "partial": dict(self.partial),
        }


def progress_line(layer: Layer, completed: int) -> dict[str, Any]:
    line: dict[str, Any] = {
        "status": f"pulling {layer.digest[7:19]}",
        "digest": layer.digest,
        "total": layer.size,
    }
    if completed:
        line["completed"] = completed
    return line


async def pull_model(
    manager: DownloadManager,
    catalog: Catalog,
    entry_name: ModelName,
    emit: Emit,
    *,
    rate: float | None,
    plan: FailPlan | None,
    on_drop: Callable[[], None],
) -> ModelEntry:
    """Pull ``entry_name`` from the fake registry, reporting progress through ``emit``.

    Raises ``ApiError`` for failures that end the stream with an error line; calls
    ``on_drop`` (which must not return) when the connection is to be cut.
    """
    await emit({"status": "pulling manifest"})
    source = catalog.lookup_registry(entry_name)
    if source is None:
        raise ApiError(500, MANIFEST_MISSING)
    for layer in source.layers:
        if catalog.has_blob(layer.digest):
            await emit(progress_line(layer, layer.size))
            continue
        layer_plan = plan if layer.media_type == MODEL_MEDIA else None
        download = manager.join(layer, rate, layer_plan)
        try:
            await _wait_download(download, emit, on_drop)
        finally:
            manager.leave(download)
    await emit({"status": "verifying sha256 digest"})
    await emit({"status": "writing manifest"})
    entry = catalog.install(dataclasses.replace(source, modified_at=0.0))
    await emit({"status": "success"})
    return entry


async def _wait_download(download: Download, emit: Emit, on_drop: Callable[[], None]) -> None:
    last_sent: int | None = None
    while True:
        await asyncio.wait({download.done}, timeout=PROGRESS_INTERVAL)
        if download.done.done():
            break
        if download.state == "stalled":
            continue
        last_sent = int(download.completed)
        await emit(progress_line(download.layer, last_sent))
    try:
        download.done.result()
    except PullFailure as failure:
        if failure.mode == "drop":
            on_drop()
        raise ApiError(500, failure.message) from None
    if last_sent != download.total:
        await emit(progress_line(download.layer, download.total))
