"""Command line: ``python -m tests.fake_ollama --host 127.0.0.1 --port 11433 --models a,b``.

Prints exactly one line, ``fake-ollama listening on http://HOST:PORT``, once it accepts
connections (``--port 0`` picks a free port), then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
from collections.abc import Sequence

from .config import Settings, settings_from_env
from .durations import parse_env_keep_alive
from .server import start


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _keep_alive(text: str) -> float:
    sentinel = -12345.0
    value = parse_env_keep_alive(text, default=sentinel)
    if value == sentinel:
        raise argparse.ArgumentTypeError(f"not a duration or integer seconds: {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    defaults = settings_from_env()
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_ollama",
        description="An Ollama emulator for tests and benchmarks (loopback only).",
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument(
        "--models",
        help="comma-separated installed models (default: a realistic Jetson set)",
    )
    parser.add_argument(
        "--num-parallel", type=int, default=defaults.num_parallel, help="OLLAMA_NUM_PARALLEL"
    )
    parser.add_argument(
        "--max-queue", type=int, default=defaults.max_queue, help="OLLAMA_MAX_QUEUE"
    )
    parser.add_argument(
        "--max-loaded-models",
        type=int,
        default=defaults.max_loaded_models,
        help="OLLAMA_MAX_LOADED_MODELS",
    )
    parser.add_argument(
        "--keep-alive", type=_keep_alive, default=defaults.keep_alive, help="OLLAMA_KEEP_ALIVE"
    )
    parser.add_argument(
        "--loopback-checks",
        action="store_true",
        help="reject foreign Host/Origin headers with 403, as a loopback-bound Ollama does",
    )
    parser.add_argument(
        "--prompt-eval-uncancellable",
        action="store_true",
        help="a client that leaves during prompt evaluation frees its slot only at the first "
        "token, as in Ollama (ollama/ollama#11889)",
    )
    parser.add_argument("--load-seconds", type=_non_negative_float, default=0.05)
    parser.add_argument(
        "--load-seconds-per-gb",
        type=_non_negative_float,
        default=0.0,
        help="extra load time per GB of model size",
    )
    parser.add_argument(
        "--memory-bytes", type=int, default=0, help="runner memory budget (0 = none)"
    )
    parser.add_argument("--ttft-seconds", type=_non_negative_float, default=0.01)
    parser.add_argument("--tokens-per-second", type=_non_negative_float, default=200.0)
    parser.add_argument("--tokens", type=int, default=12, help="tokens per response")
    parser.add_argument("--pull-bytes-per-second", type=_non_negative_float, default=2e9)
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the starting process dies (test harnesses: no orphaned emulators)",
    )
    args = parser.parse_args(argv)
    settings = defaults
    settings.host, settings.port = args.host, args.port
    if args.models:
        settings.models = [m.strip() for m in args.models.split(",") if m.strip()]
    settings.num_parallel = max(1, args.num_parallel)
    settings.max_queue = max(0, args.max_queue)
    settings.max_loaded_models = args.max_loaded_models if args.max_loaded_models > 0 else 3
    settings.keep_alive = args.keep_alive
    settings.loopback_checks = args.loopback_checks
    settings.prompt_eval_uncancellable = args.prompt_eval_uncancellable
    settings.timing.load_seconds = args.load_seconds
    settings.load_seconds_per_gb = args.load_seconds_per_gb
    settings.memory_bytes = max(0, args.memory_bytes)
    settings.timing.ttft_seconds = args.ttft_seconds
    settings.timing.tokens_per_second = args.tokens_per_second
    settings.timing.tokens = max(0, args.tokens)
    settings.pull_bytes_per_second = args.pull_bytes_per_second
    settings.exit_with_parent = args.exit_with_parent
    return settings


def _raise_fd_limit() -> None:
    # Thousands of concurrent streams need thousands of descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(settings: Settings) -> None:
    runner, _emulator, port = await start(settings)
    print(f"fake-ollama listening on http://{settings.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = loop.create_task(_watch_parent(stop)) if settings.exit_with_parent else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()


async def _watch_parent(stop: asyncio.Event) -> None:
    # A killed test process cannot terminate us; being re-parented is the sign it is gone.
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    _raise_fd_limit()
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(
            f"fake-ollama: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
