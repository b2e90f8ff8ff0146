"""What a job costs beyond the plain route, and how fast jobs resume after a killed worker.

Run: ``.venv/bin/python -m bench.jobs_bench [N]`` (N requests per figure, default 200).

- overhead: N sequential ``/api/embed`` requests (the emulator answers in about 1 ms), sent
  directly, then as N jobs one after another, each polled every 2 ms until it ended. Reported:
  p50 of the direct request; p50 of the job's own ``total_ms`` (stored when it was accepted →
  stored when it ended; what the service adds, without polling); p50 from the client's submit
  to the first poll that saw ``succeeded`` (what a polling client sees).
- batch: a 1,000-line ``/v1/chat/completions`` batch through the ``openai`` SDK (upload,
  create, poll every 0.2 s, download the output) against the same 1,000 requests sent directly
  by 4 client threads (the jobs run 4 at a time: LLM_JOBS_MAX_CONCURRENT=4, 4 workers).
- restart-resume: 20 queued jobs of 1.0 s generations (4 at a time), the worker SIGKILLed
  while the first 4 run; the time until a new worker answers, until every job has ended, and
  how often each job reached the emulator.
"""

from __future__ import annotations

import io
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import requests

from tests.fake_ollama.harness import FakeOllama
from tests.service_harness import ServiceProcess

MODEL = "llama3.2:1b"
LIMITS = """
[defaults]
max_concurrency = 4
max_queue = 256
"""


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def overhead(url: str, count: int) -> dict[str, float]:
    session = requests.Session()
    body = {"model": MODEL, "input": "hello"}
    for _ in range(20):  # warm the connection pools
        session.post(url + "/api/embed", json=body, timeout=10).raise_for_status()
    direct = []
    for _ in range(count):
        started = time.perf_counter()
        session.post(url + "/api/embed", json=body, timeout=10).raise_for_status()
        direct.append((time.perf_counter() - started) * 1000)
    seen, stored = [], []
    for _ in range(count):
        started = time.perf_counter()
        accepted = session.post(
            url + "/api/jobs", json={"route": "/api/embed", "body": body}, timeout=10
        ).json()
        while True:
            job = session.get(accepted["status_url"], timeout=10).json()
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(0.002)
        assert job["status"] == "succeeded", job
        seen.append((time.perf_counter() - started) * 1000)
        stored.append(job["timings"]["total_ms"])
    return {
        "direct_p50_ms": _p50(direct),
        "job_total_ms_p50": _p50(stored),
        "job_client_seen_p50_ms": _p50(seen),
    }


def batch_vs_direct(url: str, count: int = 1000) -> dict[str, float]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    session = requests.Session()

    def direct(_: int) -> None:
        session.post(url + "/v1/chat/completions", json=body, timeout=30).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(direct, range(count)))
    direct_s = time.perf_counter() - started
    lines = "\n".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body})
        for i in range(count)
    )  # fmt: skip
    started = time.perf_counter()
    uploaded = client.files.create(file=("b.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    while batch.status not in ("completed", "failed", "cancelled"):
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    output = client.files.content(batch.output_file_id).text.splitlines()
    batch_s = time.perf_counter() - started
    assert len(output) == count, batch
    return {"direct_4_threads_s": round(direct_s, 2), "batch_s": round(batch_s, 2),
            "completed": batch.request_counts.completed}  # fmt: skip


def restart_resume(emulator: FakeOllama, folder: Path) -> dict[str, float]:
    env = {
        "OLLAMA_URL": emulator.url,
        "LLM_LIMITS_FILE": str(folder / "limits.toml"),
        "LLM_STATE_DIR": str(folder / "state-restart"),
        "LLM_JOBS_MAX_CONCURRENT": "4",
        "LLM_OLLAMA_LOG_FILE": str(folder / "ollama.log"),
    }
    emulator.reset()
    emulator.set_model(MODEL, tokens=20, tokens_per_second=20, ttft_seconds=0)
    with ServiceProcess(env=env) as service:
        url = service.management_url
        ids = [
            requests.post(url + "/api/jobs", timeout=5, json={
                "route": "/api/generate", "body": {"model": MODEL, "prompt": f"p{i}"},
            }).json()["id"]
            for i in range(20)
        ]  # fmt: skip
        while (
            sum(
                1
                for c in emulator.observations()["connections"]
                if (c["request_id"] or "")[:4] == "job-"
            )
            < 4
        ):
            time.sleep(0.01)
        assert service.process is not None
        master = service.process.pid
        worker = int(Path(f"/proc/{master}/task/{master}/children").read_text().split()[0])
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        while True:
            try:
                if requests.get(url + "/health/live", timeout=1).ok:
                    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
                    if children and int(children[0]) != worker:
                        break
            except requests.RequestException:
                pass
            time.sleep(0.01)
        answering = time.monotonic() - killed
        while True:
            states = [requests.get(f"{url}/api/jobs/{i}", timeout=5).json() for i in ids]
            if all(s["status"] not in ("queued", "running") for s in states):
                break
            time.sleep(0.05)
        done = time.monotonic() - killed
    records = emulator.observations()["connections"]
    completed = {
        i: sum(1 for c in records if (c["request_id"] or "").startswith(f"job-{i}-")
               and c["outcome"] == "completed")
        for i in ids
    }  # fmt: skip
    return {
        "worker_answering_after_kill_s": round(answering, 2),
        "all_20_ended_after_kill_s": round(done, 2),
        "succeeded": sum(1 for s in states if s["status"] == "succeeded"),
        "retried_jobs": sum(1 for s in states if s["attempts"] > 1),
        "completed_once_at_ollama": sum(1 for n in completed.values() if n == 1),
    }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    folder = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    (folder / "limits.toml").write_text(LIMITS)
    (folder / "ollama.log").write_text("")
    with FakeOllama(num_parallel=16) as emulator:
        env = {
            "OLLAMA_URL": emulator.url,
            "LLM_LIMITS_FILE": str(folder / "limits.toml"),
            "LLM_STATE_DIR": str(folder / "state"),
            "LLM_OLLAMA_LOG_FILE": str(folder / "ollama.log"),
            "LLM_JOBS_MAX_CONCURRENT": "4",
        }
        with ServiceProcess(env=env) as service:
            print("overhead:", overhead(service.management_url, count))
            print("batch of 1000:", batch_vs_direct(service.management_url))
        print("restart-resume:", restart_resume(emulator, folder))


if __name__ == "__main__":
    main()
