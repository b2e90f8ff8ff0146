"""Generation: ``/api/generate`` and ``/api/chat``, and the engine the OpenAI layer reuses.

Validation follows the order of Ollama's handlers (``server/routes.go``) so the same
bad request yields the same error. Token timing: the runner is acquired (queue +
load = ``load_duration``), a parallel slot is taken (waiting only counts in
``total_duration``), the prompt is "evaluated" for ``ttft_seconds``, then tokens follow
at ``tokens_per_second``, deadline-based so a busy loop catches up instead of drifting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from . import textgen
from .bodies import decode_value
from .config import Timing
from .errors import ApiError
from .exchange import Exchange, go_json, go_str
from .models import ModelEntry
from .names import ModelRequired, parse_model_ref
from .scheduler import Runner
from .schemas import CHAT, GENERATE, RUNNER_OPTIONS, check_options
from .state import EmulatorState
from .timefmt import utc_now_rfc3339

TEMPLATE_TOKENS = 10  # what a chat template adds around the prompt


def go_q(text: str) -> str:
    """Go's ``%q`` for ordinary strings."""
    return json.dumps(text, ensure_ascii=False)


@dataclass
class Job:
    """One inference request after validation."""

    raw_model: str
    entry: ModelEntry
    prompt: str
    timing: Timing
    started: float
    keep_alive: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    think: bool = False
    templated: bool = True
    scripted: list[str] | None = None  # words of a scripted answer (scripts.py)
    format: Any = None  # "json" or a JSON schema: the answer is one JSON object

    @property
    def stops(self) -> list[str]:
        value = self.options.get("stop")
        return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []

    @property
    def display(self) -> str:
        return self.entry.name.display

    def effective_options(self, default_num_ctx: int) -> dict[str, Any]:
        """Defaults, then the model's parameters, then the request (``modelOptions``)."""
        merged = {"num_ctx": default_num_ctx, **self.entry.parameters, **self.options}
        merged["num_ctx"] = int(merged.get("num_ctx") or default_num_ctx)
        return merged

    @property
    def num_predict(self) -> int:
        value = self.options.get("num_predict")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else -1


@dataclass
class Result:
    done_reason: str
    prompt_eval_count: int
    eval_count: int
    load_duration: int
    prompt_eval_duration: int
    eval_duration: int
    total_duration: int = 0
    content: str = ""
    thinking: str = ""

    def metrics(self) -> dict[str, int]:
        return {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }


class Sink(Protocol):
    """Renders a generation for one API flavour (native NDJSON, OpenAI SSE, …)."""

    def begin(self) -> None: ...

    async def piece(self, kind: str, text: str) -> None: ...

    async def done(self, result: Result) -> web.StreamResponse: ...


def ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))


# --- model resolution ---------------------------------------------------------------------


def lookup(state: EmulatorState, raw: str, missing: ApiError, not_found: ApiError) -> ModelEntry:
    try:
        ref = parse_model_ref(raw)
    except ModelRequired:
        raise missing from None
    entry = state.catalog.get(ref.name) if ref.source != "cloud" else None
    if entry is None:
        raise not_found
    return entry


def capability_error(job: Job, wanted: list[str], verb: str) -> ApiError | None:
    missing = [cap for cap in wanted if cap not in job.entry.capabilities]
    if not missing:
        return None
    if "completion" in missing:
        return ApiError(400, f"{go_q(job.raw_model)} does not support {verb}")
    return ApiError(400, f"{job.entry.name.full} does not support " + "\n".join(missing))


def think_error(job: Job, requested: bool | str | None) -> ApiError | None:
    """Thinking models think unless told not to; others reject an explicit request."""
    if "thinking" in job.entry.capabilities:
        job.think = requested is None or requested is not False
        return None
    if requested is not None and requested is not False:
        return ApiError(400, f"{go_q(job.raw_model)} does not support thinking")
    return None


# --- running a generation -------------------------------------------------------------------


async def acquire_runner(state: EmulatorState, job: Job) -> Runner:
    check_options(job.options)
    options = job.effective_options(state.settings.context_length)
    signature = tuple(options.get(name) for name in RUNNER_OPTIONS)
    return await state.scheduler.acquire(
        job.entry, signature, options["num_ctx"], job.keep_alive, job.timing.load_seconds
    )


def _plan(job: Job) -> tuple[list[tuple[str, str]], str]:
    tokens = max(0, job.timing.tokens)
    plan = []
    if job.scripted is not None:
        plan = [("content", piece) for piece in job.scripted]
        limit = job.num_predict
        return (plan[:limit], "length") if 0 < limit < len(plan) else (plan, "stop")
    if job.think:
        thought = textgen.words(job.display, job.prompt, max(2, tokens // 2), thinking=True)
        plan.extend(("thinking", word) for word in thought)
    words = textgen.words(job.display, job.prompt, tokens)
    if job.format not in (None, ""):  # llm/server.go: "json" or a schema ({} too) constrains
        words = [json.dumps({"answer": "".join(words).strip()})]
    plan.extend(("content", word) for word in words)
    if job.stops:
        # The runner stops where a stop sequence appears; "" appears before the first token.
        text = ""
        for index, (part, piece) in enumerate(plan):
            if part == "content" and any(s in text + piece for s in job.stops):
                return plan[:index], "stop"
            text += piece if part == "content" else ""
    limit = job.num_predict
    if 0 < limit < len(plan):
        return plan[:limit], "length"
    return plan, "stop"


async def _pieces(job: Job, plan: list[tuple[str, str]]) -> AsyncIterator[tuple[str, str]]:
    interval = 1.0 / job.timing.tokens_per_second if job.timing.tokens_per_second > 0 else 0.0
    start = time.monotonic()
    for index, piece in enumerate(plan):
        delay = start + index * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield piece


async def _evaluate_prompt(state: EmulatorState, seconds: float) -> None:
    """Prompt evaluation: with ``prompt_eval_uncancellable`` a cancel (the client left) is
    noticed only once the first token would have been produced, as in Ollama's runner, which
    checks the request's context between tokens only (ollama/ollama#11889)."""
    until = time.monotonic() + seconds
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if not state.settings.prompt_eval_uncancellable:
            raise
        while (left := until - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.CancelledError):  # a second cancel changes nothing
                await asyncio.sleep(left)
        raise


async def generate_into(
    state: EmulatorState, job: Job, runner: Runner, sink: Sink
) -> web.StreamResponse:
    """Run one generation on ``runner`` (already acquired) and render it through ``sink``."""
    loaded_at = time.monotonic()
    plan, reason = _plan(job)
    record = getattr(getattr(sink, "ex", None), "record", None)
    await runner.slots.acquire()
    state.obs.enter_slot(job.display, record)
    content: list[str] = []
    thinking: list[str] = []
    try:
        slot_at = time.monotonic()
        await _evaluate_prompt(state, job.timing.ttft_seconds)
        evaluated_at = time.monotonic()
        async for kind, text in _pieces(job, plan):
            (thinking if kind == "thinking" else content).append(text)
            await sink.piece(kind, text)
        finished_at = time.monotonic()
    finally:
        runner.slots.release()
        state.obs.leave_slot(job.display, record)
    interval = 1.0 / job.timing.tokens_per_second if job.timing.tokens_per_second > 0 else 0.0
    result = Result(
        done_reason=reason,
        prompt_eval_count=textgen.count_tokens(job.prompt)
        + (TEMPLATE_TOKENS if job.templated else 0),
        eval_count=len(plan),
        load_duration=ns(loaded_at - job.started),
        prompt_eval_duration=ns(evaluated_at - slot_at),
        eval_duration=ns(finished_at - evaluated_at + interval),
        content="".join(content),
        thinking="".join(thinking),
    )
    result.total_duration = ns(time.monotonic() - job.started)
    return await sink.done(result)


async def run_job(state: EmulatorState, job: Job, sink: Sink) -> web.StreamResponse:
    script = state.scripts.take(job.entry.name.key)
    if script is not None:
        script.apply(job)
    runner = await acquire_runner(state, job)
    try:
        sink.begin()  # errors raised by scheduling still answer with c.JSON
        return await generate_into(state, job, runner, sink)
    finally:
        state.scheduler.release(runner)


# --- native sinks -----------------------------------------------------------------------------


class GenerateSink:
    def __init__(self, ex: Exchange, job: Job, stream: bool, with_context: bool) -> None:
        self.ex, self.job, self.stream, self.with_context = ex, job, stream, with_context

    def begin(self) -> None:
        if self.stream:
            self.ex.begin_stream()

    async def piece(self, kind: str, text: str) -> None:
        if not self.stream:
            return
        # Hand-assembled for speed; the same bytes go_json would produce.
        head = b'{"model":' + go_str(self.job.raw_model) + b',"created_at":"'
        head += utc_now_rfc3339().encode()
        if kind == "thinking":
            body = b'","response":"","thinking":' + go_str(text)
        else:
            body = b'","response":' + go_str(text)
        await self.ex.line(head + body + b',"done":false}\n')

    async def done(self, result: Result) -> web.StreamResponse:
        final: dict[str, Any] = {
            "model": self.job.raw_model,
            "created_at": utc_now_rfc3339(),
            "response": "" if self.stream else result.content,
        }
        if result.thinking and not self.stream:
            final["thinking"] = result.thinking
        final["done"] = True
        final["done_reason"] = result.done_reason
        if self.with_context:
            final["context"] = textgen.context_ids(
                self.job.display,
                self.job.prompt + result.content,
                result.prompt_eval_count + result.eval_count,
            )
        final.update(result.metrics())
        if not self.stream:
            return await self.ex.json(final)
        await self.ex.line(go_json(final) + b"\n")
        return await self.ex.finish()


class ChatSink:
    def __init__(self, ex: Exchange, job: Job, stream: bool) -> None:
        self.ex, self.job, self.stream = ex, job, stream

    def begin(self) -> None:
        if self.stream:
            self.ex.begin_stream()

    async def piece(self, kind: str, text: str) -> None:
        if not self.stream:
            return
        # Hand-assembled for speed; the same bytes go_json would produce.
        head = b'{"model":' + go_str(self.job.raw_model) + b',"created_at":"'
        head += utc_now_rfc3339().encode() + b'","message":{"role":"assistant","content":'
        body = b'"","thinking":' + go_str(text) if kind == "thinking" else go_str(text)
        await self.ex.line(head + body + b'},"done":false}\n')

    async def done(self, result: Result) -> web.StreamResponse:
        message = {"role": "assistant", "content": "" if self.stream else result.content}
        if result.thinking and not self.stream:
            message["thinking"] = result.thinking
        final: dict[str, Any] = {
            "model": self.job.raw_model,
            "created_at": utc_now_rfc3339(),
            "message": message,
            "done": True,
            "done_reason": result.done_reason,
        }
        final.update(result.metrics())
        if not self.stream:
            return await self.ex.json(final)
        await self.ex.line(go_json(final) + b"\n")
        return await self.ex.finish()


# --- handlers ----------------------------------------------------------------------------------


def _check_top_logprobs(req: dict[str, Any]) -> None:
    if not 0 <= req.get("top_logprobs", 0) <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")


def _special_form(model: str, done_reason: str, chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "created_at": utc_now_rfc3339()}
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    body["done"] = True
    body["done_reason"] = done_reason
    return body


def prepare_generate(state: EmulatorState, req: dict[str, Any], started: float) -> Job:
    """Validate a ``GenerateRequest`` dict up to (not including) scheduling."""
    _check_top_logprobs(req)
    raw = req.get("model", "")
    not_found = ApiError(404, f"model '{raw}' not found")
    entry = lookup(state, raw, not_found, not_found)
    job = Job(
        raw_model=raw,
        entry=entry,
        prompt=req.get("prompt", ""),
        timing=state.timing(entry),
        started=started,
        keep_alive=req.get("keep_alive"),
        options=dict(req.get("options") or {}),
        templated=not req.get("raw", False),
        format=req.get("format"),
    )
    return job


async def generate(state: EmulatorState, ex: Exchange, value: Any) -> web.StreamResponse:
    req = decode_value(value, GENERATE, "api.GenerateRequest")
    job = prepare_generate(state, req, ex.started)
    if job.prompt == "" and job.keep_alive == 0:
        state.scheduler.expire(job.entry)
        return await ex.json(_special_form(job.raw_model, "unload", chat=False))
    if req.get("raw") and (req.get("template") or req.get("system") or req.get("context")):
        raise ApiError(400, "raw mode does not support template, system, or context")
    wanted = ["completion"] + (["insert"] if req.get("suffix") else [])
    error = think_error(job, req.get("think")) or capability_error(job, wanted, "generate")
    if error is not None:
        raise error
    if job.prompt == "":
        runner = await acquire_runner(state, job)
        try:
            return await ex.json(_special_form(job.raw_model, "load", chat=False))
        finally:
            state.scheduler.release(runner)
    job.prompt = "\n".join(part for part in (req.get("system", ""), job.prompt) if part)
    stream = req.get("stream", True)
    return await run_job(state, job, GenerateSink(ex, job, stream, with_context=job.templated))


def chat_prompt(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)


def prepare_chat(state: EmulatorState, req: dict[str, Any], started: float) -> Job:
    _check_top_logprobs(req)
    raw = req.get("model", "")
    entry = lookup(
        state, raw, ApiError(400, "model is required"), ApiError(404, f"model '{raw}' not found")
    )
    messages = req.get("messages") or []
    return Job(
        raw_model=raw,
        entry=entry,
        prompt=chat_prompt(messages),
        timing=state.timing(entry),
        started=started,
        keep_alive=req.get("keep_alive"),
        options=dict(req.get("options") or {}),
        format=req.get("format"),
    )


def validate_chat(job: Job, req: dict[str, Any]) -> None:
    wanted = ["completion"] + (["tools"] if req.get("tools") else [])
    error = think_error(job, req.get("think")) or capability_error(job, wanted, "chat")
    if error is not None:
        raise error


async def chat(state: EmulatorState, ex: Exchange, value: Any) -> web.StreamResponse:
    req = decode_value(value, CHAT, "api.ChatRequest")
    job = prepare_chat(state, req, ex.started)
    messages = req.get("messages") or []
    if not messages and job.keep_alive == 0:
        state.scheduler.expire(job.entry)
        return await ex.json(_special_form(job.raw_model, "unload", chat=True))
    validate_chat(job, req)
    if not messages:
        runner = await acquire_runner(state, job)
        try:
            return await ex.json(_special_form(job.raw_model, "load", chat=True))
        finally:
            state.scheduler.release(runner)
    return await run_job(state, job, ChatSink(ex, job, req.get("stream", True)))
