"""The cache in front of admission: serve hits, coalesce identical requests, record misses.

`ResponseCache.forward(request, upstream)` is what the gateway calls first for every request;
`upstream` is the gateway's own path (admission, then Ollama). For an inference request:

* not cacheable, ``Cache-Control: no-store``, or no digest for its model → BYPASS: forwarded
  as it is, nothing read or written;
* a stored answer that can be rendered in the request's shape → HIT: answered here, without a
  slot and without Ollama;
* an identical request already running → wait for it (watching our own client), then replay its
  answer → COALESCED. If it fails or is cancelled, the next waiter goes upstream itself;
* otherwise → MISS (``no-cache``: BYPASS): forwarded; the relayed body is recorded as it passes
  (never read ahead of the client) and stored when it finished with ``stop``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from management_api import errors, names
from management_api.cache.answers import Answer, answer_tokens, finish_reason, render, tokens_of
from management_api.cache.embeddings import (
    AnswerSplitter,
    EmbedItem,
    compose_answer,
    int_or_zero,
    split_answer,
)
from management_api.cache.policy import (
    INFER_ROUTE,
    JSON,
    NDJSON,
    NO_CACHE,
    NO_STORE,
    Plan,
    cache_control,
    embed_items,
    is_cacheable,
    item_key,
    request_key,
    request_shape,
    task_key,
)
from management_api.cache.store import LruStore
from management_api.proxy.gateway import ClientRequest, ForwardedResponse, concurrency_limit
from management_api.proxy.inference import INFERENCE_ROUTES, classify
from management_api.proxy.limiter import FollowerPlace, Limiter, QueueFull
from management_api.proxy.transport import CLIENT_CLOSED_STATUS, ClientGone

log = logging.getLogger(__name__)

HEADER = "X-Cache"
HIT, MISS, BYPASS, COALESCED = "HIT", "MISS", "BYPASS", "COALESCED"
RESULTS = (HIT, MISS, BYPASS, COALESCED)
WAIT_STEP_SECONDS = 0.25  # how often a waiting request looks at its own client
COALESCE_MAX_WAIT_SECONDS = 900.0  # then a waiter stops waiting and goes upstream itself

Upstream = Callable[[ClientRequest], ForwardedResponse]


class CacheObserver(Protocol):
    def on_cache_result(self, route: str, result: str) -> None: ...


class ServedLog(Protocol):
    """Writes the access-log line of a request answered without Ollama (the gateway's log)."""

    def __call__(
        self, request: ClientRequest, *, started: float, status: int, outcome: str, **extra: Any
    ) -> None: ...


@dataclasses.dataclass(frozen=True)
class ResultPlan:
    """What the cache does with one ``/v1/infer`` request (see ``ResponseCache.plan_result``)."""

    task: str
    result: str  # what X-Cache says when the request is not a hit: MISS or BYPASS
    key: str | None = None  # None: neither read nor written
    refresh: bool = False  # Cache-Control: no-cache: skip the lookup, store the new result
    ttl_seconds: float = 0.0


class _Flight:
    """One upstream call (or one task run) that identical requests wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Any = None  # an Answer; for a task run the stored result's JSON bytes
        self.waiters = 0


def _may_end(shape: str, chunk: bytes) -> bool:
    """Whether a relayed chunk may hold the end of an answer (checked properly only then)."""
    if shape == JSON:
        return chunk.rstrip().endswith(b"}")
    if shape == NDJSON:
        last_line = chunk[chunk.rfind(b"\n", 0, len(chunk) - 1) + 1 :]
        return chunk.endswith(b"\n") and b'"done":true' in last_line
    return chunk.endswith(b"data: [DONE]\n\n")


class _Recorder:
    """The relayed body, recorded as it passes (nothing is read ahead of the client).

    `on_end` is called exactly once: with the whole body as soon as it holds a finished answer
    (before its last chunk is handed on, so a caller that repeats the request at once finds it
    stored), else at ``close()`` with the body when it was relayed completely, or None when it
    was cut, failed, grew past `limit`, or the store had no room for it (`reserve`: the bytes a
    recording holds count against the cache's cap, and are given back before `on_end`).
    """

    def __init__(
        self,
        body: Iterable[bytes],
        *,
        shape: str,
        kind: str,
        limit: int,
        on_end: Callable[[bytes | None], None],
        reserve: Callable[[int], bool] = lambda size: True,
        unreserve: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._body = body
        self._reserve = reserve
        self._unreserve = unreserve
        self._reserved = 0
        self._shape = shape
        self._kind = kind
        self._limit = limit
        self._on_end = on_end
        self._parts: list[bytes] = []
        self._size = 0
        self._ended = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        if self._shape == JSON:
            yield from self._read_ahead()
            return
        for chunk in self._body:
            if not self._ended and self._size <= self._limit:
                if self._hold(len(chunk)):
                    self._parts.append(chunk)
                    if _may_end(self._shape, chunk):
                        body = b"".join(self._parts)
                        if finish_reason(self._kind, self._shape, body) is not None:
                            self._end(body)
                else:
                    self._parts = []  # not recorded after all: nothing more is held
            yield chunk

    def _hold(self, size: int) -> bool:
        """Count `size` more bytes against the limit and the store's cap; False (and every byte
        given back) when either says no: the answer is then relayed but not recorded."""
        if self._size + size > self._limit or not self._reserve(size):
            self._size = self._limit + 1
            self._give_back()
            return False
        self._size += size
        self._reserved += size
        return True

    def _give_back(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._unreserve(reserved)

    def _read_ahead(self) -> Iterator[bytes]:
        """A whole JSON answer, read at Ollama's pace before this client gets any of it.

        Nobody can use a JSON answer before its end, and requests waiting for the same answer
        must not wait for this client to take it (a client that reads slowly or not at all
        would hold them all): the answer is complete, and shared, as soon as Ollama sent it.
        It is held once, as the recording holds it anyway; past the recording limit the rest
        goes at the client's pace and nobody shares it.
        """
        body = iter(self._body)
        held: list[bytes] = []
        for chunk in body:
            held.append(chunk)
            if not self._hold(len(chunk)):
                break
        else:
            answer = b"".join(held)
            held = [answer] if answer else []
            if finish_reason(self._kind, self._shape, answer) is not None:
                self._end(answer)
        if not self._ended and self._size <= self._limit:
            self._parts = list(held)  # close() decides what a cut or unfinished answer was
        while held:
            yield held.pop(0)
        yield from body

    def _end(self, body: bytes | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._parts = []
        self._give_back()  # the store counts what it keeps from here on
        try:
            self._on_end(body)
        except Exception:
            log.exception("recording a cached answer failed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            complete = getattr(self._body, "complete", False) and self._size <= self._limit
            self._end(b"".join(self._parts) if complete else None)


def _replayed(stored: bytes, request_id: str) -> dict[str, Any]:
    result = json.loads(stored)
    result["request_id"] = request_id
    return result


def _with_header(response: ForwardedResponse, result: str) -> ForwardedResponse:
    return dataclasses.replace(response, headers=[*response.headers, (HEADER, result)])


class ResponseCache:
    def __init__(
        self,
        *,
        max_bytes: int,
        ttl_seconds: float,
        digest_of: Callable[[str], str | None],
        log_served: ServedLog | None = None,
        observer: CacheObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        coalesce_max_wait: float = COALESCE_MAX_WAIT_SECONDS,
        shared_across_keys: bool = False,
        limiter: Limiter | None = None,
    ) -> None:
        # Per API key unless shared: a HIT would tell one key what another key asked.
        self.shared_across_keys = shared_across_keys
        self.store = LruStore(max_bytes=max_bytes, ttl_seconds=ttl_seconds, clock=clock)
        self._digest_of = digest_of
        self._log_served = log_served
        self._observer = observer
        self._clock = clock
        self._coalesce_max_wait = coalesce_max_wait
        # Waiting for an identical request takes a queue place of the model (max_queue,
        # max_wait_seconds and the worker's capacity apply as to any queued request).
        self._limiter = limiter
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._totals = dict.fromkeys(RESULTS, 0)

    # --- the entry point

    def forward(self, request: ClientRequest, upstream: Upstream) -> ForwardedResponse:
        started = self._clock()
        plan = self.plan(request)
        if plan is None:
            return upstream(request)
        if not plan.cacheable:
            return self._pass(plan, request, upstream, BYPASS)
        if plan.items is not None:
            return self._embed(plan, request, upstream, started)
        if plan.refresh:
            return self._pass(plan, request, upstream, BYPASS, record=True)
        served = self._lookup(plan, request, started, HIT)
        return served or self._lead_or_follow(plan, request, upstream, started)

    def plan(self, request: ClientRequest) -> Plan | None:
        """What to do with a request; None for anything that is not an inference answer."""
        if request.method != "POST" or request.path not in INFERENCE_ROUTES:
            return None
        payload = request.payload  # read once, by the gateway (Gateway.read)
        intent = classify(request.path, payload)
        if intent is None or intent.control is not None:
            return None  # load/unload forms are not answers
        directives = cache_control(request.headers)
        if NO_STORE in directives or not is_cacheable(intent, payload):
            return Plan(intent, payload if isinstance(payload, dict) else {}, cacheable=False)
        assert isinstance(payload, dict) and intent.model_key is not None
        digest = self._digest_of(intent.model_key)
        if digest is None:  # not installed, or Ollama cannot say: Ollama answers itself
            return Plan(intent, payload, cacheable=False)
        refresh = NO_CACHE in directives
        scope = self.scope(request.key_name)
        try:
            if intent.kind == "embed":
                items = embed_items(payload)
                if items is not None:
                    keys = tuple(item_key(request.path, digest, payload, i, scope) for i in items)
                    return Plan(intent, payload, True, items=items, item_keys=keys,
                                refresh=refresh, digest=digest, scope=scope)  # fmt: skip
            key = request_key(request.path, digest, payload, scope)
        except ValueError:  # NaN and the like: no exact key
            return Plan(intent, payload, cacheable=False)
        shape = request_shape(intent, payload)
        return Plan(intent, payload, True, key=key, shape=shape, refresh=refresh, digest=digest,
                    scope=scope)  # fmt: skip

    def scope(self, key_name: str | None) -> str:
        """Whose entries a request may read and write: its API key's (none: the keyless
        callers'), or everyone's when LLM_CACHE_SHARED_ACROSS_KEYS is on."""
        return "" if self.shared_across_keys or key_name is None else "key:" + key_name

    # --- whole /v1/infer results (the route runs the task; see docs/cache.md)

    def plan_result(
        self,
        *,
        task: str,
        identity: str,
        ttl_seconds: float,
        cacheable: bool,
        models: Iterable[str],
        fields: dict[str, Any],
        headers: Iterable[tuple[str, str]],
        key_name: str | None = None,
    ) -> ResultPlan:
        """Key a task request on the task's config identity, the digests of every model that
        may answer and the caller's `fields`. BYPASS when the task is not `cacheable`, on
        ``no-store``, or when a model has no digest (not installed, or Ollama cannot say)."""
        directives = cache_control(list(headers))
        if not cacheable or ttl_seconds <= 0 or NO_STORE in directives:
            return ResultPlan(task, BYPASS)
        digests = []
        try:
            for model in models:
                digest = self._digest_of(names.normalize(model))
                if digest is None:
                    return ResultPlan(task, BYPASS)
                digests.append(digest)
            key = task_key(task, identity, digests, fields, self.scope(key_name))
        except ValueError:  # a name that is no model name, or NaN and the like: no exact key
            return ResultPlan(task, BYPASS)
        refresh = NO_CACHE in directives
        return ResultPlan(task, BYPASS if refresh else MISS, key, refresh, ttl_seconds)

    def answer_result(
        self,
        plan: ResultPlan,
        request_id: str,
        run: Callable[[], dict[str, Any]],
        *,
        keep_if: Callable[[dict[str, Any]], bool],
        gone: Callable[[], bool],
        max_wait: float,
    ) -> tuple[dict[str, Any], str]:
        """The result of a task request with a key, and what X-Cache says about it.

        A stored result → HIT. An identical request already running → wait for it (at most
        `max_wait`, the request's own deadline; watching `gone`) and share its stored result →
        COALESCED; if it stored none (failed, or not `keep_if`), look again and lead or wait
        anew. Otherwise `run` it (MISS; ``no-cache``: BYPASS) and store what `keep_if` accepts.
        Exceptions of `run` propagate; a waiter past `max_wait` gets a 504.
        """
        assert plan.key is not None
        if plan.refresh:
            self.count_result(plan, BYPASS)
            result = run()
            if keep_if(result):
                self.keep_result(plan, result)
            return result, BYPASS
        hit = self.lookup_result(plan, request_id)
        if hit is not None:
            return hit, HIT
        deadline = self._clock() + max_wait
        while True:
            with self._lock:
                flight = self._flights.get(plan.key)
                if flight is None:
                    flight = self._flights[plan.key] = _Flight()
                    break
                flight.waiters += 1
            try:
                stored = self._wait_result(flight, gone, deadline)
            finally:
                with self._lock:
                    flight.waiters -= 1
            if stored is not None:
                self.count_result(plan, COALESCED)
                return _replayed(stored, request_id), COALESCED
            hit = self.lookup_result(plan, request_id)
            if hit is not None:
                return hit, HIT
        stored = None
        try:
            self.count_result(plan, MISS)
            result = run()
            if keep_if(result):
                stored = self.keep_result(plan, result)
            return result, MISS
        finally:
            self._land(plan.key, flight, stored)

    def _wait_result(
        self, flight: _Flight, gone: Callable[[], bool], deadline: float
    ) -> bytes | None:
        while not flight.done.wait(WAIT_STEP_SECONDS):
            if gone():
                raise ClientGone()
            if self._clock() >= deadline:
                raise errors.ApiError(
                    "the deadline passed while an identical request was still running",
                    http_status=504,
                    type="deadline_exceeded",
                )
        return flight.answer if isinstance(flight.answer, bytes) else None

    def lookup_result(self, plan: ResultPlan, request_id: str) -> dict[str, Any] | None:
        """A stored result under this request's id (timings stay the original's), counted as
        a HIT; None otherwise."""
        if plan.key is None or plan.refresh:
            return None
        entry = self.store.get(plan.key)
        if entry is None or not isinstance(entry.value, bytes):
            return None
        self.count_result(plan, HIT)
        return _replayed(entry.value, request_id)

    def keep_result(self, plan: ResultPlan, result: dict[str, Any]) -> bytes | None:
        """Store a finished 200 result for the task's TTL (the caller decides it is whole);
        the stored JSON, or None when it was not stored."""
        if plan.key is None:
            return None
        try:
            body = json.dumps(result, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode("utf-8", "surrogatepass")  # fmt: skip
        except ValueError:
            return None
        stored = self.store.put(plan.key, INFER_ROUTE, plan.task, body, len(body),
                                ttl_seconds=plan.ttl_seconds)  # fmt: skip
        return body if stored else None

    def count_result(self, plan: ResultPlan, result: str) -> None:
        # Task names come from the tasks file: a bounded set of labels.
        self._count_route(INFER_ROUTE, plan.task, result)

    # --- hits and coalescing

    def _lookup(
        self, plan: Plan, request: ClientRequest, started: float, result: str
    ) -> ForwardedResponse | None:
        assert plan.key is not None
        entry = self.store.get(plan.key)
        if entry is None:
            return None
        rendered = render(entry.value, plan.shape)
        if rendered is None:
            return None
        return self._served(plan, request, started, rendered, result, answer_tokens(entry.value))

    def _served(
        self,
        plan: Plan,
        request: ClientRequest,
        started: float,
        rendered: tuple[str, list[bytes]],
        result: str,
        saved_tokens: int | None = None,
    ) -> ForwardedResponse:
        """Answer from the cache; ``saved_tokens`` (the replayed answer's prompt + completion
        tokens, for usage accounting) is read from the body when not given."""
        content_type, pieces = rendered
        if saved_tokens is None:
            saved_tokens = tokens_of(pieces[-1]) if pieces else 0
        headers = [("Content-Type", content_type)]
        if plan.shape == JSON:
            headers.append(("Content-Length", str(sum(map(len, pieces)))))
        headers.append((HEADER, result))
        self._count(plan, result)
        request.cache = result
        if self._log_served is not None:
            self._log_served(request, started=started, status=200,
                             outcome="cache_hit" if result == HIT else "coalesced",
                             bytes_sent=sum(map(len, pieces)),
                             saved_tokens=saved_tokens)  # fmt: skip
        # A JSON answer in pieces (a reassembled batch) goes out in blocks; stream lines as
        # they are, one write each, as Ollama sent them.
        body = _in_blocks(pieces) if plan.shape == JSON else pieces
        return ForwardedResponse(status=200, headers=headers, body=body)

    def _lead_or_follow(
        self, plan: Plan, request: ClientRequest, upstream: Upstream, started: float
    ) -> ForwardedResponse:
        assert plan.key is not None
        deadline = self._clock() + self._coalesce_max_wait
        while True:
            with self._lock:
                flight = self._flights.get(plan.key)
                if flight is None:
                    flight = self._flights[plan.key] = _Flight()
                    break
                flight.waiters += 1
            try:
                place = self._follow(plan, request, started)
                try:
                    wait_until = deadline if place is None else min(deadline, place.deadline)
                    answer = self._wait(flight, request, started, wait_until)
                    if answer is None and place is not None and self._clock() >= place.deadline:
                        rejection = place.timed_out().rejection
                        self._log_rejected(request, started, rejection.reason)
                        raise concurrency_limit(rejection, plan.intent.model or "")
                finally:
                    if place is not None:
                        place.release()
            finally:
                with self._lock:
                    flight.waiters -= 1
            if answer is not None:
                rendered = render(answer, plan.shape)
                if rendered is not None:
                    return self._served(
                        plan, request, started, rendered, COALESCED, answer_tokens(answer)
                    )
            if answer is not None or self._clock() >= deadline:
                return self._pass(plan, request, upstream, MISS, record=True)
            # The first request failed or was cancelled: look again, then lead or wait anew.
            served = self._lookup(plan, request, started, HIT)
            if served is not None:
                return served
        return self._pass(plan, request, upstream, MISS, record=True, flight=flight)

    def _follow(self, plan: Plan, request: ClientRequest, started: float) -> FollowerPlace | None:
        if self._limiter is None or not plan.intent.model_key:
            return None
        try:
            return self._limiter.follow(plan.intent.model_key)
        except QueueFull as exc:
            self._log_rejected(request, started, exc.rejection.reason)
            raise concurrency_limit(exc.rejection, plan.intent.model or "") from None

    def _log_rejected(self, request: ClientRequest, started: float, reason: str) -> None:
        if self._log_served is not None:
            self._log_served(request, started=started, status=429, outcome=reason)

    def _wait(
        self, flight: _Flight, request: ClientRequest, started: float, deadline: float
    ) -> Answer | None:
        while not flight.done.wait(WAIT_STEP_SECONDS):
            if request.watch.gone():
                if self._log_served is not None:
                    self._log_served(request, started=started, status=CLIENT_CLOSED_STATUS,
                                     outcome="client_gone_coalescing")  # fmt: skip
                raise ClientGone()
            if self._clock() >= deadline:
                return None
        return flight.answer

    def _land(self, key: str, flight: _Flight, answer: Any) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.answer = answer
        flight.done.set()

    # --- misses

    def _pass(
        self,
        plan: Plan,
        request: ClientRequest,
        upstream: Upstream,
        result: str,
        *,
        record: bool = False,
        flight: _Flight | None = None,
    ) -> ForwardedResponse:
        """Forward upstream; with `record`, keep the answer when it finished with ``stop``."""
        request.cache = result
        try:
            response = upstream(request)
        except BaseException:
            if flight is not None:
                assert plan.key is not None
                self._land(plan.key, flight, None)
            raise
        self._count(plan, result)
        if not record or response.status != 200:
            if flight is not None:
                assert plan.key is not None
                self._land(plan.key, flight, None)
            return _with_header(response, result)
        content_type = next(
            (v for n, v in response.headers if n.lower() == "content-type"), "application/json"
        )

        def recorded(body: bytes | None) -> None:
            answer = self._keep(plan, content_type, body) if body is not None else None
            if flight is not None:
                assert plan.key is not None
                self._land(plan.key, flight, answer)

        body = _Recorder(response.body, shape=plan.shape, kind=plan.intent.kind,
                         limit=self.store.max_bytes // 4, on_end=recorded,
                         reserve=self.store.reserve, unreserve=self.store.unreserve)  # fmt: skip
        return dataclasses.replace(
            response, headers=[*response.headers, (HEADER, result)], body=body
        )

    def _keep(self, plan: Plan, content_type: str, body: bytes) -> Answer | None:
        """Store a relayed answer; return it when waiting requests may share it."""
        kind = plan.intent.kind
        if plan.items is not None:  # the split checks the answer as a whole: no second pass
            self._keep_items(plan, list(plan.items), body)
            return None
        reason = finish_reason(kind, plan.shape, body)
        if reason is None:
            return None
        answer = Answer(kind, {plan.shape: body}, {plan.shape: content_type})
        if reason == "stop":
            assert plan.key is not None
            entry = self.store.get(plan.key)
            if entry is not None and isinstance(entry.value, Answer):
                answer = entry.value.merged(answer)
            self.store.put(plan.key, request_route(plan), self._model(plan), answer, answer.size)
        return answer

    # --- /api/embed, item by item

    def _embed(
        self, plan: Plan, request: ClientRequest, upstream: Upstream, started: float
    ) -> ForwardedResponse:
        assert plan.items is not None
        found: dict[int, EmbedItem] = {}
        if not plan.refresh:
            for index, key in enumerate(plan.item_keys):
                entry = self.store.get(key)
                if entry is not None and isinstance(entry.value, EmbedItem):
                    found[index] = entry.value
        result = BYPASS if plan.refresh else MISS
        if not found:
            return self._pass(plan, request, upstream, result, record=True)
        model = str(plan.payload.get("model"))
        if len(found) == len(plan.items):
            items = [found[i] for i in range(len(plan.items))]
            tokens = sum(item.tokens for item in items)
            pieces = compose_answer(
                model,
                items,
                total_duration=max(item.total_duration for item in items),
                load_duration=max(item.load_duration for item in items),
                prompt_eval_count=tokens,
            )
            return self._served(plan, request, started,
                                ("application/json; charset=utf-8", pieces), HIT,
                                saved_tokens=tokens)  # fmt: skip
        return self._embed_misses(plan, request, upstream, found, model)

    def _embed_misses(
        self,
        plan: Plan,
        request: ClientRequest,
        upstream: Upstream,
        found: dict[int, EmbedItem],
        model: str,
    ) -> ForwardedResponse:
        """Send only the inputs not found (once each, in order) and reassemble the answer."""
        assert plan.items is not None
        missing = list(dict.fromkeys(t for i, t in enumerate(plan.items) if i not in found))
        payload = {**plan.payload, "input": missing}
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        partial = dataclasses.replace(request, body=body, payload=payload,
                                      content_length=len(body))  # fmt: skip
        partial.cache = request.cache = MISS
        response = upstream(partial)
        self._count(plan, MISS)
        if response.status != 200:
            return _with_header(response, MISS)
        # Split as it arrives: each vector is copied out once whole, the answer is not held twice.
        splitter = AnswerSplitter()
        try:
            for chunk in response.body:
                splitter.feed(chunk)
        finally:
            close = getattr(response.body, "close", None)
            if close is not None:
                close()
        if not getattr(response.body, "complete", False):
            if request.watch.gone():
                raise ClientGone()
            raise errors.UpstreamError("the connection to Ollama failed mid-answer")
        split = split_answer(missing, splitter)
        if split is None:
            raise errors.UpstreamError("Ollama sent an embedding answer that does not fit")
        fetched, fields = split
        self._store_items(plan, fetched)
        items = [found.get(i) or fetched[text] for i, text in enumerate(plan.items)]
        upstream_tokens = fields.get("prompt_eval_count")
        tokens = upstream_tokens if isinstance(upstream_tokens, int) else 0
        out = compose_answer(
            model,
            items,
            total_duration=int_or_zero(fields.get("total_duration")),
            load_duration=int_or_zero(fields.get("load_duration")),
            prompt_eval_count=tokens + sum(item.tokens for item in found.values()),
        )
        headers = [(n, v) for n, v in response.headers if n.lower() != "content-length"]
        headers += [("Content-Length", str(sum(map(len, out)))), (HEADER, MISS)]
        return ForwardedResponse(status=200, headers=headers, body=_in_blocks(out))

    def _keep_items(self, plan: Plan, texts: list[str], body: bytes) -> None:
        split = split_answer(texts, body)
        if split is not None:
            self._store_items(plan, split[0])

    def _store_items(self, plan: Plan, items: dict[str, EmbedItem]) -> None:
        assert plan.items is not None and plan.digest is not None
        route, model = request_route(plan), self._model(plan)
        for text, item in items.items():
            key = item_key(route, plan.digest, plan.payload, text, plan.scope)
            self.store.put(key, route, model, item, item.size)

    # --- bookkeeping

    @staticmethod
    def _model(plan: Plan) -> str:
        return plan.intent.model_key or ""

    def _count(self, plan: Plan, result: str) -> None:
        # Installed models only: a bounded set of labels.
        model = self._model(plan) if plan.digest is not None else None
        self._count_route(request_route(plan), model, result)

    def _count_route(self, route: str, model: str | None, result: str) -> None:
        with self._lock:
            self._totals[result] += 1
            if model is not None:
                counts = self._counts.setdefault((route, model), dict.fromkeys(RESULTS, 0))
                counts[result] += 1
        if self._observer is not None:
            self._observer.on_cache_result(route, result)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)

    def clear(self) -> int:
        return self.store.clear()

    def snapshot(self) -> dict[str, Any]:
        """What GET /api/cache shows."""
        stored = self.store.snapshot()
        with self._lock:
            totals = dict(self._totals)
            counts = {k: dict(v) for k, v in self._counts.items()}
            in_flight = len(self._flights)
            waiting = sum(flight.waiters for flight in self._flights.values())
        rows = []
        for route, model in sorted(set(counts) | set(stored["groups"])):
            group = stored["groups"].get((route, model), {"entries": 0, "bytes": 0})
            results = counts.get((route, model), dict.fromkeys(RESULTS, 0))
            rows.append({"route": route, "model": model, **group,
                         **_results(results)})  # fmt: skip
        return {
            "enabled": True,
            "max_bytes": self.store.max_bytes,
            "ttl_seconds": self.store.ttl_seconds,
            "entries": stored["entries"],
            "bytes": stored["bytes"],
            "recording_bytes": stored["recording_bytes"],
            "evictions": stored["evictions"],
            "expirations": stored["expirations"],
            "in_flight": in_flight,
            "waiting": waiting,
            **_results(totals),
            "routes": rows,
        }


_ROUTE_OF_KIND = {kind: path for path, kind in INFERENCE_ROUTES.items()}


def _in_blocks(pieces: list[bytes], size: int = 1 << 16) -> Iterator[bytes]:
    """Pieces joined into blocks of about `size` bytes as they are sent: a reassembled batch
    goes out in a few writes, not two per vector, and never as a whole second copy."""
    block: list[bytes] = []
    held = 0
    for piece in pieces:
        block.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(block)
            block, held = [], 0
    if block:
        yield b"".join(block)


def request_route(plan: Plan) -> str:
    """The route a plan's request came to (a bounded label)."""
    return _ROUTE_OF_KIND.get(plan.intent.kind, "other")


def _results(counts: dict[str, int]) -> dict[str, Any]:
    looked_up = counts[HIT] + counts[COALESCED] + counts[MISS]
    ratio = round((counts[HIT] + counts[COALESCED]) / looked_up, 4) if looked_up else None
    return {
        "requests": {result.lower(): counts[result] for result in RESULTS},
        "hit_ratio": ratio,
    }
