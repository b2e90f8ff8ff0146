"""Application factory: `create_app(settings)` wires the services and the blueprints."""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, g, request

from management_api import errors
from management_api.routes import (
    healing,
    health,
    hermes_api,
    management,
    ollama_api,
    openai_api,
    stats,
)
from management_api.services import Services
from management_api.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
# Accept a caller's id only when it is harmless to log and echo back.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the Flask app. Nothing starts here: background services start in `Services.start`."""
    settings = settings or Settings.load()
    services = services or Services.build(settings)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_mb * 1024 * 1024
    app.json.sort_keys = False  # keep documented field order
    app.extensions["llm_service"] = services

    errors.init_app(app)
    _init_request_ids(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(management.bp)
    app.register_blueprint(healing.bp)
    app.register_blueprint(stats.bp)
    app.register_blueprint(hermes_api.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(ollama_api.bp)
    return app


def _init_request_ids(app: Flask) -> None:
    @app.before_request
    def assign_request_id() -> None:
        supplied = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = supplied if _REQUEST_ID_PATTERN.match(supplied) else uuid.uuid4().hex

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        request_id = getattr(g, "request_id", None)
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
