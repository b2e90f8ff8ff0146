"""The API contract: ``GET /openapi.json`` serves ``management_api/openapi.yaml`` as JSON.

The YAML is the maintained source (comments, readable diffs); it is parsed once per process and
the JSON rendering kept, since the document never changes while the service runs.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response
from flask.typing import ResponseReturnValue

bp = Blueprint("docs", __name__)

SPEC_RESOURCE = "openapi.yaml"


@functools.cache
def load_spec() -> dict[str, Any]:
    """The OpenAPI document as a dict (parsed on first use, then cached)."""
    text = resources.files("management_api").joinpath(SPEC_RESOURCE).read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict):
        raise ValueError(f"{SPEC_RESOURCE} does not hold a mapping")
    return spec


@functools.cache
def _spec_json() -> bytes:
    return json.dumps(load_spec(), ensure_ascii=False, separators=(",", ":")).encode()


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return Response(_spec_json(), mimetype="application/json")
