"""The accounting load generator: a fixed number of client threads firing a random mix."""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass

from bench.reliability.client import execute
from bench.reliability.ledger import Ledger, RequestSpec

APIS = ("generate", "chat", "openai", "hermes")


@dataclass
class Mix:
    """What the generator sends. Weights need not sum to one."""

    models: tuple[str, ...]
    stream_share: float = 0.6
    cancel_before_headers_share: float = 0.08
    cancel_mid_stream_share: float = 0.08
    # Before-headers cancels wait this long: short ones leave while queued, longer ones
    # while Ollama loads the model or is slow to the first byte.
    cancel_delay_s: tuple[float, float] = (0.02, 1.5)
    pause_s: tuple[float, float] = (0.0, 0.25)  # think time between a thread's requests


class LoadGenerator:
    """`concurrency` threads, each sending one request at a time until stopped."""

    def __init__(
        self,
        host: str,
        port: int,
        mix: Mix,
        *,
        concurrency: int,
        deadline_s: float,
        seed: int = 0,
        id_prefix: str = "rel",
    ) -> None:
        self.host, self.port, self.mix = host, port, mix
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.ledger = Ledger()
        self.id_prefix = id_prefix
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        self._stop = threading.Event()
        self._seed = seed
        self._threads: list[threading.Thread] = []

    def _next_spec(self, rng: random.Random) -> RequestSpec:
        with self._ids_lock:
            number = next(self._ids)
        mix = self.mix
        stream = rng.random() < mix.stream_share
        roll = rng.random()
        cancel = None
        if roll < mix.cancel_before_headers_share:
            cancel = "before_headers"
        elif stream and roll < mix.cancel_before_headers_share + mix.cancel_mid_stream_share:
            cancel = "mid_stream"
        return RequestSpec(
            request_id=f"{self.id_prefix}-{number:07d}",
            api=rng.choice(APIS),
            model=rng.choice(mix.models),
            stream=stream,
            cancel=cancel,
            cancel_after_s=rng.uniform(*mix.cancel_delay_s),
            cancel_after_lines=rng.randint(1, 4),
        )

    def _worker(self, index: int) -> None:
        rng = random.Random(self._seed * 1000 + index)
        while not self._stop.is_set():
            spec = self._next_spec(rng)
            self.ledger.launch(spec)
            self.ledger.record(execute(spec, self.host, self.port, self.deadline_s))
            self._stop.wait(rng.uniform(*self.mix.pause_s))

    def start(self) -> LoadGenerator:
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._worker, args=(index,), name=f"load-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[str]:
        """Stop launching, let in-flight requests end; returns the names of stuck threads."""
        self._stop.set()
        give_up = time.monotonic() + self.deadline_s + 10
        for thread in self._threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]
