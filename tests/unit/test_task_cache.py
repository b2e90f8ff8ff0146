"""Whole /v1/infer results in the response cache, without a server: the key, the per-task TTL,
which tasks and which results are cacheable, and the tasks file's ``cache_ttl_seconds``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from management_api import errors
from management_api.cache.policy import task_key
from management_api.cache.service import BYPASS, COALESCED, MISS, ResponseCache
from management_api.proxy.transport import ClientGone
from management_api.tasks.config import TasksConfigError, load_tasks
from management_api.tasks.orchestrator import settled

DIGESTS = ("sha256:aa", "sha256:bb")
FIELDS = {"input": {"query": "q", "k": 3}, "strategy": "voting", "models": ["a:1b", "b:4b"]}


def test_task_key_covers_task_config_digests_and_request_fields():
    base = task_key("t", "id1", DIGESTS, FIELDS)
    # Canonical: the order of an object's keys does not matter.
    reordered = {"models": ["a:1b", "b:4b"], "strategy": "voting", "input": {"k": 3, "query": "q"}}
    assert task_key("t", "id1", DIGESTS, reordered) == base
    others = [
        task_key("u", "id1", DIGESTS, FIELDS),
        task_key("t", "id2", DIGESTS, FIELDS),
        task_key("t", "id1", ("sha256:aa", "sha256:cc"), FIELDS),
        task_key("t", "id1", DIGESTS[::-1], FIELDS),
        task_key("t", "id1", DIGESTS, {**FIELDS, "input": {"query": "q", "k": 4}}),
        task_key("t", "id1", DIGESTS, {**FIELDS, "strategy": "weighted"}),
        task_key("t", "id1", DIGESTS, {**FIELDS, "models": ["b:4b", "a:1b"]}),
        task_key("t", "id1", DIGESTS, {**FIELDS, "input": "{'query': 'q', 'k': 3}"}),
    ]
    assert len({base, *others}) == len(others) + 1
    with pytest.raises(ValueError):
        task_key("t", "id1", DIGESTS, {**FIELDS, "input": float("nan")})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(digests: dict[str, str], clock: Callable[[], float]) -> ResponseCache:
    return ResponseCache(max_bytes=1_000_000, ttl_seconds=900, digest_of=digests.get, clock=clock)


def _plan(cache: ResponseCache, headers=(), models=("gemma3:4b",), **over):
    args = dict(task="t", identity="i", ttl_seconds=5, cacheable=True, models=list(models),
                fields={"input": "x"}, headers=list(headers))  # fmt: skip
    return cache.plan_result(**{**args, **over})


def test_result_plans_hits_and_the_per_task_ttl():
    clock = Clock()
    cache = _cache({"gemma3:4b": "sha256:g"}, clock)
    plan = _plan(cache)
    assert plan.result == MISS and plan.key and plan.ttl_seconds == 5
    assert cache.lookup_result(plan, "r1") is None
    result = {"request_id": "r1", "task": "t", "content": "ä", "duration_ms": 12.5}
    assert cache.keep_result(plan, result)
    hit = cache.lookup_result(_plan(cache), "r2")
    assert hit == {**result, "request_id": "r2"}
    assert result["request_id"] == "r1"  # the stored copy is not shared with a caller
    clock.now += 5.01  # the task's TTL, not the store's 900 s
    assert cache.lookup_result(plan, "r3") is None
    row = cache.snapshot()["routes"][0]
    assert (row["route"], row["model"], row["requests"]["hit"]) == ("/v1/infer", "t", 1)


def test_result_plans_that_bypass():
    clock = Clock()
    cache = _cache({"gemma3:4b": "sha256:g"}, clock)
    for plan in (
        _plan(cache, cacheable=False),
        _plan(cache, ttl_seconds=0),
        _plan(cache, headers=[("Cache-Control", "max-age=0, no-store")]),
        _plan(cache, models=("gemma3:4b", "llama3.2:1b")),  # no digest: not installed
        _plan(cache, fields={"input": float("inf")}),
    ):
        assert (plan.result, plan.key) == (BYPASS, None)
        assert not cache.keep_result(plan, {"content": "x"})
    refresh = _plan(cache, headers=[("cache-control", "no-cache")])
    assert refresh.result == BYPASS and refresh.refresh and refresh.key == _plan(cache).key
    cache.keep_result(_plan(cache), {"content": "old"})
    assert cache.lookup_result(refresh, "r") is None  # no-cache skips the lookup …
    cache.keep_result(refresh, {"content": "new"})  # … and stores the fresh result
    assert cache.lookup_result(_plan(cache), "r") == {"content": "new", "request_id": "r"}
    # Another digest of the same model is another key; a name that is none has no digest.
    assert _plan(cache, models=("not a name",)).result == BYPASS
    other = _cache({"gemma3:4b": "sha256:new"}, clock)
    assert _plan(other).key != _plan(cache).key


def _candidate(status: str, **extra) -> dict:
    return {"model": "m", "role": "candidate", "status": status, **extra}


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"candidates": [_candidate("won"), _candidate("lost")]}, True),
        ({"candidates": [_candidate("won"), _candidate("cancelled")]}, True),
        ({"candidates": [_candidate("won"),
                         _candidate("skipped", role="hedge", error="not_loaded")]}, True),
        ({"candidates": [_candidate("won"), _candidate("error", error="http_500")]}, False),
        ({"candidates": [_candidate("won"), _candidate("timeout")]}, False),
        ({"candidates": [_candidate("won"), _candidate("skipped", error="breaker_open")]}, False),
        ({"candidates": [_candidate("won"), _candidate("skipped")]}, False),
        ({"candidates": [_candidate("won")], "decided_by": "fastest"}, False),
    ],
)  # fmt: skip
def test_only_results_no_failure_shaped_are_settled(result, expected):
    assert settled(result) is expected


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "p.md").write_text("Q: {{input}}\n")
    path = tmp_path / "tasks.toml"
    path.write_text(body)
    return path


TASK = '[tasks.{name}]\nstrategy = "fallback"\nmodels = ["m"]\ntemplate = "p.md"\n'


def test_cache_ttl_seconds_per_task_and_from_defaults(tmp_path):
    body = (
        "[defaults]\ncache_ttl_seconds = 60\n"
        + TASK.format(name="cold") + "options = { temperature = 0 }\n"
        + TASK.format(name="own") + "options = { temperature = 0.0 }\ncache_ttl_seconds = 5\n"
        + TASK.format(name="off") + "options = { temperature = 0 }\ncache_ttl_seconds = 0\n"
        + TASK.format(name="warm") + "options = { temperature = 0.7 }\n"
        + TASK.format(name="unset")
    )  # fmt: skip
    config = load_tasks(_write(tmp_path, body))
    ttl = {name: (t.cache_ttl_seconds, t.cacheable) for name, t in config.tasks.items()}
    assert ttl == {"cold": (60, True), "own": (5, True), "off": (0, False),
                   "warm": (0, False), "unset": (0, False)}  # fmt: skip
    assert config.defaults.cache_ttl_seconds == 60
    assert config.tasks["own"].to_dict()["cache_ttl_seconds"] == 5


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("options = { temperature = 0.2 }\ncache_ttl_seconds = 60\n",
         "tasks.a.cache_ttl_seconds: set but options.temperature is not 0; expected options = "
         "{ temperature = 0, ... } or cache_ttl_seconds = 0"),
        ("cache_ttl_seconds = 60\n", "tasks.a.cache_ttl_seconds: set but options.temperature"),
        ("options = { temperature = 0 }\ncache_ttl_seconds = -1\n",
         "tasks.a.cache_ttl_seconds: got -1; expected an integer >= 0"),
        ("options = { temperature = 0 }\ncache_ttl_seconds = 1.5\n",
         "tasks.a.cache_ttl_seconds: got 1.5; expected an integer >= 0"),
    ],
)  # fmt: skip
def test_cache_ttl_mistakes_name_the_key(tmp_path, extra, fragment):
    with pytest.raises(TasksConfigError) as caught:
        load_tasks(_write(tmp_path, TASK.format(name="a") + extra))
    assert fragment in str(caught.value)
    with pytest.raises(TasksConfigError, match=r"defaults\.cache_ttl_seconds: got True"):
        load_tasks(_write(tmp_path, "[defaults]\ncache_ttl_seconds = true\n"))


def test_identity_follows_what_shapes_the_answer(tmp_path):
    def identity(extra: str, prompt: str = "Q: {{input}}\n") -> str:
        path = _write(tmp_path, TASK.format(name="a") + extra)
        (tmp_path / "p.md").write_text(prompt)
        return load_tasks(path).tasks["a"].identity

    base = identity("options = { temperature = 0 }\n")
    assert identity("options = { temperature = 0 }\ncache_ttl_seconds = 9\n") == base
    changed = {
        identity("options = { temperature = 0, num_predict = 5 }\n"),
        identity("options = { temperature = 0 }\n", prompt="Question: {{input}}\n"),
        identity('options = { temperature = 0 }\nsystem = "be brief"\n'),
        identity('options = { temperature = 0 }\noutput = "json"\n'),
    }
    assert base not in changed and len(changed) == 4


def _runner(result: dict, started: threading.Event, release: threading.Event, calls: list):
    def run() -> dict:
        calls.append(1)
        started.set()
        assert release.wait(5)
        if "error" in result:
            raise errors.ApiError("failed", http_status=502, type="no_valid_answer")
        return dict(result)

    return run


def test_identical_running_requests_share_one_run():
    cache = _cache({"gemma3:4b": "sha256:g"}, Clock())
    started, release, calls = threading.Event(), threading.Event(), []
    run = _runner({"request_id": "lead", "content": "c"}, started, release, calls)
    answers: dict[str, tuple[dict, str]] = {}

    def ask(request_id: str) -> None:
        answers[request_id] = cache.answer_result(
            _plan(cache), request_id, run, keep_if=bool, gone=lambda: False, max_wait=5
        )

    leader = threading.Thread(target=ask, args=("lead",))
    leader.start()
    assert started.wait(5)
    waiters = [threading.Thread(target=ask, args=(f"w{i}",)) for i in range(3)]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 5
    while cache.snapshot()["waiting"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.set()
    for thread in (leader, *waiters):
        thread.join(5)
    assert len(calls) == 1
    assert answers["lead"] == ({"request_id": "lead", "content": "c"}, MISS)
    for i in range(3):
        assert answers[f"w{i}"] == ({"request_id": f"w{i}", "content": "c"}, COALESCED)
    assert cache.snapshot()["in_flight"] == 0


def test_a_failed_run_lets_a_waiter_run_itself_and_waiters_leave_on_time():
    cache = _cache({"gemma3:4b": "sha256:g"}, time.monotonic)
    started, release, calls = threading.Event(), threading.Event(), []
    failing = _runner({"error": True}, started, release, calls)
    outcome: list = []

    def lead() -> None:
        with pytest.raises(errors.ApiError):
            cache.answer_result(
                _plan(cache), "lead", failing, keep_if=bool, gone=lambda: False, max_wait=5
            )

    def follow() -> None:
        outcome.append(
            cache.answer_result(
                _plan(cache),
                "w",
                lambda: {"content": "own"},
                keep_if=bool,
                gone=lambda: False,
                max_wait=5,
            )
        )

    leader = threading.Thread(target=lead)
    leader.start()
    assert started.wait(5)
    follower = threading.Thread(target=follow)
    follower.start()
    deadline = time.monotonic() + 5
    while cache.snapshot()["waiting"] < 1:  # the follower waits for the leader
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.set()
    leader.join(5)
    follower.join(5)
    assert outcome == [({"content": "own"}, MISS)]

    # A waiter whose client left, or whose own deadline passed, stops waiting.
    started.clear()
    release.clear()
    blocked = threading.Thread(
        target=lambda: cache.answer_result(
            _plan(cache, fields={"input": "y"}),
            "b",
            _runner({"c": 1}, started, release, []),
            keep_if=bool,
            gone=lambda: False,
            max_wait=5,
        )
    )
    blocked.start()
    assert started.wait(5)
    try:
        with pytest.raises(ClientGone):
            cache.answer_result(
                _plan(cache, fields={"input": "y"}),
                "g",
                dict,
                keep_if=bool,
                gone=lambda: True,
                max_wait=5,
            )
        with pytest.raises(errors.ApiError) as caught:
            cache.answer_result(
                _plan(cache, fields={"input": "y"}),
                "d",
                dict,
                keep_if=bool,
                gone=lambda: False,
                max_wait=0.1,
            )
        assert (caught.value.status, caught.value.type) == (504, "deadline_exceeded")
    finally:
        release.set()
        blocked.join(5)
