"""OpenAI- and Anthropic-compatible routes (/v1/…) forwarded to Ollama's compatibility layer.

Inference routes (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses,
/v1/messages) go through admission; our own errors use the OpenAI envelope, so the OpenAI SDKs
retry a 429 by themselves. /v1/models and anything else pass through.
"""

from flask import Blueprint
from flask.typing import ResponseReturnValue

from management_api.errors import OPENAI
from management_api.routes.forwarding import forward_current_request
from management_api.routes.ollama_api import METHODS

bp = Blueprint("openai_api", __name__)


@bp.route("/v1/<path:rest>", methods=METHODS, provide_automatic_options=False)
def forward(rest: str) -> ResponseReturnValue:
    return forward_current_request(OPENAI)
