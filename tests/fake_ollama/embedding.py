"""Embeddings: ``/api/embed`` (normalised) and ``/api/embeddings`` (legacy, raw)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from . import textgen
from .bodies import decode_value
from .errors import ApiError
from .exchange import Exchange
from .inference import Job, acquire_runner, go_q, lookup, ns
from .names import ModelRequired, parse_model_ref
from .scheduler import Runner
from .schemas import EMBED, EMBEDDINGS
from .state import EmulatorState


def embed_inputs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ApiError(400, "invalid input type")


async def compute_embeddings(
    state: EmulatorState,
    job: Job,
    runner: Runner,
    inputs: list[str],
    *,
    truncate: bool,
    dimensions: int,
    normalize: bool = True,
) -> tuple[list[list[float]], int]:
    """Vectors for ``inputs`` while holding a parallel slot; returns (vectors, tokens)."""
    context = min(runner.num_ctx, job.entry.context_length)
    counts = []
    for text in inputs:
        tokens = textgen.count_tokens(text)
        if tokens > context:
            if not truncate:
                raise ApiError(400, "the input length exceeds the context length")
            tokens = context
        counts.append(tokens)
    await runner.slots.acquire()
    state.obs.enter_slot(job.display)
    try:
        await asyncio.sleep(job.timing.ttft_seconds)
    finally:
        runner.slots.release()
        state.obs.leave_slot(job.display)
    size = job.entry.embedding_length
    vectors = []
    for text in inputs:
        vector = textgen.embedding(job.display, text, size, normalize=normalize)
        if normalize and 0 < dimensions < len(vector):
            vector = textgen.renormalize(vector[:dimensions])
        vectors.append(vector)
    return vectors, sum(counts)


def prepare_embed(
    state: EmulatorState, req: dict[str, Any], started: float
) -> tuple[Job, list[str]]:
    raw = req.get("model", "")
    try:
        ref = parse_model_ref(raw)
    except ModelRequired:
        raise ApiError(404, f"model '{raw}' not found") from None
    inputs = embed_inputs(req.get("input"))
    entry = state.catalog.get(ref.name) if ref.source != "cloud" else None
    if entry is None:
        raise ApiError(404, f"model {go_q(raw)} not found, try pulling it first")
    job = Job(
        raw_model=raw,
        entry=entry,
        prompt="",
        timing=state.timing(entry),
        started=started,
        keep_alive=req.get("keep_alive"),
        options=dict(req.get("options") or {}),
    )
    return job, inputs


async def embed(state: EmulatorState, ex: Exchange, value: Any) -> web.StreamResponse:
    req = decode_value(value, EMBED, "api.EmbedRequest")
    job, inputs = prepare_embed(state, req, ex.started)
    ex.record.inputs = inputs
    runner = await acquire_runner(state, job)
    try:
        loaded_at = time.monotonic()
        if not inputs:
            return await ex.json({"model": job.raw_model, "embeddings": []})
        vectors, tokens = await compute_embeddings(
            state,
            job,
            runner,
            inputs,
            truncate=req.get("truncate", True),
            dimensions=req.get("dimensions", 0),
        )
        body = {
            "model": job.raw_model,
            "embeddings": vectors,
            "total_duration": ns(time.monotonic() - job.started),
            "load_duration": ns(loaded_at - job.started),
            "prompt_eval_count": tokens,
        }
        return await ex.json(body)
    finally:
        state.scheduler.release(runner)


async def embeddings(state: EmulatorState, ex: Exchange, value: Any) -> web.StreamResponse:
    req = decode_value(value, EMBEDDINGS, "api.EmbeddingRequest")
    raw = req.get("model", "")
    entry = lookup(
        state,
        raw,
        ApiError(400, "model is required"),
        ApiError(404, f"model {go_q(raw)} not found, try pulling it first"),
    )
    job = Job(
        raw_model=raw,
        entry=entry,
        prompt=req.get("prompt", ""),
        timing=state.timing(entry),
        started=ex.started,
        keep_alive=req.get("keep_alive"),
        options=dict(req.get("options") or {}),
    )
    runner = await acquire_runner(state, job)
    try:
        if not job.prompt:
            return await ex.json({"embedding": []})
        vectors, _ = await compute_embeddings(
            state, job, runner, [job.prompt], truncate=True, dimensions=0, normalize=False
        )
        return await ex.json({"embedding": vectors[0]})
    finally:
        state.scheduler.release(runner)
