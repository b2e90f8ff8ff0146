"""gunicorn configuration for llm-service.

* Exactly ONE worker process: per-model limits, the model cache, pull jobs and the sampler live
  in that process's memory, so a second worker would silently double every limit. Any attempt to
  run more (``-w``, ``GUNICORN_CMD_ARGS``, SIGTTIN) is refused.
* gthread: a long stream must not look like a hung worker (the sync worker kills it after
  ``timeout``), and queued or streaming requests each hold one thread, so the pool is large.
  Our subclass (management_api/proxy/gunicorn_worker.py) reads request heads on the main loop
  with a deadline, serves the probes on lanes of their own and bounds every write.
* Both ports are bound by this one process; the proxy port only when the proxy is enabled.
* Background threads start in ``post_worker_init``, after the fork, never at import.
"""

import signal
import sys

from management_api import names
from management_api.access.auth import KeyRing, load_keys
from management_api.proxy.limits_config import (
    LimitsConfigError,
    LimitsResolver,
    check_capacity,
    load_limits,
)
from management_api.settings import Settings, SettingsError

try:
    _settings = Settings.load()
    KeyRing(_settings.auth_mode, load_keys(_settings.api_keys, _settings.api_keys_file))
    # The limits file too, before the worker forks: one that promises more waiting requests
    # than the pool holds (or any other error in it) stops the start here, with its one line.
    _limits = load_limits(_settings.limits_file)
    LimitsResolver(_limits, names.normalize)
    check_capacity(_limits, _settings.worker_threads)
except (SettingsError, LimitsConfigError) as exc:
    # One line naming the variable (or file and key) and the accepted form, then stop (exit
    # code 2 = bad config).
    print(f"llm-service: configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(2)

bind = [f"{_settings.bind_host}:{_settings.management_port}"]
if _settings.proxy_enabled:
    bind.insert(0, f"{_settings.bind_host}:{_settings.proxy_port}")

workers = 1
worker_class = "management_api.proxy.gunicorn_worker.BoundedThreadWorker"
threads = _settings.worker_threads
worker_connections = max(1000, _settings.worker_threads * 4)
backlog = 2048
# For gthread, `timeout` is the worker heartbeat, not a per-request limit.
timeout = 60
graceful_timeout = 30
keepalive = 5
preload_app = False
accesslog = None
errorlog = "-"
loglevel = "info"
proc_name = "llm-service"
# gunicorn 27's control socket lives at one path in $HOME, so two instances (tests, a second
# service) would fight over it; nothing here uses it (the hard reset goes through supervisord).
control_socket_disable = True

ONE_WORKER_MESSAGE = (
    "llm-service runs exactly one gunicorn worker: limits, caches and jobs live in its memory, "
    "and more workers would multiply every limit. Remove -w/--workers (or WEB_CONCURRENCY) and "
    "raise LLM_WORKER_THREADS for more concurrency."
)


def on_starting(server):
    if server.cfg.workers != 1:
        print(f"llm-service: {ONE_WORKER_MESSAGE}", file=sys.stderr, flush=True)
        sys.exit(2)


def nworkers_changed(server, new_value, old_value):
    # SIGTTIN/SIGTTOU at runtime: pin the count back to one. (old_value is None during the
    # initial setup, which on_starting has already checked.)
    if old_value is not None and new_value != 1:
        server.log.error("refusing to run %s workers: %s", new_value, ONE_WORKER_MESSAGE)
        server.num_workers = 1


def post_worker_init(worker):
    services = worker.wsgi.extensions["llm_service"]
    services.start()
    # SIGHUP to the *worker* re-reads the limits file. (SIGHUP to the master makes gunicorn
    # replace the worker, which would reset every counter.)
    # The tasks file is re-read on the same signal.
    signal.signal(signal.SIGHUP, lambda *_: _reload_files(services))


def _reload_files(services):
    services.limits_reloader.request_reload()
    services.tasks.request_reload()


def worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        app.extensions["llm_service"].stop()
