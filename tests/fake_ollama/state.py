"""Everything a running emulator knows; ``POST /_fake/reset`` replaces it wholesale."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import Settings, Timing
from .control import FaultBook, Observations
from .models import Catalog, ModelEntry, start_models
from .pulls import DownloadManager
from .scheduler import Scheduler
from .scripts import ScriptBook


class EmulatorState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.obs = Observations()
        self.faults = FaultBook()
        self.scripts = ScriptBook()
        start, registry = start_models(settings.models)
        self.catalog = Catalog(start, registry)
        self.timings: dict[str, Timing] = {}
        self.scheduler = Scheduler(
            self.obs,
            num_parallel=lambda: self.settings.num_parallel,
            max_queue=lambda: self.settings.max_queue,
            max_loaded=lambda: self.settings.max_loaded_models,
            default_keep_alive=lambda: self.settings.keep_alive,
            load_seconds_per_gb=lambda: self.settings.load_seconds_per_gb,
            memory_bytes=lambda: self.settings.memory_bytes,
        )
        self.downloads = DownloadManager(self.catalog, lambda: self.settings.pull_bytes_per_second)

    def timing(self, model: ModelEntry) -> Timing:
        return self.timings.get(model.name.key, self.settings.timing)

    def set_timing(self, model: ModelEntry, changes: dict[str, Any]) -> Timing:
        base = self.timings.get(model.name.key, self.settings.timing)
        timing = dataclasses.replace(base, **changes)
        self.timings[model.name.key] = timing
        return timing

    def snapshot(self) -> dict[str, Any]:
        data = self.obs.snapshot()
        data["pulls"] = self.downloads.snapshot()
        data["pending"] = len(self.scheduler.pending)
        data["runners"] = {
            runner.model.name.display: {
                "state": runner.state,
                "refcount": runner.refcount,
                "slots": runner.slots.capacity,
                "slots_in_use": runner.slots.in_use,
                "waiting": runner.slots.waiting,
            }
            for runner in self.scheduler.runners.values()
        }
        data["faults"] = self.faults.describe()
        data["scripts"] = self.scripts.describe()
        return data

    def close(self) -> None:
        self.scheduler.close()
        self.downloads.close()
