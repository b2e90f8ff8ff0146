"""Which priority class a request waits in (pure; the gateway calls ``resolve`` once per
admitted request, on the body it already decoded).

In order, the first that says something: the request itself (``X-LLM-Priority``; on OpenAI
routes the standard ``service_tier`` field: ``priority`` → interactive, ``flex`` → batch,
``default``/``auto`` → the caller's default), else the task's ``priority`` (tasks.toml), the
key's default (keys file), the limits file's ``priority``. The key's ceiling then caps it: a
request asking for more than its key allows is served at the ceiling, not refused, so a
client written for one deployment keeps working in another. Unknown values are a 400 naming
the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from management_api import errors
from management_api.proxy.wait_queue import BATCH, CLASSES, INTERACTIVE, RANK

HEADER = "X-LLM-Priority"
# OpenAI's service_tier values; None: the caller's default class.
SERVICE_TIERS: dict[str, str | None] = {
    "priority": INTERACTIVE,
    "flex": BATCH,
    "default": None,
    "auto": None,
}


@dataclass(frozen=True)
class CallerPolicy:
    """What the keys file says of a caller's classes and share (DEFAULT without a key)."""

    priority: str | None = None  # its default class
    ceiling: str | None = None  # the highest class it may ask for
    weight: float = 1.0  # its fair share against other callers of the same class


DEFAULT_POLICY = CallerPolicy()


def header_class(header: str | None) -> str | None:
    """The class an ``X-LLM-Priority`` value names (None without one); 400 naming the header
    for any other value."""
    if header is None:
        return None
    value = header.strip().lower()
    if value not in CLASSES:
        raise errors.BadRequest(
            f"{HEADER} must be one of {', '.join(CLASSES)}", type="invalid_priority", field=HEADER
        )
    return value


def resolve(
    *,
    header: str | None,
    payload: Any,
    openai: bool,
    task_priority: str | None,
    policy: CallerPolicy,
    default: str,
) -> str:
    base = task_priority or policy.priority or default
    asked = header_class(header)
    if (
        asked is None
        and openai
        and isinstance(payload, dict)
        and payload.get("service_tier") is not None
    ):
        tier = payload["service_tier"]
        if not isinstance(tier, str) or tier not in SERVICE_TIERS:
            raise errors.BadRequest(
                f"service_tier must be one of {', '.join(SERVICE_TIERS)}",
                type="invalid_priority", field="service_tier",
            )  # fmt: skip
        asked = SERVICE_TIERS[tier]
    chosen = asked or base
    if policy.ceiling is not None and RANK[chosen] > RANK[policy.ceiling]:
        chosen = policy.ceiling
    return chosen
