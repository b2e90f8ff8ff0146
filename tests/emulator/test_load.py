"""Many concurrent streams: the emulator must not be what limits a benchmark.

Timings are printed (run with ``-s`` to see them), never asserted.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time

import aiohttp
import pytest

from tests.fake_ollama.harness import FakeOllama


async def _stream(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, dict]:
    async with session.post(url, json={"model": "llama3.2:1b", "prompt": prompt}) as response:
        lines = [json.loads(line) async for line in response.content if line.strip()]
    return len(lines), lines[-1]


async def run_streams(base_url: str, count: int) -> tuple[float, list[tuple[int, dict]]]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_stream(session, base_url + "/api/generate", f"prompt {i}") for i in range(count))
        )
        return time.perf_counter() - started, results


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def load_run(fake: FakeOllama, count: int, tokens: int = 5) -> float:
    _raise_fd_limit(count * 2 + 256)
    fake.configure(num_parallel=count)
    fake.set_model("llama3.2:1b", tokens=tokens)
    asyncio.run(run_streams(fake.url, 1))  # load the model first: no pending queue involved
    elapsed, results = asyncio.run(run_streams(fake.url, count))
    assert all(lines == tokens + 1 and last["done"] for lines, last in results)
    observations = fake.observations()
    assert observations["max_in_flight"]["llama3.2:1b"] <= count
    assert observations["in_flight"]["llama3.2:1b"] == 0
    print(
        f"\n{count} concurrent streams x {tokens} tokens: {elapsed:.2f} s wall, "
        f"max in flight {observations['max_in_flight']['llama3.2:1b']}"
    )
    return elapsed


def test_500_concurrent_streams(fake: FakeOllama) -> None:
    load_run(fake, 500)


def test_2000_concurrent_streams(fake: FakeOllama) -> None:
    load_run(fake, 2000)
