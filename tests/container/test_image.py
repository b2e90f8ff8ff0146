"""The image, built and run in a real engine, checked from the host like an operator would.

One container (module scope) started the way docker-compose.yml says serves the read-mostly
checks; the tests that end a container (stop, a bad variable, a FATAL program) get their own.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.container.conftest import Container, compose_service

pytestmark = pytest.mark.container

MODEL = "llama3.2:1b"
# The README's command for "are the long-running programs up" (docs/operations.md): exits 0 on
# a healthy container, whatever state the one-shot gguf-import is in.
STATUS_COMMAND = (
    "supervisorctl", "-c", "/app/supervisord.conf", "status",
    "ollama", "api", "exit-on-fatal", "ollama-log",
)  # fmt: skip


def test_healthy_within_the_start_period_by_the_images_own_healthcheck(running, image):
    start_period = int(compose_service()["healthcheck"]["start_period"].rstrip("s"))
    assert running.healthy_after < start_period
    code, output = running.healthcheck()
    assert code == 0 and output.startswith("healthy"), output
    # The compose file's check is the image's check.
    assert compose_service()["healthcheck"]["test"] == ["CMD", "/app/healthcheck.sh"]
    print(
        f"\nimage: built in {image['build_seconds']:.1f} s, "
        f"{image['size_bytes'] / 1e6:.0f} MB, healthy {running.healthy_after:.1f} s after start"
    )


def test_supervisord_is_pid_1_and_nothing_runs_as_root(running):
    processes = running.top()
    by_pid = {row["pid"]: row for row in processes}
    assert "run_supervisord.py" in by_pid["1"]["args"], processes
    assert {row["user"] for row in processes} == {"ollama"}, processes
    assert any(row["args"].endswith("ollama serve") for row in processes), processes


def test_the_user_keeps_the_gpu_groups(running):
    # USER ollama (by name): engines add the supplementary groups from /etc/group.
    groups = running.exec("id", "-Gn").split()
    assert {"ollama", "video", "render"} <= set(groups), groups
    assert running.exec("id", "-u").strip() == "1000"


def test_jetson_release_file_sets_jetpack(running):
    assert "JETSON_JETPACK=6" in running.logs()


def test_health_and_liveness_on_both_ports(running):
    for base in (running.proxy, running.management):
        assert running.get(base + "/health/live").status_code == 200
        health = running.get(base + "/health")
        assert health.status_code == 200, health.text
        assert health.json()["status"] in ("healthy", "degraded")


def test_generate_and_stream_through_the_proxy_port(running):
    answer = requests.post(
        running.proxy + "/api/generate",
        json={"model": MODEL, "prompt": "hello", "stream": False},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True and answer.json()["response"]

    with requests.post(
        running.proxy + "/api/generate",
        json={"model": MODEL, "prompt": "hello", "options": {"num_predict": 20}},
        stream=True,
        timeout=30,
    ) as stream:
        assert stream.status_code == 200
        chunks = [json.loads(line) for line in stream.iter_lines() if line]
    assert len(chunks) == 21 and chunks[-1]["done"] is True
    assert running.get(running.proxy + "/api/tags").json()["models"][0]["name"] == MODEL


def test_management_routes(running):
    models = running.get(running.management + "/api/models")
    assert models.status_code == 200, models.text
    metrics = running.get(running.management + "/metrics")
    assert metrics.status_code == 200 and "llm_service" in metrics.text
    page = running.get(running.management + "/ui/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    cleared = requests.post(running.management + "/api/cache/clear", timeout=30)
    assert cleared.status_code == 200, cleared.text


def _ollama_pid(container: Container) -> str:
    rows = [row for row in container.top() if row["args"].endswith("ollama serve")]
    assert len(rows) == 1, rows
    return rows[0]["pid"]


def test_session_resets_soft_and_hard(running):
    soft = requests.post(running.management + "/api/session/reset", json={}, timeout=60)
    assert soft.status_code == 200, soft.text
    before = _ollama_pid(running)
    hard = requests.post(running.management + "/api/session/reset", json={"hard": True}, timeout=90)
    assert hard.status_code == 200, hard.text
    assert _ollama_pid(running) != before  # supervisord restarted Ollama through its socket
    assert running.get(running.management + "/health").status_code == 200


def test_readme_status_command_exits_0_on_a_healthy_container(running):
    result = running.engine.run("exec", running.name, *STATUS_COMMAND, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # The plain form counts the one-shot import's normal STOPPED state as a failure (exit 3).
    plain = running.engine.run(
        "exec", running.name, "supervisorctl", "-c", "/app/supervisord.conf", "status",
        check=False,
    )  # fmt: skip
    assert "gguf-import                      STOPPED" in plain.stdout


def test_a_killed_ollama_comes_back(running):
    pid = _ollama_pid(running)
    started = time.monotonic()
    running.exec("bash", "-c", f"kill -9 {pid}")
    seen_down = False
    while time.monotonic() - started < 30:
        status = running.get(running.management + "/health").status_code
        if status != 200:
            seen_down = True
        elif _ollama_pid(running) != pid:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"Ollama not back within 30 s\n{running.logs()}")
    back_after = time.monotonic() - started
    answer = requests.post(
        running.proxy + "/api/generate",
        json={"model": MODEL, "prompt": "again", "stream": False},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    print(f"\nkilled Ollama: back after {back_after:.1f} s (503 seen: {seen_down})")


def test_stop_with_a_stream_in_flight_finishes_it_and_exits_0(make_container):
    container = make_container({"OLLAMA_STANDIN_TOKEN_SECONDS": "0.1"}).start()
    container.wait_healthy(timeout=120)
    chunks: list[dict] = []
    failure: list[BaseException] = []
    first = threading.Event()

    def consume() -> None:
        try:
            with requests.post(
                container.proxy + "/api/generate",
                json={"model": MODEL, "prompt": "a long one", "options": {"num_predict": 100}},
                stream=True,
                timeout=(5, 30),
            ) as response:
                for line in response.iter_lines():
                    if line:
                        chunks.append(json.loads(line))
                        first.set()
        except BaseException as exc:  # reported below
            failure.append(exc)
            first.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert first.wait(30) and not failure, failure
    started = time.monotonic()
    container.engine.run("stop", container.name, timeout=120)  # the container's 70 s timeout
    stop_seconds = time.monotonic() - started
    reader.join(30)
    assert not failure, failure
    assert chunks[-1]["done"] is True, chunks[-1]
    assert len(chunks) == 101
    state = container.state()
    assert state["ExitCode"] == 0, container.logs()
    assert "SIGKILL" not in container.logs()
    print(f"\nstop with a 10 s stream in flight: {stop_seconds:.1f} s, exit 0")


def test_a_bad_variable_exits_2_with_one_line(engine, image):
    result = engine.run(
        "run", "--rm", "--env", "LLM_PROXY_PORT=eleven", image["name"], check=False, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    # Less podman's own complaints about systemd (no timers for health checks here).
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith('time="')
    ]
    assert lines == [
        "llm-service: configuration error: LLM_PROXY_PORT='eleven' is invalid: "
        "expected a TCP port number between 1 and 65535"
    ], result.stderr


def test_a_fatal_program_ends_the_container_non_zero(make_container):
    # restart "no" here so the exit status stays visible; compose's policy would restart it.
    container = make_container({"OLLAMA_STANDIN_FAIL": "1"}).start(restart="no")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = container.state()
        if state.get("Status") == "exited":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"still running after 90 s\n{container.logs()}")
    assert state["ExitCode"] == 1, container.logs()
    assert "program ollama went FATAL" in container.logs()


def test_an_accepted_job_survives_a_restart_of_the_container(running):
    """LLM_STATE_DIR is a volume in the compose file: jobs outlive the container's processes."""
    submitted = requests.post(
        running.proxy + "/api/jobs",
        json={"route": "/api/generate", "body": {"model": MODEL, "prompt": "keep me"}},
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text
    job_url = running.proxy + f"/api/jobs/{submitted.json()['id']}"
    deadline = time.monotonic() + 30
    while running.get(job_url).json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, running.get(job_url).text
        time.sleep(0.2)
    assert running.get(job_url).json()["status"] == "succeeded"
    running.engine.run("restart", running.name, timeout=120)
    running.wait_healthy(timeout=120)
    again = running.get(job_url)
    assert again.status_code == 200 and again.json()["status"] == "succeeded", again.text
    assert again.json()["result"]["response"]
