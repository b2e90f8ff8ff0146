"""The parameters of a usage read (``since``, ``until``, ``group_by``), parsed without Flask."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from management_api.usage.recorder import GROUPS

DEFAULT_WINDOW_SECONDS = 86400.0
DEFAULT_GROUP = ("caller",)


class QueryError(ValueError):
    """A parameter has a value the read cannot use; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class UsageQuery:
    since: float
    until: float
    group_by: tuple[str, ...]


def parse_time(parameter: str, raw: str) -> float:
    """Epoch seconds from epoch seconds or ISO-8601 (a time without zone is UTC)."""
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise QueryError(
                parameter,
                f"{parameter}={raw!r} is invalid: expected ISO-8601 (2026-01-31T12:00:00Z) or "
                "epoch seconds",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if not math.isfinite(value) or value < 0 or value > 253402300799:  # year 9999
        raise QueryError(parameter, f"{parameter}={raw!r} is invalid: expected epoch seconds "
                                    "between 0 and 253402300799")  # fmt: skip
    return value


def parse_query(args: dict[str, str], now: float) -> UsageQuery:
    """``since`` (default: 24 h before ``until``), ``until`` (default: now) and ``group_by``
    (one or several of caller, model, task, priority, hour, comma-separated; default caller)."""
    until = parse_time("until", args["until"]) if args.get("until") else now
    since = (
        parse_time("since", args["since"]) if args.get("since") else until - DEFAULT_WINDOW_SECONDS
    )
    if since > until:
        raise QueryError("since", "since is after until")
    raw = args.get("group_by")
    if raw is None or raw.strip() == "":
        group_by = DEFAULT_GROUP
    else:
        group_by = tuple(part.strip() for part in raw.split(","))
        unknown = [part for part in group_by if part not in GROUPS]
        if unknown or len(set(group_by)) != len(group_by):
            raise QueryError(
                "group_by",
                f"group_by={raw!r} is invalid: expected one or more of {', '.join(GROUPS)}, "
                "comma-separated, each once",
            )
    return UsageQuery(since, until, group_by)
