"""Client disconnects are noticed at every stage, recorded, and free what they held."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time

import pytest
import requests

from tests.fake_ollama.config import Settings
from tests.fake_ollama.harness import FakeOllama
from tests.fake_ollama.server import start


def body(model: str = "llama3.2:1b", **extra: object) -> dict:
    return {"model": model, "prompt": "hi", **extra}


def finishes(fake: FakeOllama, model: str = "llama3.2:1b") -> bool:
    response = requests.post(fake.url + "/api/generate", json=body(model, stream=False), timeout=10)
    return response.status_code == 200 and response.json()["done"] is True


def give_up_after(fake: FakeOllama, seconds: float, **request: object) -> float:
    """Send a generation and abandon it after ``seconds``; returns when it hung up."""
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(fake.url + "/api/generate", json=body(**request), timeout=(5, seconds))
    return time.monotonic()


def test_close_mid_stream(fake: FakeOllama) -> None:
    fake.set_model("llama3.2:1b", tokens=200, tokens_per_second=50)
    response = requests.post(fake.url + "/api/generate", json=body(), stream=True, timeout=10)
    lines = response.iter_lines()
    assert json.loads(next(lines))["done"] is False
    closed_by_client = time.monotonic()
    response.close()
    record = fake.wait_for(lambda: next(iter(fake.connections(outcome="client_closed")), None))
    assert record["closed_at"] >= closed_by_client - 0.001
    assert 0 < record["lines"] < 200
    assert fake.observations()["in_flight"] == {"llama3.2:1b": 0}
    fake.set_model("llama3.2:1b", tokens=3)
    assert finishes(fake)


def test_close_while_loading_aborts_the_load(fake: FakeOllama) -> None:
    fake.set_model("gemma3:4b", load_seconds=5)
    gone = give_up_after(fake, 0.3, model="gemma3:4b")
    record = fake.wait_for(lambda: next(iter(fake.connections(outcome="client_closed")), None))
    assert record["first_byte_at"] is None and record["closed_at"] >= gone - 0.05
    fake.wait_for(lambda obs: obs["load_aborts"] == 1)
    assert requests.get(fake.url + "/api/ps").json() == {"models": []}
    fake.set_model("gemma3:4b", load_seconds=0.05)
    assert finishes(fake, "gemma3:4b")


def test_close_while_queued_skips_the_request(fake: FakeOllama) -> None:
    fake.set_model("gemma3:4b", load_seconds=0.8)
    loading = threading.Thread(target=finishes, args=(fake, "gemma3:4b"))
    loading.start()
    fake.wait_for(lambda: requests.get(fake.url + "/api/ps").json()["models"])
    give_up_after(fake, 0.2, model="llama3.2:1b")  # queued behind gemma's load
    loading.join()
    observations = fake.wait_for(lambda obs: obs["pending"] == 0 and obs)
    assert observations["loads"] == 1  # the abandoned request never loaded llama
    outcomes = [c["outcome"] for c in observations["connections"] if c["path"] == "/api/generate"]
    assert outcomes == ["completed", "client_closed"]
    assert finishes(fake)


def test_close_while_waiting_for_a_slot(fake: FakeOllama) -> None:
    fake.set_model("llama3.2:1b", tokens=40, tokens_per_second=50)
    holder = threading.Thread(target=finishes, args=(fake,))
    holder.start()
    fake.wait_for(lambda obs: obs["in_flight"].get("llama3.2:1b") == 1)
    give_up_after(fake, 0.2)
    waiting = fake.wait_for(lambda: next(iter(fake.connections(outcome="client_closed")), None))
    assert waiting["first_byte_at"] is None
    assert fake.observations()["runners"]["llama3.2:1b"]["waiting"] == 0
    holder.join()
    fake.set_model("llama3.2:1b", tokens=3)
    assert finishes(fake)
    observations = fake.observations()
    assert observations["max_in_flight"] == {"llama3.2:1b": 1}
    assert observations["in_flight"] == {"llama3.2:1b": 0}


def _half_close_during_prompt_eval(fake: FakeOllama, request_id: str) -> tuple[float, float]:
    """Start a stream, half-close once it holds a slot; (half-closed at, EOF seen at)."""
    host, port = fake.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    body = json.dumps({"model": "llama3.2:1b", "prompt": "p"}).encode()
    sock.sendall(
        f"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    fake.wait_for(lambda: any(c["request_id"] == request_id and c["slot_entered_at"]
                              for c in fake.observations()["connections"]))  # fmt: skip
    half_closed = time.monotonic()
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    while sock.recv(65536):
        pass
    eof = time.monotonic()
    sock.close()
    return half_closed, eof


@pytest.mark.parametrize("uncancellable", [False, True])
def test_half_close_cancels_and_the_connection_closes_after_the_work_stopped(
    fake: FakeOllama, uncancellable: bool
) -> None:
    """Go's server: EOF cancels the request; the connection closes once the handler returned,
    so the slot is free before the client sees the close. Ollama's runner finishes prompt
    evaluation first (ollama/ollama#11889) when `prompt_eval_uncancellable` is on."""
    fake.configure(prompt_eval_uncancellable=uncancellable)
    fake.set_model("llama3.2:1b", ttft_seconds=1.0)
    rid = f"half-close-{uncancellable}"
    half_closed, eof = _half_close_during_prompt_eval(fake, rid)
    record = next(c for c in fake.observations()["connections"] if c["request_id"] == rid)
    assert record["outcome"] == "client_closed"
    assert record["slot_left_at"] <= eof
    assert fake.observations()["in_flight"]["llama3.2:1b"] == 0
    if uncancellable:
        assert record["slot_left_at"] - record["slot_entered_at"] >= 0.9
    else:
        assert eof - half_closed < 0.5


def test_a_fin_before_the_handler_started_still_waits_for_the_handler() -> None:
    """The FIN right behind a request can be read before aiohttp has started the request's
    handler task. Go's server still closes only after the handler returned; the emulator once
    closed at once there (`make chaos` caught it: the proxy freed a slot while the emulator
    still evaluated the prompt). The request and the EOF are fed to a real connection exactly
    at that moment."""

    async def scenario() -> tuple[float | None, int | None, list[dict]]:
        settings = Settings(port=0, prompt_eval_uncancellable=True)
        settings.timing = dataclasses.replace(settings.timing, ttft_seconds=0.3)
        runner, emulator, port = await start(settings)
        loop = asyncio.get_running_loop()
        # Load the model first, so the handler reaches its slot without waiting for a load.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        load = b'{"model": "llama3.2:1b"}'
        writer.write(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(load), load)
        )
        await reader.read()
        writer.close()
        ours, theirs = socket.socketpair()
        protocol = runner.server()
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=ours)
        payload = json.dumps({"model": "llama3.2:1b", "prompt": "p"}).encode()
        request = (
            f"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-Request-ID: fin-first\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        theirs.shutdown(socket.SHUT_WR)
        protocol.data_received(request)
        # One loop turn: aiohttp's connection task takes the request and creates the handler's
        # task, which has not run yet when the EOF is read.
        await asyncio.sleep(0)
        if not protocol.eof_received():  # what asyncio's transport does with the answer
            transport.close()
        theirs.setblocking(False)
        eof_at, busy_at_eof = None, None
        deadline = time.monotonic() + 5
        while eof_at is None and time.monotonic() < deadline:
            try:
                if theirs.recv(65536) == b"":
                    eof_at = time.monotonic()
                    busy_at_eof = emulator.state.obs.in_flight.get("llama3.2:1b", 0)
            except BlockingIOError:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.4)  # a handler that (wrongly) ran on has finished by now
        records = [c.to_dict() for c in emulator.state.obs.connections]
        theirs.close()
        await runner.cleanup()
        return eof_at, busy_at_eof, records

    eof_at, busy_at_eof, records = asyncio.run(scenario())
    assert eof_at is not None
    # Go calls the handler of every request it read, FIN or not: Ollama saw this request (and
    # the proxy's tests look for it), its handler found the client gone and stopped.
    seen = [r for r in records if r["request_id"] == "fin-first"]
    assert len(seen) == 1 and seen[0]["outcome"] == "client_closed", records
    # When the client sees the close, the emulator works on nothing: it closed after the
    # handler ended.
    assert busy_at_eof == 0, records
    for record in records:
        if record["slot_entered_at"] is not None:
            assert record["slot_left_at"] <= eof_at, record
