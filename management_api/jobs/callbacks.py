"""Callbacks: the finished job POSTed to its ``callback_url``, retried with backoff.

Only hosts in ``LLM_JOBS_CALLBACK_HOSTS`` may be called (an entry ``host`` allows every port of
that host, ``host:port`` only that port), so a job cannot make the service a relay to internal
addresses; redirects are not followed for the same reason (a 3xx counts as a failed attempt).
Delivery state lives in the jobs table, so pending callbacks survive a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import requests

MAX_URL_LENGTH = 2048
CONNECT_TIMEOUT_SECONDS = 3.0
USER_AGENT = "llm-service-jobs"


class CallbackRefused(ValueError):
    """The URL is malformed or its host is not allowed."""


def check_url(url: object, allowed_hosts: Iterable[str]) -> str:
    """The URL when callbacks to it are allowed; else `CallbackRefused` saying why."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"callback_url must be an http(s) URL of at most {MAX_URL_LENGTH} "
                              "characters")  # fmt: skip
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise CallbackRefused("callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url must not carry credentials")
    host = parts.hostname.lower().rstrip(".")
    port = port or (443 if parts.scheme == "https" else 80)
    entries = [entry.strip().lower() for entry in allowed_hosts if entry.strip()]
    if not entries:
        raise CallbackRefused("callbacks are off: no host is allowed (LLM_JOBS_CALLBACK_HOSTS)")
    if host in entries or f"{host}:{port}" in entries or f"[{host}]:{port}" in entries:
        return url
    raise CallbackRefused(f"callback_url host '{host}:{port}' is not in LLM_JOBS_CALLBACK_HOSTS")


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """The wait after failed attempt number `attempt` (1-based): base, 2·base, 4·base, … cap."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def deliver(
    session: requests.Session, url: str, job: dict, timeout: float
) -> tuple[bool, int | None, str | None]:
    """POST the job; (delivered, status, error). Delivered means a 2xx answer."""
    try:
        response = session.post(
            url,
            json=job,
            timeout=(CONNECT_TIMEOUT_SECONDS, timeout),
            allow_redirects=False,
            headers={"User-Agent": USER_AGENT, "X-Job-Id": job["id"]},
        )
    except requests.RequestException as exc:
        return False, None, type(exc).__name__
    response.close()  # the body is not read: only the status counts
    delivered = 200 <= response.status_code < 300
    return (
        delivered,
        response.status_code,
        None if delivered else f"answered {response.status_code}",
    )
