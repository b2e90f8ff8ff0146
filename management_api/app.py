"""Application factory: `create_app(settings)` wires the services and the blueprints."""

from __future__ import annotations

import logging

from flask import Flask

from management_api.access import error_handlers, hooks
from management_api.access.auth import KeyRing, load_keys
from management_api.access.cors import CorsPolicy
from management_api.access.guard import BrowserGuard
from management_api.access.hosts import HostPolicy
from management_api.routes import (
    cache,
    docs,
    healing,
    health,
    hermes_api,
    jobs,
    management,
    models,
    ollama_api,
    openai_api,
    openai_batches,
    stats,
    status,
    tasks,
    usage,
)
from management_api.routes.fast_path import InferenceFastPath
from management_api.services import Services
from management_api.settings import Settings


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the Flask app. Nothing starts here: background services start in `Services.start`."""
    settings = settings or Settings.load()
    services = services or Services.build(settings)

    app = Flask(__name__, static_folder=None)  # no static files: no /static route
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_mb * 1024 * 1024
    app.json.sort_keys = False  # keep documented field order
    app.extensions["llm_service"] = services

    error_handlers.init_app(app)
    keyring = KeyRing(settings.auth_mode, load_keys(settings.api_keys, settings.api_keys_file))
    app.extensions["llm_service_keys"] = keyring
    cors = CorsPolicy(settings.cors_origins, settings.ollama_origins)
    hooks.init_app(app, keyring, cors)
    # The gateway asks the key ring who may send the unload-everything form.
    services.gateway.may_unload_all = keyring.may_unload_all
    app.register_blueprint(health.bp)
    app.register_blueprint(management.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(healing.bp)
    app.register_blueprint(stats.bp)
    app.register_blueprint(cache.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(hermes_api.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(usage.bp)
    jobs.init_app(app, keyring)
    app.register_blueprint(openai_batches.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(ollama_api.bp)
    # Inference requests skip Flask's per-request machinery (see routes/fast_path.py).
    app.wsgi_app = InferenceFastPath(  # type: ignore[method-assign]
        app.wsgi_app,
        gateway=services.gateway,
        keyring=keyring,
        cors=cors,
        max_body_bytes=app.config["MAX_CONTENT_LENGTH"],
    )
    # Outermost: cross-site and rebound requests are refused before any other work.
    app.wsgi_app = BrowserGuard(  # type: ignore[method-assign]
        app.wsgi_app, cors=cors, hosts=HostPolicy(settings.allowed_hosts)
    )
    return app


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
