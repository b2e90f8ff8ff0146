"""Job callbacks against a real local HTTP server: retries with backoff, the allow-list, no
redirects. The callback target stands in for n8n's Wait node (``$execution.resumeUrl``)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.integration.test_jobs import FAST, _env, _folder, submit
from tests.service_harness import ServiceProcess


class Target:
    """An HTTP server that records every POST and answers the statuses scripted per path."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[dict] = []
        self.scripts: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                with target.lock:
                    target.received.append({
                        "path": self.path, "body": body, "at": time.monotonic(),
                        "job_header": self.headers.get("X-Job-Id"),
                    })  # fmt: skip
                    script = target.scripts.get(self.path) or []
                    status, headers = script.pop(0) if script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.received if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.close()


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Target]:
    """A second server, not in the allow-list: nothing may ever reach it."""
    server = Target()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hooked(emulator, target, tmp_path_factory) -> Iterator[ServiceProcess]:
    folder = _folder(tmp_path_factory)
    env = _env(folder, emulator, LLM_JOBS_CALLBACK_HOSTS=f"127.0.0.1:{target.port}",
               LLM_JOBS_CALLBACK_ATTEMPTS="3")  # fmt: skip
    with ServiceProcess(env=env) as process:
        yield process


def wait_callback(url: str, job_id: str, state: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{url}/api/jobs/{job_id}", timeout=5).json()
        if job["callback"]["state"] == state:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_a_failed_callback_is_retried_with_backoff_until_delivered(hooked, target, emulator):
    emulator.reset()
    target.scripts["/resume/1"] = [(500, {}), (503, {})]
    url = hooked.management_url
    accepted = submit(url, "/api/embed", {"model": FAST, "input": "a"},
                      callback_url=target.url + "/resume/1")  # fmt: skip
    job = wait_callback(url, accepted["id"], "delivered")
    assert job["callback"] == {"state": "delivered", "attempts": 3}
    posts = target.posts("/resume/1")
    assert len(posts) == 3
    # Each attempt carries the job as GET shows it, ended.
    assert all(p["body"]["id"] == accepted["id"] and p["body"]["status"] == "succeeded"
               for p in posts)  # fmt: skip
    assert posts[0]["body"]["result"]["embeddings"] and posts[0]["job_header"] == accepted["id"]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(posts)]
    assert 0.9 < gaps[0] < 2.0 and 1.9 < gaps[1] < 3.5, gaps  # 1 s, then 2 s
    events = [e for e in job["history"] if e["event"] == "callback"]
    assert [(e["status"], e["outcome"]) for e in events] == [
        (500, "pending"), (503, "pending"), (200, "delivered"),
    ]  # fmt: skip


def test_a_callback_gives_up_after_its_attempts_and_the_job_stays_succeeded(hooked, target):
    target.scripts["/down"] = [(500, {})] * 5
    url = hooked.management_url
    accepted = submit(url, "/api/embed", {"model": FAST, "input": "b"},
                      callback_url=target.url + "/down")  # fmt: skip
    job = wait_callback(url, accepted["id"], "failed")
    assert job["status"] == "succeeded" and job["callback"]["attempts"] == 3
    assert len(target.posts("/down")) == 3


def test_cancelled_and_failed_jobs_are_called_back_too(hooked, target, emulator):
    url = hooked.management_url
    failed = submit(url, "/api/generate", {"model": "nope:1b", "prompt": "x"},
                    callback_url=target.url + "/failed")  # fmt: skip
    wait_callback(url, failed["id"], "delivered")
    (post,) = target.posts("/failed")
    assert post["body"]["status"] == "failed" and post["body"]["http_status"] == 404


def test_redirects_are_not_followed(hooked, target, elsewhere):
    target.scripts["/moved"] = [(307, {"Location": elsewhere.url + "/internal"})] * 3
    url = hooked.management_url
    accepted = submit(url, "/api/embed", {"model": FAST, "input": "c"},
                      callback_url=target.url + "/moved")  # fmt: skip
    job = wait_callback(url, accepted["id"], "failed")
    assert [e["status"] for e in job["history"] if e["event"] == "callback"] == [307] * 3
    assert elsewhere.received == []


def test_only_allowed_hosts_may_be_called_back(hooked, target, elsewhere):
    url = hooked.management_url + "/api/jobs"
    refused = [
        elsewhere.url + "/x",  # another port of an allowed host
        f"http://localhost:{target.port}/x",  # the same server, by a name not in the list
        f"http://user:pw@127.0.0.1:{target.port}/x",
        f"ftp://127.0.0.1:{target.port}/x",
        "not a url",
        42,
    ]
    for callback_url in refused:
        response = requests.post(url, timeout=5, json={
            "route": "/api/embed", "body": {"model": FAST, "input": "x"},
            "callback_url": callback_url,
        })  # fmt: skip
        assert response.status_code == 400, (callback_url, response.text)
        assert response.json()["field"] == "callback_url"
    assert elsewhere.received == []


def test_without_an_allow_list_callbacks_are_refused(svc_default):
    response = requests.post(svc_default.management_url + "/api/jobs", timeout=5, json={
        "route": "/api/embed", "body": {"model": FAST, "input": "x"},
        "callback_url": "http://127.0.0.1:9/x",
    })  # fmt: skip
    assert response.status_code == 400
    assert "LLM_JOBS_CALLBACK_HOSTS" in response.json()["error"]


@pytest.fixture
def svc_default(service_process):
    process, _ = service_process
    return process


def test_a_pending_callback_is_delivered_after_a_restart(emulator, tmp_path_factory):
    """The target is down while the job ends; the service restarts; the callback still comes."""
    emulator.reset()
    late = Target()
    port = late.port
    late.close()  # nothing listens there now: every attempt fails to connect
    folder = _folder(tmp_path_factory)
    env = _env(folder, emulator, LLM_JOBS_CALLBACK_HOSTS=f"127.0.0.1:{port}",
               LLM_JOBS_CALLBACK_ATTEMPTS="10")  # fmt: skip
    with ServiceProcess(env=env) as process:
        accepted = submit(process.management_url, "/api/embed", {"model": FAST, "input": "a"},
                          callback_url=f"http://127.0.0.1:{port}/after")  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            job = requests.get(f"{process.management_url}/api/jobs/{accepted['id']}",
                               timeout=5).json()  # fmt: skip
            if job["callback"]["attempts"] >= 1:
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["callback"]["state"] == "pending"
    back = Target(port)
    try:
        with ServiceProcess(env=env) as again:
            job = wait_callback(again.management_url, accepted["id"], "delivered", timeout=20)
            assert job["callback"]["attempts"] >= 2
            assert [p["body"]["id"] for p in back.posts("/after")] == [accepted["id"]]
    finally:
        back.close()
