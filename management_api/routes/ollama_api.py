"""Ollama-native routes: every path under /api/ (and /) is forwarded to Ollama.

Inference routes go through admission (see gateway.py); everything else — tags, ps, show, pull,
push, create, copy, delete, blobs, version and routes Ollama adds later — passes through as is.
Management routes registered by other blueprints (e.g. /api/models) are more specific and win.
"""

from flask import Blueprint
from flask.typing import ResponseReturnValue

from management_api.errors import OLLAMA
from management_api.routes.forwarding import forward_current_request

bp = Blueprint("ollama_api", __name__)

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@bp.route("/", methods=METHODS, provide_automatic_options=False)
@bp.route("/api/<path:rest>", methods=METHODS, provide_automatic_options=False)
def forward(rest: str = "") -> ResponseReturnValue:
    return forward_current_request(OLLAMA)
