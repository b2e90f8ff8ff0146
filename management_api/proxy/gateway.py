"""The proxy service: admission, forwarding and bookkeeping of one client request (no Flask).

Routes hand a `ClientRequest` to `Gateway.forward` and turn the returned `ForwardedResponse` into
a WSGI response. The admission cases, in order:

1. not an inference route → forwarded unadmitted (tags, ps, show, pull, …, unknown routes);
2. ``{"model": "", "keep_alive": 0}`` on generate/chat → every loaded model is unloaded here and
   the caller gets 200 with ``done_reason: "unload"`` (never queued, never 429);
3. a load/unload form → forwarded unadmitted (control requests never wait behind generations);
4. no model, an invalid name, a malformed body, or a model that is not installed → forwarded
   unadmitted, so the caller gets Ollama's own error, never a 429;
5. otherwise the request takes a slot of its model (waiting in the model's FIFO queue) before
   anything is sent upstream; a full queue or a long wait → 429 with Retry-After; a client that
   leaves while queued is dropped from the queue.

The slot is released exactly once, when Ollama has let go of the request: at once for a response
read to its end, and after an early exit (client gone, timeout, cancel) only once Ollama closed
its side of the half-closed connection, or ``release_timeout_seconds`` passed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Container, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from management_api import errors, names
from management_api.models.catalog import Catalog
from management_api.proxy.answer_usage import NOTHING, AnswerUsage, answer_usage
from management_api.proxy.inference import (
    INFERENCE_ROUTES,
    MULTIPART_INFERENCE,
    MUTATION_ROUTES,
    UNLOAD_ALL,
    InferenceRequest,
    classify,
    parse_body,
    read_body,
    read_form,
)
from management_api.proxy.limiter import (
    SHED,
    AdmissionCancelled,
    AdmissionRejected,
    Limiter,
    Rejection,
    Slot,
    Ticket,
)
from management_api.proxy.priority import DEFAULT_POLICY, CallerPolicy
from management_api.proxy.priority import HEADER as PRIORITY_HEADER
from management_api.proxy.priority import resolve as resolve_priority
from management_api.proxy.socket_watch import SocketWatcher
from management_api.proxy.target import wire_path
from management_api.proxy.transport import (
    CLIENT_CLOSED_STATUS,
    ClientGone,
    ClientWatch,
    ConnectionPool,
    ProxiedBody,
    UpstreamBroken,
    UpstreamExchange,
    UpstreamTimeout,
    UpstreamUnreachable,
    forwardable_request_headers,
    forwardable_response_headers,
)
from management_api.proxy.wait_queue import STANDARD

log = logging.getLogger(__name__)
access_log = logging.getLogger("llm_service.access")

QUEUE_WAIT_HEADER = "X-Queue-Wait-Ms"
UNAVAILABLE_RETRY_AFTER_SECONDS = 5
UNLOAD_ALL_DEADLINE_SECONDS = 4.0
# Pulls, pushes and creates with stream:false answer only when done; bound them generously.
LONG_OPERATION_SECONDS = 6 * 3600
LONG_OPERATION_ROUTES = frozenset({"/api/pull", "/api/push", "/api/create"})


class ResponseCacheHook(Protocol):
    """The response cache (cache/): answers or coalesces a request, or calls `upstream`."""

    def forward(
        self, request: ClientRequest, upstream: Callable[[ClientRequest], ForwardedResponse]
    ) -> ForwardedResponse: ...


class RequestObserver(Protocol):
    """Metrics hook for finished requests (Prometheus attaches here)."""

    def on_request_done(self, record: dict[str, Any]) -> None: ...


@dataclass
class ClientRequest:
    method: str
    path: str  # decoded, without the query string: what every decision is taken on
    query: str  # as received (still percent-encoded)
    headers: list[tuple[str, str]]
    body: bytes
    watch: ClientWatch
    request_id: str
    flavor: str = errors.OLLAMA
    payload: Any = None  # the parsed JSON body, when the route already parsed it
    streamed_body: Iterable[bytes] | None = None  # sent instead of `body` (blob uploads)
    content_length: int | None = None
    remote_addr: str | None = None
    key_name: str | None = None  # the API key's name (never the key)
    caller: str = "anonymous"  # who is calling (access/hooks.py caller_name)
    policy: CallerPolicy = DEFAULT_POLICY  # the key's priority default, ceiling and weight
    task_priority: str | None = None  # the class its task names (tasks.toml), for branches
    task: str | None = None  # the /v1/infer task a branch runs for (usage is counted per task)
    cache: str | None = None  # what the response cache did (HIT, MISS, …), for the access log
    ticket: Ticket | None = None  # its queue place while it waits (early headers show it)

    @property
    def target(self) -> str:
        """The request target sent to Ollama: the decided-on path, encoded so that Go decodes
        it to exactly `path` (a decoded ``?`` would otherwise start a query there)."""
        return wire_path(self.path) + ("?" + self.query if self.query else "")


@dataclass
class ForwardedResponse:
    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]
    has_content_type: bool = True


@dataclass(eq=False)  # identity semantics: admissions live in a set
class Admission:
    """One request on its way through the gateway; holds its slot until the body closes."""

    request: ClientRequest
    started: float
    intent: InferenceRequest | None = None
    slot: Slot | None = None
    queue_wait: float = 0.0
    status: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    exchange: UpstreamExchange | None = None
    cancelled: str | None = None  # why the service itself ended this request (cache clear)
    pulling: str | None = None  # the model key of a forwarded POST /api/pull
    usage: AnswerUsage = NOTHING  # what the answer cost, once it is complete
    priority: str | None = None  # its class, once admission resolved it
    ticket: Ticket | None = None  # its place while queued (queue position)

    @property
    def model_key(self) -> str | None:
        return self.intent.model_key if self.intent else None

    def cancel(self, reason: str) -> None:
        """End this request from outside (e.g. its model is being unloaded)."""
        self.cancelled = reason
        if self.exchange is not None:
            self.exchange.abort()


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _pull_model_key(payload: Any) -> str | None:
    """The normalised model of an Ollama pull body (``model``, or the older ``name``)."""
    if not isinstance(payload, dict):
        return None
    model = payload.get("model") or payload.get("name")
    try:
        return names.normalize(model) if isinstance(model, str) else None
    except names.InvalidModelName:
        return None


_REASON_TEXT = {SHED: "shed: a request of a higher priority class took its queue place"}


def concurrency_limit(rejection: Rejection, model: str) -> errors.ConcurrencyLimit:
    """The 429 of a refused request (queue full or waited too long), in every protocol's form."""
    retry_after = str(rejection.retry_after_seconds)
    return errors.ConcurrencyLimit(
        f"model '{model}' is at its concurrency limit "
        f"({rejection.in_flight}/{rejection.limit} running, {rejection.queued} queued): "
        f"{_REASON_TEXT.get(rejection.reason, rejection.reason.replace('_', ' '))}; "
        f"retry after {retry_after} s",
        headers={"Retry-After": retry_after},
        # A higher class took its queue place: a type of its own, so a client can tell.
        type="shed" if rejection.reason == SHED else None,
        model=model,
        limit=rejection.limit,
        in_flight=rejection.in_flight,
        queued=rejection.queued,
        reason=rejection.reason,
        # Hermes' names for the same facts, for clients written against Hermes.
        max_concurrency=rejection.limit,
        current=rejection.in_flight,
    )


class Gateway:
    def __init__(
        self,
        *,
        ollama_url: str,
        limiter: Limiter,
        catalog: Catalog,
        pool_size: int,
        connect_timeout: float,
        grace_seconds: float,
        observer: RequestObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.catalog = catalog
        self.pool = ConnectionPool(ollama_url, maxsize=pool_size, connect_timeout=connect_timeout)
        self.grace_seconds = grace_seconds
        self.observer = observer
        self._clock = clock
        # Side work of request threads, e.g. the Hermes stream's heartbeats while it waits.
        self._helpers = ThreadPoolExecutor(
            max_workers=max(4, pool_size), thread_name_prefix="gateway-helper"
        )
        # Queued clients and upstream connections being let go of: one thread watches them all.
        self.watcher = SocketWatcher(clock=clock)
        self._active: set[Admission] = set()  # requests talking to Ollama right now
        self._active_lock = threading.Lock()
        # The healer's single-flight unload-all (it needs this gateway, so it is set after
        # construction, in Services.build).
        # Called with (deadline, the caller's key name or None).
        self.unload_all: (
            Callable[[float, str | None], tuple[list[str], list[dict[str, str]]]] | None
        ) = None
        # Who may send the unload-everything form, by API key name (the key ring's rule, set
        # by the app); None: anyone.
        self.may_unload_all: Callable[[str | None], bool] | None = None
        # The response cache, when LLM_CACHE_MAX_MB > 0 (set in Services.build, like unload_all).
        self.response_cache: ResponseCacheHook | None = None
        # Names Ollama knows (last model list + configured names); set by the wiring.
        self.known_models: Callable[[], Container[str]] | None = None

    def cancel_model(self, model_key: str, reason: str) -> int:
        """End every in-flight request for a model; each client gets `reason` as a terminal
        error. Returns how many were cancelled."""
        with self._active_lock:
            targets = [a for a in self._active if a.model_key == model_key]
        for admission in targets:
            admission.cancel(reason)
        return len(targets)

    def is_pulling(self, model_key: str) -> bool:
        """Whether a pull of this model is being forwarded to Ollama (POST /api/pull) now."""
        with self._active_lock:
            return any(a.pulling == model_key for a in self._active)

    def in_flight_requests(self) -> int:
        with self._active_lock:
            return len(self._active)

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the gateway's I/O threads (used to keep writing heartbeats meanwhile)."""
        return self._helpers.submit(fn)

    def close(self) -> None:
        self._helpers.shutdown(wait=False, cancel_futures=True)
        self.watcher.close()
        self.pool.close()

    # --- the one entry point

    def forward(self, request: ClientRequest) -> ForwardedResponse:
        self.read(request)
        # The cache sits in front of admission: a hit or a coalesced request takes no slot.
        if self.response_cache is not None:
            return self.response_cache.forward(request, self._forward)
        return self._forward(request)

    def _forward(self, request: ClientRequest) -> ForwardedResponse:
        admission = self.admit(request)
        if admission.intent is not None and admission.intent.control == UNLOAD_ALL:
            return self._unload_all(admission, admission.intent)
        return self.open(admission)

    def read(self, request: ClientRequest) -> None:
        """Read an inference request's body once, as Ollama will (`request.payload`): the cache
        key, admission and the access log all use this one reading. A body Ollama could not
        read as its request is a 400 here, never forwarded unadmitted."""
        if request.payload is not None or request.method != "POST" or not request.body:
            return
        if request.path in INFERENCE_ROUTES:
            try:
                if request.path in MULTIPART_INFERENCE:
                    request.payload = read_form(
                        _header(request.headers, "content-type"), request.body, request.query
                    )
                else:
                    request.payload = read_body(request.path, request.body)
            except errors.ApiError as err:
                self._log(Admission(request=request, started=self._clock()),
                          status=err.status, outcome="invalid_body")  # fmt: skip
                raise
        elif request.path == "/api/pull":
            request.payload = parse_body(request.body)

    def admit(self, request: ClientRequest) -> Admission:
        """Classify the request and, when it needs one, wait for its slot (cases 1-5 above)."""
        record = Admission(request=request, started=self._clock())
        self.read(request)
        payload = request.payload
        intent = classify(request.path, payload) if request.method == "POST" else None
        record.intent = intent
        if request.path == "/api/pull" and request.method == "POST":
            record.pulling = _pull_model_key(payload)
        if intent is not None and intent.needs_admission:
            assert intent.model_key is not None
            installed = self.catalog.is_installed(intent.model_key)
            if installed is None and self._unknown(intent.model_key):
                # Ollama cannot be asked now and never listed or configured this name: answer
                # as Ollama would, rather than give a made-up name a queue place (and a label).
                self._log(record, status=404, outcome="model_not_found")
                raise errors.NotFound(f"model '{intent.model}' not found")
            if installed is not False:
                record.priority = resolve_priority(
                    header=_header(request.headers, PRIORITY_HEADER.lower()),
                    payload=payload,
                    openai=request.path.startswith("/v1/"),
                    task_priority=request.task_priority,
                    policy=request.policy,
                    default=self.limiter.limits_for(intent.model_key).priority,
                )
                record.slot = self._admit(record, intent.model_key)
        return record

    def _unknown(self, model_key: str) -> bool:
        known = self.known_models
        if known is None or not self.catalog.has_list():
            return False  # nothing to tell a made-up name from a real one yet
        return model_key not in known()

    def open(
        self, admission: Admission, *, first_byte_timeout: float | None = None
    ) -> ForwardedResponse:
        """Send the admitted request upstream and wait for its headers; the slot goes with the
        returned body (or, if that fails, is released once Ollama let go of the request)."""
        try:
            return self._exchange(admission, first_byte_timeout)
        except BaseException:
            if admission.slot is not None and admission.exchange is None:
                admission.slot.release()  # failed before an exchange existed
            raise

    # --- admission

    def _admit(self, record: Admission, model_key: str) -> Slot:
        watch = record.request.watch
        client_sock = getattr(watch, "sock", None)

        def watch_queued(cancel: Callable[[], bool]) -> Callable[[], None]:
            assert client_sock is not None
            return self.watcher.watch_client(client_sock, cancel).cancel

        try:
            request = record.request

            def on_queued(ticket: Ticket) -> None:
                record.ticket = request.ticket = ticket

            slot = self.limiter.acquire(
                model_key,
                is_cancelled=watch.gone,
                watch_queued=watch_queued if client_sock is not None else None,
                priority=record.priority or STANDARD,
                caller=request.caller,
                weight=request.policy.weight,
                on_queued=on_queued,
            )
        except AdmissionCancelled:
            self._log(record, status=CLIENT_CLOSED_STATUS, outcome="client_gone_queued")
            raise ClientGone() from None
        except AdmissionRejected as exc:
            self._log(record, status=429, outcome=exc.rejection.reason)
            model = record.intent.model if record.intent else model_key
            raise concurrency_limit(exc.rejection, model) from None
        record.queue_wait = slot.queue_wait_seconds
        record.ticket = record.request.ticket = None
        return slot

    # --- forwarding

    def _timeouts(self, record: Admission) -> tuple[float, float, float]:
        """First-byte, idle and release timeouts of a request."""
        key = record.intent.model_key if record.intent else None
        limits = self.limiter.limits_for(key) if key else self.limiter.config.defaults
        if record.request.path in LONG_OPERATION_ROUTES:
            return LONG_OPERATION_SECONDS, 600.0, limits.release_timeout_seconds
        return (
            limits.first_byte_timeout_seconds,
            limits.idle_timeout_seconds,
            limits.release_timeout_seconds,
        )

    def _release(
        self, record: Admission, slot: Slot | None, seconds: float, timed_out: bool
    ) -> None:
        """Ollama has let go of the request (or the release timeout passed): free its slot."""
        with self._active_lock:
            self._active.discard(record)
        if timed_out and record.exchange is not None and record.exchange.conn is not None:
            log.warning(
                "request %s: Ollama had not closed the connection %.0f s after we let go of "
                "it; its slot is released anyway",
                record.request.request_id,
                seconds,
            )
        if slot is not None:
            slot.release()

    def _exchange(self, record: Admission, first_byte_override: float | None) -> ForwardedResponse:
        request = record.request
        headers = forwardable_request_headers(request.headers)
        headers["X-Request-ID"] = request.request_id
        first_byte_timeout, idle_timeout, release_timeout = self._timeouts(record)
        if first_byte_override is not None:
            first_byte_timeout = first_byte_override
        exchange = UpstreamExchange(
            self.pool,
            request.watch,
            grace_seconds=self.grace_seconds,
            watcher=self.watcher,
            release_timeout=release_timeout,
        )
        record.exchange = exchange
        with self._active_lock:
            self._active.add(record)
        mutation = request.path in MUTATION_ROUTES
        if mutation:
            self.catalog.mutation_started()
        try:
            if record.cancelled:
                raise UpstreamBroken()
            if request.streamed_body is not None:
                headers["Content-Length"] = str(request.content_length or 0)
                exchange.send(request.method, request.target, headers, request.streamed_body)
            else:
                exchange.send(request.method, request.target, headers, request.body or None)
            response = exchange.wait_for_headers(first_byte_timeout)
        except BaseException as exc:
            failed_at = self._clock()
            if record.cancelled and isinstance(exc, UpstreamBroken | UpstreamUnreachable):
                status, outcome = 503, "cancelled"
                api_error: errors.ApiError | None = errors.ServiceUnavailable(
                    record.cancelled, type="model_unloaded", headers={"Retry-After": "1"}
                )
            else:
                status, outcome, api_error = self._failure(exc, first_byte_timeout)
            slot = record.slot

            def released(seconds: float, timed_out: bool) -> None:
                self._release(record, slot, seconds, timed_out)
                if mutation:
                    self.catalog.mutation_ended()
                if status:
                    self._log(record, status=status, outcome=outcome, ended=failed_at,
                              released_after_ms=round(seconds * 1000, 2))  # fmt: skip

            exchange.finish(complete=False, released=released)
            if api_error is not None:
                raise api_error from None
            raise

        record.status = response.status
        first_byte_at = self._clock()
        slot = record.slot

        def on_close(body: ProxiedBody) -> None:
            # Called once Ollama has let go of the request (at once for a complete answer).
            usage = record.usage = answer_usage(body.tail)
            if slot is not None and usage.gpu_seconds is not None:
                slot.charge_seconds = usage.gpu_seconds  # fair share counts GPU time
            self._release(record, slot, body.released_after, body.release_timed_out)
            if mutation:
                self.catalog.mutation_ended()
            ttfb = first_byte_at - record.started
            self._log(
                record,
                status=response.status,
                # A cancel that lands after the last byte changed nothing for the client.
                outcome="cancelled" if record.cancelled and not body.complete else body.outcome,
                ended=body.closed_at,
                ttfb=ttfb,
                eval_count=usage.completion_tokens,
                prompt_tokens=usage.prompt_tokens,
                gpu_ms=None if usage.gpu_seconds is None else round(usage.gpu_seconds * 1000, 2),
                bytes_sent=body.bytes_sent,
                released_after_ms=None if body.complete else round(body.released_after * 1000, 2),
            )

        body = ProxiedBody(
            exchange,
            idle_timeout=idle_timeout,
            on_close=on_close,
            cancel_reason=lambda: record.cancelled,
        )
        out_headers = forwardable_response_headers(response.headers)
        content_length = response.header("content-length")
        if not response.chunked and content_length is not None:
            out_headers.append(("Content-Length", content_length))
        if record.slot is not None or (record.intent and record.intent.needs_admission):
            out_headers.append((QUEUE_WAIT_HEADER, f"{record.queue_wait * 1000:.1f}"))
        return ForwardedResponse(
            status=response.status,
            headers=out_headers,
            body=body,
            has_content_type=response.header("content-type") is not None,
        )

    def _failure(
        self, exc: BaseException, first_byte_timeout: float
    ) -> tuple[int, str, errors.ApiError | None]:
        """Status and outcome for the access log, and the API error for the client, of a
        failure before the first byte (ClientGone has nobody to answer; others pass on)."""
        if isinstance(exc, ClientGone):
            return CLIENT_CLOSED_STATUS, "client_gone_before_first_byte", None
        if isinstance(exc, UpstreamUnreachable):
            return (
                503,
                "ollama_unreachable",
                errors.ServiceUnavailable(
                    "Ollama is not reachable; it may be restarting",
                    headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
                ),
            )
        if isinstance(exc, UpstreamTimeout):
            return (
                504,
                "first_byte_timeout",
                errors.UpstreamTimeout(f"Ollama sent no response within {first_byte_timeout:g} s"),
            )
        if isinstance(exc, UpstreamBroken):
            return 502, "upstream_broken", errors.UpstreamError("the connection to Ollama failed")
        return 0, "", None

    # --- {"model": "", "keep_alive": 0}

    def _unload_all(self, record: Admission, intent: InferenceRequest) -> ForwardedResponse:
        """Unload every loaded model; bounded so the self-healing agent's 5 s timeout holds."""
        key_name = record.request.key_name
        if self.may_unload_all is not None and not self.may_unload_all(key_name):
            self._log(record, status=403, outcome="forbidden")
            raise errors.Forbidden(
                f"the key '{key_name}' may not unload every model (admin role required)"
            )
        if self.unload_all is None:
            raise errors.ServiceUnavailable("unloading is not available yet")
        unloaded, failed = self.unload_all(UNLOAD_ALL_DEADLINE_SECONDS, record.request.key_name)
        body: dict[str, Any] = {"model": "", "created_at": _utc_now()}
        if intent.kind == "chat":
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        body.update(done=True, done_reason="unload", unloaded_models=unloaded, failed_models=failed)
        payload = (json.dumps(body) + "\n").encode()
        self._log(record, status=200, outcome="unload_all")
        return ForwardedResponse(
            status=200,
            headers=[
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Length", str(len(payload))),
            ],
            body=[payload],
        )

    # --- bookkeeping

    def log_served(
        self, request: ClientRequest, *, started: float, status: int, outcome: str, **extra: Any
    ) -> None:
        """The access-log line (and metrics) of a request answered without Ollama."""
        intent = classify(request.path, request.payload) if request.method == "POST" else None
        self._log(Admission(request=request, started=started, intent=intent),
                  status=status, outcome=outcome, **extra)  # fmt: skip

    def _log(
        self,
        record: Admission,
        *,
        status: int,
        outcome: str,
        ended: float | None = None,
        **extra: Any,
    ) -> None:
        """One access-log line; ``ended`` is when the client's request ended, when that was
        before now (the line of an early exit is written once Ollama let go)."""
        duration = (ended if ended is not None else self._clock()) - record.started
        intent = record.intent
        line: dict[str, Any] = {
            "time": _utc_now(),
            "request_id": record.request.request_id,
            "remote_addr": record.request.remote_addr,
            "key": record.request.key_name,
            "caller": record.request.caller,
            "priority": record.priority,
            "method": record.request.method,
            "path": record.request.path,
            "model": intent.model if intent else None,
            "status": status,
            "outcome": outcome,
            "queue_wait_ms": round(record.queue_wait * 1000, 2),
            "duration_ms": round(duration * 1000, 2),
        }
        if record.slot is not None:
            line["model_key"] = record.slot.model  # normalised and admitted: a bounded label
            line["held_ms"] = round(record.slot.held_seconds * 1000, 2)
        if record.request.task is not None:
            line["task"] = record.request.task
        if record.request.cache is not None:
            line["cache"] = record.request.cache
        ttfb = extra.pop("ttfb", None)
        if ttfb is not None:
            line["ttfb_ms"] = round(ttfb * 1000, 2)
        line.update({k: v for k, v in extra.items() if v is not None})
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps(line, separators=(",", ":")))
        if self.observer is not None:
            try:
                self.observer.on_request_done(line)
            except Exception:
                log.exception("request observer failed")
