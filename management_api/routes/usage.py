"""GET /api/usage: usage per caller, model, task or class over a time range (admin)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from management_api.errors import BadRequest
from management_api.usage.query import QueryError, parse_query
from management_api.usage.recorder import totals

bp = Blueprint("usage", __name__)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


@bp.get("/api/usage")
def usage() -> ResponseReturnValue:
    recorder = current_app.extensions["llm_service"].usage  # built with the services, always
    try:
        query = parse_query(request.args.to_dict(), time.time())
    except QueryError as exc:
        raise BadRequest(str(exc), field=exc.parameter) from None
    rows = recorder.report(query.since, query.until, query.group_by)
    for row in rows:
        if "hour" in row:
            row["hour"] = _iso(row["hour"])
    return jsonify(
        since=_iso(query.since),
        until=_iso(query.until),
        bucket_seconds=recorder.bucket_seconds,
        group_by=list(query.group_by),
        groups=rows,
        totals=totals(rows),
    )
