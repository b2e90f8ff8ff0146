"""The long-lived objects of one worker process, wired once by `create_app`.

Nothing here starts at import or construction: background threads (limits reloader, sampler,
pull jobs) start in `start()`, which gunicorn's ``post_worker_init`` hook calls after the worker
has forked, and end in `stop()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from management_api import __version__, names
from management_api.cache.service import ResponseCache
from management_api.health.checks import HealthChecker, OllamaProbe
from management_api.health.healing import Healer
from management_api.jobs.batches import Batches
from management_api.jobs.manager import JobLimits, JobManager
from management_api.metrics import Metrics, StateCollector
from management_api.models.catalog import Catalog
from management_api.models.pulls import PullManager
from management_api.ollama import OllamaClient, OllamaError
from management_api.proxy.gateway import Gateway
from management_api.proxy.limiter import Limiter
from management_api.proxy.limits_config import LimitsReloader
from management_api.proxy.scheduler import ModelScheduler
from management_api.settings import Settings
from management_api.status import RecentRejections, StatusBuilder
from management_api.tasks.breaker import BreakerBoard
from management_api.tasks.orchestrator import Orchestrator
from management_api.tasks.reloader import TasksReloader
from management_api.telemetry import Sampler, create_sampler, read_platform
from management_api.usage.callers import RecentWaits, callers_table
from management_api.usage.recorder import UsageRecorder
from management_api.usage.store import UsageStore

log = logging.getLogger(__name__)

# How old the probe behind `llm_service_ollama_up` may be: scrapes stay off Ollama's back.
OLLAMA_UP_MAX_AGE_SECONDS = 5.0
USAGE_FILE = "usage.sqlite3"  # in LLM_STATE_DIR, beside the jobs database


class _Observers:
    """Hands each limiter event to several observers (the limiter takes one)."""

    def __init__(self, *observers: Any) -> None:
        self._observers = observers

    def __getattr__(self, name: str) -> Callable[..., None]:
        targets = [getattr(o, name) for o in self._observers if hasattr(o, name)]
        if not targets:
            raise AttributeError(name)

        def call(*args: Any) -> None:
            for target in targets:
                target(*args)

        return call


@dataclass
class Services:
    settings: Settings
    ollama: OllamaClient
    limiter: Limiter
    limits_reloader: LimitsReloader
    catalog: Catalog
    gateway: Gateway
    sampler: Sampler
    metrics: Metrics
    probe: OllamaProbe
    health: HealthChecker
    healer: Healer
    pulls: PullManager
    tasks: TasksReloader
    orchestrator: Orchestrator
    jobs: JobManager
    batches: Batches
    usage: UsageRecorder | None = None
    cache: ResponseCache | None = None  # None when LLM_CACHE_MAX_MB is 0
    rejections: RecentRejections = field(default_factory=RecentRejections)
    status: StatusBuilder | None = None
    started_at: float = field(default_factory=time.time)
    _stoppers: list[Callable[[], None]] = field(default_factory=list)
    _starters: list[Callable[[], None]] = field(default_factory=list)
    _started: threading.Event = field(default_factory=threading.Event)
    _version_lock: threading.Lock = field(default_factory=threading.Lock)
    _version: tuple[float, str | None] | None = None  # (asked at, answer) for /api/info
    _platform: dict[str, Any] | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        # Pools sized to the worker's threads: every request thread may be talking to Ollama.
        ollama = OllamaClient(
            settings.ollama_url,
            pool_size=settings.worker_threads,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
        )
        metrics = Metrics()
        rejections = RecentRejections()
        catalog = Catalog(ollama, ttl_seconds=settings.model_cache_ttl)
        scheduler = ModelScheduler(
            fetch_loaded=lambda: _loaded_models(catalog),
            fetch_sizes=lambda: _model_sizes(catalog),
            env_max_loaded=_env_int("OLLAMA_MAX_LOADED_MODELS"),
            memory_bytes=_physical_memory_bytes,
        )
        # names.normalize raises on a typo in an exact `match`, so a bad limits file is reported.
        limiter = Limiter(
            normalize=names.normalize,
            observer=_Observers(metrics, rejections),
            scheduler=scheduler,
            worker_threads=settings.worker_threads,
        )
        reloader = LimitsReloader(
            settings.limits_file,
            limiter.update_config,
            interval_seconds=settings.limits_reload_seconds,
        )
        reloader.load_initial()  # a broken file at start-up stops the service
        usage = UsageRecorder(
            UsageStore(settings.state_dir / USAGE_FILE),
            model_label=metrics.model_label,
            retention_days=settings.usage_retention_days,
            flush_seconds=settings.usage_flush_seconds,
        )
        waits = RecentWaits()  # queue-wait p95 per caller and class for the Callers table
        gateway = Gateway(
            ollama_url=settings.ollama_url,
            limiter=limiter,
            catalog=catalog,
            pool_size=settings.worker_threads,
            connect_timeout=settings.upstream_connect_timeout,
            grace_seconds=settings.upstream_grace_seconds,
            observer=_Observers(metrics, usage, waits),  # each access-log line: metrics, usage
        )
        cache = None
        if settings.cache_max_mb > 0:
            cache = ResponseCache(
                max_bytes=round(settings.cache_max_mb * 1024 * 1024),
                ttl_seconds=settings.cache_ttl_seconds,
                digest_of=catalog.digest,
                log_served=gateway.log_served,
                observer=metrics,
                shared_across_keys=settings.cache_shared_across_keys,
                limiter=limiter,
            )
            gateway.response_cache = cache
        sampler = create_sampler(
            interval=settings.stats_interval,
            models_dir=settings.models_dir,
            extra_info=limiter.snapshot,
        )
        started_at = time.time()
        probe = OllamaProbe(ollama)
        health = HealthChecker(
            probe,
            sampler,
            ollama_log_path=settings.ollama_log_file,
            log_window_seconds=settings.health_log_window,
            started_at=started_at,
        )
        healer = Healer(
            ollama=ollama,
            limiter=limiter,
            gateway=gateway,
            sampler=sampler,
            default_model=settings.default_model,
            keep_alive_seconds=settings.keep_alive_seconds,
            supervisor_socket=settings.supervisor_socket,
        )
        gateway.unload_all = healer.unload_for_proxy
        pulls = PullManager(
            ollama,
            catalog,
            retries=settings.pull_retries,
            stall_seconds=settings.pull_stall_seconds,
            models_dir=settings.models_dir,
            min_free_bytes=round(settings.pull_min_free_gb * 1_000_000_000),
        )
        breakers = BreakerBoard()
        tasks = TasksReloader(
            settings.tasks_file,
            interval_seconds=settings.limits_reload_seconds,
            on_apply=lambda config: breakers.configure(config.breaker),
        )
        tasks.load_initial()  # a broken tasks file at start-up stops the service
        orchestrator = Orchestrator(
            gateway=gateway, limiter=limiter, catalog=catalog, breakers=breakers, observer=metrics
        )
        known_models = _KnownModels(catalog, limiter, tasks)
        metrics.known_models = known_models
        gateway.known_models = known_models
        jobs = JobManager(
            settings.state_dir,
            JobLimits(
                workers=settings.jobs_workers,
                max_per_caller=settings.jobs_max_concurrent,
                max_queued=settings.jobs_max_queued,
                max_attempts=settings.jobs_max_attempts,
                ttl_seconds=settings.jobs_ttl_seconds,
                max_finished=settings.jobs_max_stored,
                max_stored_bytes=round(settings.jobs_max_stored_mb * 1024 * 1024),
                max_result_bytes=round(settings.jobs_max_result_mb * 1024 * 1024),
                callback_hosts=settings.jobs_callback_hosts,
                callback_attempts=settings.jobs_callback_attempts,
                callback_timeout_seconds=settings.jobs_callback_timeout_seconds,
            ),
        )
        metrics.registry.register(
            StateCollector(
                limiter_snapshot=limiter.snapshot,
                telemetry=sampler.latest,
                ollama_up=lambda: probe.recent(OLLAMA_UP_MAX_AGE_SECONDS).reachable,
                pulls=pulls.counts,
                breakers=breakers.snapshot,
                cache=cache.store.counts if cache is not None else None,
                known_models=known_models,
            )
        )
        services = cls(
            settings=settings,
            ollama=ollama,
            limiter=limiter,
            limits_reloader=reloader,
            catalog=catalog,
            gateway=gateway,
            sampler=sampler,
            metrics=metrics,
            probe=probe,
            health=health,
            healer=healer,
            pulls=pulls,
            tasks=tasks,
            orchestrator=orchestrator,
            jobs=jobs,
            batches=Batches(jobs),
            cache=cache,
            usage=usage,
            rejections=rejections,
            started_at=started_at,
        )
        services.status = StatusBuilder(
            limiter=limiter,
            catalog=catalog,
            pulls=pulls,
            sampler=sampler,
            health=health,
            healing_log=healer.log,
            rejections=rejections,
            service_info=services.status_info,
            callers=lambda: callers_table(usage, waits),
        )
        # First: it stops last, after everything that finishes requests, and flushes then.
        services.on_start(usage.start, usage.stop)
        services.on_start(reloader.start, reloader.stop)
        services.on_start(sampler.start, sampler.stop)
        services.on_start(pulls.start, pulls.stop)
        services.on_start(tasks.start, tasks.stop)
        # Last: jobs run requests through everything above, and stop first.
        services.on_start(jobs.start, jobs.stop)
        services.on_start(services.batches.open, lambda: None)
        # Further services (pull jobs, healing, metrics) register here, in dependency order.
        return services

    def on_start(self, starter: Callable[[], None], stopper: Callable[[], None]) -> None:
        """Register a background service: `starter` runs in `start()`, `stopper` in `stop()`."""
        self._starters.append(starter)
        self._stoppers.append(stopper)

    def start(self) -> None:
        if self._started.is_set():
            return
        self._started.set()
        for starter in self._starters:
            starter()
        log.info("background services started (%d)", len(self._starters))

    def stop(self) -> None:
        # Reverse order: later services may depend on earlier ones.
        for stopper in reversed(self._stoppers):
            try:
                stopper()
            except Exception:
                log.exception("stopping a background service failed")
        self.orchestrator.close()
        self.gateway.close()
        self.probe.close()
        self.ollama.close()

    def uptime_seconds(self) -> float:
        return max(0.0, time.time() - self.started_at)

    def ollama_version(self, max_age_seconds: float = 60.0) -> str | None:
        """Ollama's version, asked at most once per `max_age_seconds` (a down Ollama costs at
        most 1 s then, and None until the next try)."""
        now = time.monotonic()
        with self._version_lock:
            if self._version is not None and now - self._version[0] < max_age_seconds:
                return self._version[1]
        try:
            version = self.ollama.version(read_timeout=1.0, retry=False)
        except OllamaError:
            version = None
        with self._version_lock:
            self._version = (now, version)
        return version

    def status_info(self) -> dict[str, Any]:
        """What the status page says about the service itself (nothing clock-derived)."""
        settings = self.settings
        return {
            "name": "llm-service",
            "version": __version__,
            "started_at": round(self.started_at, 3),
            "ollama_version": self.ollama_version(),
            "platform": self.platform(),
            "telemetry_source": self.sampler.gpu_source,
            "default_model": settings.default_model,
            "management_port": settings.management_port,
            "proxy_port": settings.proxy_port if settings.proxy_enabled else None,
            "limits_file": str(settings.limits_file),
        }

    def platform(self) -> dict[str, Any]:
        """The board this runs on (read once: it does not change while the process lives)."""
        if self._platform is None:
            info = read_platform()
            self._platform = {
                "jetson": info.jetson,
                "model": info.model,
                "l4t": info.l4t,
                "jetpack": info.jetpack,
                "kernel": info.kernel,
            }
        return self._platform


# --- the scheduler's sources (read on its own short-lived thread, never per request)


def _loaded_models(catalog: Catalog) -> list[tuple[str, int | None]]:
    rows = []
    for row in catalog.loaded():
        name = row.get("name")
        if isinstance(name, str) and names.is_valid(name):
            size = row.get("size")
            rows.append((names.normalize(name), size if isinstance(size, int) else None))
    return rows


def _model_sizes(catalog: Catalog) -> dict[str, int]:
    sizes = {}
    for entry in catalog.view().entries:
        name, size = entry.get("name"), entry.get("size")
        if isinstance(name, str) and names.is_valid(name) and isinstance(size, int):
            sizes[names.normalize(name)] = size
    return sizes


def _env_int(name: str) -> int:
    try:
        return int(os.environ.get(name, "").strip() or 0)
    except ValueError:
        return 0


def _physical_memory_bytes() -> int | None:
    """Total RAM: on a Jetson the GPU shares it, so it is what the models must fit in."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class _KnownModels:
    """The names Ollama knows, for metric labels and for refusing made-up names: the last model
    list (fresh or stale) plus every name the limits and tasks files configure."""

    def __init__(self, catalog: Catalog, limiter: Limiter, tasks: TasksReloader) -> None:
        self._catalog = catalog
        self._limiter = limiter
        self._tasks = tasks
        self._configured: tuple[object, object, frozenset[str]] | None = None

    def __call__(self) -> frozenset[str]:
        return self._catalog.known_keys() | self._configured_names()

    def _configured_names(self) -> frozenset[str]:
        limits, tasks = self._limiter.config, self._tasks.current
        cached = self._configured
        if cached is not None and cached[0] is limits and cached[1] is tasks:
            return cached[2]
        found = set(self._limiter.configured_models())
        for task in tasks.tasks.values():
            for model in task.models:
                try:
                    found.add(names.normalize(model))
                except ValueError:
                    continue
        configured = frozenset(found)
        self._configured = (limits, tasks, configured)
        return configured
