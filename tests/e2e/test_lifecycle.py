"""How the process tree ends: a program that cannot start, and `docker stop` (SIGTERM)."""

from __future__ import annotations

import json
import signal
import socket
import threading

import requests

from tests.e2e.supervised import DEFAULT_MODEL


def test_ollama_that_never_starts_goes_fatal_and_supervisord_exits(make_service):
    service = make_service()
    # Something else holds Ollama's port, so every start fails within startsecs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", service.ollama_port))
        squatter.listen(1)
        service.start(wait_ready=False)
        # startretries=3 with back-off 1+2+3 s, then FATAL, then the listener stops everything.
        status = service.wait_exit(timeout=60)

    output = service.output()
    assert "gave up: ollama entered FATAL state" in output
    assert "program ollama is FATAL" in output  # the listener said why it stopped supervisord
    # Non-zero, so `restart: on-failure` (and anything keyed on exit codes) acts.
    assert status == 1, output
    assert "exiting with status 1: program ollama went FATAL" in output
    assert "cannot listen on 127.0.0.1" in service.ollama_log.read_text()
    assert service.leftovers() == []

    # The restart policy then starts the same container again: same state directory, perhaps
    # a socket file left by a killed supervisord. With the port free, it comes up healthy.
    if not service.socket.exists():
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(service.socket))
        stale.close()
    service.start()
    assert service.program("ollama")["statename"] in ("STARTING", "RUNNING")


def test_sigterm_lets_streams_finish_then_everything_exits(make_service):
    service = make_service().start()
    service.wait_program_running("api", timeout=30)
    # No LLM_IMPORT_DIR: the one-shot import is not even started.
    assert service.program("gguf-import")["statename"] == "STOPPED"
    # About 3 s of streaming: well inside gunicorn's 30 s graceful timeout.
    service.set_model_timing(DEFAULT_MODEL, tokens=60, tokens_per_second=20)
    chunks: list[dict] = []
    first_chunk = threading.Event()
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            with requests.post(
                service.proxy + "/api/generate",
                json={"model": DEFAULT_MODEL, "prompt": "a long answer"},
                stream=True,
                timeout=(5, 20),
            ) as response:
                for line in response.iter_lines():
                    if line:
                        chunks.append(json.loads(line))
                        first_chunk.set()
        except BaseException as exc:  # reported by the test thread below
            failure.append(exc)
            first_chunk.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert first_chunk.wait(20), service.output()
    assert not failure, failure

    received_before_sigterm = len(chunks)
    service.signal(signal.SIGTERM)

    reader.join(30)
    assert not reader.is_alive(), "the stream hung after SIGTERM"
    assert not failure, failure
    assert len(chunks) > received_before_sigterm
    assert chunks[-1].get("done") is True, chunks[-1]
    assert not any("error" in chunk for chunk in chunks)

    status = service.wait_exit(timeout=60)
    output = service.output()
    assert status == 0, output  # a plain stop is a clean exit
    assert "stopped: api (exit status 0)" in output
    assert "stopped: ollama" in output
    assert "SIGKILL" not in output  # nothing needed supervisord's stopwaitsecs escalation
    assert service.leftovers() == []
