"""Runs one ``/v1/infer`` request: picks models, launches branches, applies the strategy.

Each request gets one absolute deadline from its arrival; every stage waits only for what is
left. Branches run on one bounded pool shared by all requests (``BRANCH_THREADS``; the tasks
config is refused when ``max_concurrent`` requests with their widest task could exceed it), and
each holds at most one slot, so no request waits for a thread or a second slot while holding
one. The judge is launched only after every candidate branch has ended (slots released).
The request thread does the waiting; it polls the client every ``POLL_SECONDS``.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from management_api import errors, names
from management_api.models.catalog import Catalog
from management_api.ollama import OllamaError
from management_api.proxy.gateway import Gateway
from management_api.proxy.limiter import Limiter
from management_api.proxy.priority import DEFAULT_POLICY, CallerPolicy
from management_api.proxy.transport import ClientGone, ClientWatch
from management_api.tasks import branch as br
from management_api.tasks import voting
from management_api.tasks.breaker import BreakerBoard
from management_api.tasks.config import (
    BRANCH_THREADS,
    Task,
    TasksConfig,
    TemplateError,
    input_fields,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("llm_service.access")

POLL_SECONDS = 0.05
LOADED_TTL_SECONDS = 1.0
WIN_WINDOW = 50
JUDGE_FALLBACK = "fastest"


class TaskObserver(Protocol):
    """Metrics hook (Prometheus attaches here)."""

    def on_infer_done(self, task: str, strategy: str, outcome: str, seconds: float) -> None: ...

    def on_branch_done(self, task: str, model: str, role: str, outcome: str) -> None: ...

    def on_hedge(self, task: str, outcome: str) -> None: ...

    def on_agreement(self, task: str, value: float) -> None: ...


@dataclass
class InferCall:
    """A validated ``/v1/infer`` request; ``config`` is the snapshot it runs on."""

    config: TasksConfig
    task: Task
    input: Any
    deadline_ms: int
    strategy: str
    models: tuple[str, ...]
    request_id: str
    stream: bool = False
    watch: ClientWatch | None = None
    remote_addr: str | None = None
    key_name: str | None = None
    caller: str = "anonymous"
    policy: CallerPolicy = DEFAULT_POLICY  # the key's priority default, ceiling and weight
    priority: str | None = None  # the request's X-LLM-Priority, which wins over the task's
    on_token: Callable[[str], None] | None = None  # stream: the winner's text as it comes


# Candidate outcomes that mean a failure shaped the result (a model erred or ran out of time):
# another run could well answer differently.
_UNSETTLED = frozenset({br.ERROR, br.TIMEOUT})
# Skips that are no failure: a hedge not started because its model was cold or busy.
_HEDGE_SKIPS = frozenset({"not_loaded", "no_free_slot"})


def settled(result: dict[str, Any]) -> bool:
    """Whether a 200 result may be kept by the response cache: the strategy decided it itself
    (no ``decided_by`` fallback rule) among candidates none of which failed, timed out or was
    skipped (open breaker, no slot before the deadline). Cancelled hedges, early-stopped voters
    and hedges not started because their model was cold or busy do not count."""
    if result.get("decided_by"):
        return False
    for candidate in result.get("candidates", ()):
        status = candidate.get("status")
        if status in _UNSETTLED:
            return False
        if status == br.SKIPPED and candidate.get("error") not in _HEDGE_SKIPS:
            return False
    return True


class InferFailed(errors.ApiError):
    """An orchestration outcome that is not an answer; carries the candidates."""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class _Run:
    call: InferCall
    arrived: float
    deadline: float
    # The prompt, encoded once and sent by every branch that asks it: an 8 MB input must not
    # become one copy per model, nor be held rendered beside its encoding.
    prompt: br.EncodedPrompt
    events: queue.Queue[tuple[br.Branch, str]] = field(default_factory=queue.Queue)
    branches: list[br.Branch] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    hedges: list[br.Branch] = field(default_factory=list)
    decided_by: str | None = None
    judge: br.Branch | None = None

    def left(self, until: float | None = None) -> float:
        return (until if until is not None else self.deadline) - time.monotonic()


class Orchestrator:
    def __init__(
        self,
        *,
        gateway: Gateway,
        limiter: Limiter,
        catalog: Catalog,
        breakers: BreakerBoard,
        observer: TaskObserver | None = None,
        threads: int = BRANCH_THREADS,
    ) -> None:
        self.gateway = gateway
        self.limiter = limiter
        self.catalog = catalog
        self.breakers = breakers
        self.observer = observer
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="task-branch")
        self._running = 0
        self._running_lock = threading.Lock()
        self._wins: dict[str, deque[bool]] = {}
        self._wins_lock = threading.Lock()
        self._loaded: tuple[float, frozenset[str] | None] = (0.0, None)
        self._loaded_lock = threading.Lock()
        self._rng = random.Random()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> int:
        with self._running_lock:
            return self._running

    # --- admission of whole requests

    def enter(self, config: TasksConfig) -> None:
        """Take one of ``max_concurrent`` places or raise 429 (never waits)."""
        with self._running_lock:
            limit = config.defaults.max_concurrent
            if self._running >= limit:
                raise errors.ConcurrencyLimit(
                    f"{self._running} task requests are running (max_concurrent {limit}); "
                    "retry after 1 s",
                    headers={"Retry-After": "1"},
                    limit=limit,
                    in_flight=self._running,
                    reason="infer_limit",
                )
            self._running += 1

    def leave(self) -> None:
        with self._running_lock:
            self._running -= 1

    # --- facts the strategies use

    def loaded_models(self, *, fresh: bool = False) -> frozenset[str] | None:
        """Normalised names of the models in memory (``/api/ps``, cached 1 s); None if unknown."""
        now = time.monotonic()
        with self._loaded_lock:
            at, value = self._loaded
            if now - at < LOADED_TTL_SECONDS and not fresh:
                return value
        try:
            rows = self.catalog.loaded(read_timeout=1.0)
            value = frozenset(
                names.normalize(r["name"])
                for r in rows
                if isinstance(r.get("name"), str) and names.is_valid(r["name"])
            )
        except (OllamaError, OSError, ValueError):
            value = None
        with self._loaded_lock:
            self._loaded = (time.monotonic(), value)
        return value

    def has_free_slot(self, model: str) -> bool:
        key = names.normalize(model)
        limits = self.limiter.limits_for(key)
        return (
            not self.limiter.is_paused(key)
            and self.limiter.queued_for(key) == 0
            and self.limiter.in_flight_for(key) < limits.max_concurrency
        )

    def win_rate(self, model: str) -> float:
        with self._wins_lock:
            history = self._wins.get(names.normalize(model))
            wins, total = (sum(history), len(history)) if history else (0, 0)
        return (wins + 1) / (total + 2)  # Laplace: an unseen model starts at 0.5

    def _record_wins(self, answers: list[br.Branch], winners: list[br.Branch]) -> None:
        with self._wins_lock:
            for answer in answers:
                key = names.normalize(answer.model)
                history = self._wins.setdefault(key, deque(maxlen=WIN_WINDOW))
                history.append(answer in winners)

    # --- the entry point

    def run(self, call: InferCall) -> dict[str, Any]:
        """Answer one request; raises an ``errors.ApiError`` (or ClientGone) otherwise."""
        arrived = time.monotonic()
        try:
            prompt = br.encode_prompt(call.task.template.pieces(input_fields(call.input)))
        except TemplateError as exc:
            raise errors.BadRequest(str(exc), type="invalid_input", field="input") from None
        run = _Run(call, arrived, arrived + call.deadline_ms / 1000, prompt)
        outcome = "error"
        try:
            result = self._strategy(run)
            outcome = "ok"
            return result
        except ClientGone:
            outcome = "client_gone"
            raise
        except errors.ApiError as exc:
            outcome = exc.type
            raise
        finally:
            self._cancel_open(run, br.CANCELLED if outcome == "ok" else br.DEADLINE)
            if self.observer is not None:
                self.observer.on_infer_done(
                    call.task.name, call.strategy, outcome, time.monotonic() - arrived
                )

    def _strategy(self, run: _Run) -> dict[str, Any]:
        strategy = run.call.strategy
        models = self._usable(run, list(run.call.models))
        if strategy == "fallback":
            winner = self._fallback(run, models)
            return self._answer(run, winner, None)
        if strategy == "fastest":
            winner = self._fastest(run, models)
            return self._answer(run, winner, None)
        if strategy == "judge":
            return self._judge(run, self._ensemble_models(models))
        answers = self._collect(run, self._ensemble_models(models), strategy)
        return self._decide(run, answers, strategy)

    # --- model lists

    def _usable(self, run: _Run, models: list[str]) -> list[str]:
        """Models whose breaker lets calls through; the others are listed as skipped."""
        usable = []
        for model in models:
            if self.breakers.available(names.normalize(model)):
                usable.append(model)
            else:
                self._skip(run, model, "breaker_open")
        if not usable:
            raise self._failure(run, "every model of this task is unavailable (breakers open)")
        return usable

    def _ensemble_models(self, models: list[str]) -> list[str]:
        """Only loaded models vote, unless none is loaded (or /api/ps cannot be read)."""
        loaded = self.loaded_models()
        if not loaded:
            return models
        chosen = [m for m in models if names.normalize(m) in loaded]
        return chosen or models

    def _skip(self, run: _Run, model: str, reason: str, role: str = "candidate") -> None:
        run.skipped.append(
            {
                "model": model,
                "role": role,
                "content": None,
                "status": br.SKIPPED,
                "duration_ms": 0.0,
                "error": reason,
            }
        )
        self._branch_done(run, model, role, br.SKIPPED)

    # --- branches

    def _launch(
        self,
        run: _Run,
        model: str,
        role: str,
        *,
        prompt: br.EncodedPrompt | None = None,
        fmt: Any = None,
        options: dict[str, Any] | None = None,
        system: str | None = None,
        deadline: float | None = None,
    ) -> br.Branch | None:
        task = run.call.task
        key = names.normalize(model)
        if not self.breakers.begin(key):
            self._skip(run, model, "breaker_open", role)
            return None
        encoded = prompt if prompt is not None else run.prompt  # the judge has its own
        body: dict[str, Any] = {"model": model, "prompt": encoded.head, "stream": True}
        system = system if system is not None else task.system
        if system:
            body["system"] = system
        opts = options if options is not None else task.options
        if opts:
            body["options"] = opts
        if fmt is None and role != "judge" and task.output == "json":
            fmt = task.schema if task.schema is not None else "json"
        if fmt is not None:
            body["format"] = fmt
        branch = br.Branch(
            index=len(run.branches),
            model=model,
            role=role,
            body=body,
            output="json" if role == "judge" else task.output,
            schema=fmt if role == "judge" else task.schema,
            deadline=deadline if deadline is not None else run.deadline,
        )
        branch.prompt_json = encoded
        run.branches.append(branch)
        call = run.call

        def on_event(b: br.Branch, kind: str) -> None:
            if kind == "done":
                self.breakers.end(key, b.verdict)
            run.events.put((b, kind))

        self._pool.submit(
            br.run_branch,
            branch,
            self.gateway,
            request_id=call.request_id,
            watch=call.watch,
            remote_addr=call.remote_addr,
            key_name=call.key_name,
            caller=call.caller,
            policy=call.policy,
            task_priority=call.task.priority,
            asked_priority=call.priority,
            task=call.task.name,
            on_event=on_event,
        )
        return branch

    def _wait(self, run: _Run, until: float) -> tuple[br.Branch, str] | None:
        """The next branch event before ``until``; None at ``until``. Raises ClientGone."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return None
            try:
                return run.events.get(timeout=min(left, POLL_SECONDS))
            except queue.Empty:
                pass
            if run.call.watch is not None and run.call.watch.gone():
                self._cancel_open(run, br.CLIENT_GONE)
                raise ClientGone()

    def _cancel_open(self, run: _Run, reason: str) -> None:
        for branch in run.branches:
            if branch.running:
                branch.cancel(reason)

    def _wait_ended(self, run: _Run, branches: list[br.Branch], until: float) -> None:
        """Wait until these branches have ended (their slots are released)."""
        for branch in branches:
            while branch.running:
                left = min(until - time.monotonic(), POLL_SECONDS)
                if left <= 0:
                    return
                branch.ended.wait(left)
                if run.call.watch is not None and run.call.watch.gone():
                    self._cancel_open(run, br.CLIENT_GONE)
                    raise ClientGone()

    # --- fallback

    def _fallback(self, run: _Run, models: list[str]) -> br.Branch:
        for model in models:
            if run.left() <= 0:
                break
            branch = self._launch(run, model, "candidate")
            if branch is None:
                continue
            if self._await_answer(run, branch):
                return branch
        raise self._failure(run, "no model of this task gave a usable answer")

    def _await_answer(self, run: _Run, branch: br.Branch) -> bool:
        """Wait for this branch to finish; True if its answer is usable.

        A stream gets the branch's text from its first token on; once text went out, a failure
        of that branch ends the request (another model's answer cannot be spliced in).
        """
        sink = run.call.on_token
        attached = False
        while branch.running:
            if sink is not None and not attached and branch.first_token_at is not None:
                branch.attach(sink)
                attached = True
            if self._wait(run, run.deadline) is None:
                branch.cancel(br.DEADLINE)
                branch.ended.wait(1.0)
                break
        if branch.valid:
            if sink is not None and not attached:
                branch.attach(sink)
            return True
        if attached:
            raise self._failure(run, f"{branch.model} failed while its answer was streaming")
        return False

    # --- fastest

    def _fastest(self, run: _Run, models: list[str]) -> br.Branch:
        task = run.call.task
        pending = list(models)
        active: list[br.Branch] = []
        hedge_after = task.hedge_after_ms / 1000

        def start_next(as_hedge: bool) -> bool:
            while pending:
                model = pending.pop(0)
                if as_hedge:
                    key = names.normalize(model)
                    if key not in (self.loaded_models() or ()):
                        # A hedge is rare and costly when wrong: ask /api/ps again before
                        # giving up on it (the cache may predate a load).
                        loaded = self.loaded_models(fresh=True) or frozenset()
                    else:
                        loaded = frozenset({key})
                    if key not in loaded:
                        self._skip(run, model, "not_loaded", "hedge")
                        self._hedge(run, "skipped")
                        continue
                    if not self.has_free_slot(model):
                        self._skip(run, model, "no_free_slot", "hedge")
                        self._hedge(run, "skipped")
                        continue
                branch = self._launch(run, model, "hedge" if as_hedge else "candidate")
                if branch is None:
                    continue
                if as_hedge:
                    run.hedges.append(branch)
                active.append(branch)
                return True
            return False

        if not start_next(False):
            raise self._failure(run, "no model of this task could be started")
        hedge_at = time.monotonic() + hedge_after
        while True:
            event = self._wait(run, min(run.deadline, hedge_at))
            if event is None:
                if run.left() <= 0:
                    raise self._failure(run, "the deadline passed before any model answered")
                if start_next(True):
                    pass
                hedge_at = time.monotonic() + hedge_after
                continue
            branch, kind = event
            if kind == "token" and branch in active:
                for other in active:
                    if other is not branch:
                        other.cancel("hedge_lost")
                        if other in run.hedges:
                            self._hedge(run, "lost")
                if branch in run.hedges:
                    self._hedge(run, "won")
                active = [branch]
                if self._await_answer(run, branch):
                    return branch
                if run.left() <= 0:
                    raise self._failure(run, "the deadline passed before the answer was complete")
                active = []
                if not start_next(False):
                    raise self._failure(run, "no model of this task gave a usable answer")
                hedge_at = time.monotonic() + hedge_after
                continue
            if kind == "done" and branch in active:
                active.remove(branch)
                if branch.valid:  # finished without a token event first (empty stream)
                    return branch
                if branch in run.hedges:
                    self._hedge(run, "failed")
                # Failed before a token: the next model starts now, as a hedge while another
                # branch still runs, else as a plain fallback that may wait for its slot.
                if not start_next(bool(active)) and not active:
                    raise self._failure(run, "no model of this task gave a usable answer")
                hedge_at = time.monotonic() + hedge_after

    def _hedge(self, run: _Run, outcome: str) -> None:
        if self.observer is not None:
            self.observer.on_hedge(run.call.task.name, outcome)

    # --- ensembles

    def _collect(
        self, run: _Run, models: list[str], strategy: str, until: float | None = None
    ) -> list[br.Branch]:
        """Launch every model at once and gather answers until all ended, the deadline, or an
        early decision (weighted: leader unbeatable; consensus: quorum reached)."""
        task = run.call.task
        until = until if until is not None else run.deadline
        launched = [b for m in models if (b := self._launch(run, m, "candidate", deadline=until))]
        if not launched:
            raise self._failure(run, "no model of this task could be started")
        while any(b.running for b in launched):
            event = self._wait(run, until)
            if event is None:
                for b in launched:
                    if b.running:
                        b.cancel(br.DEADLINE)
                break
            if event[1] != "done":
                continue
            answers = [b for b in launched if b.valid]
            open_branches = [b for b in launched if b.running]
            if not answers or not open_branches:
                continue
            found = voting.groups(answers, task.output, task.vote_field)
            if strategy == "weighted":
                scores = [sum(self._vote(task, a.model) for a in g) for g in found]
                still_open = sum(self._vote(task, b.model) for b in open_branches)
                stop = voting.decided_early(scores, still_open)
            elif strategy == "consensus":
                stop = max(len(g) for g in found) / len(launched) >= task.quorum
            else:
                stop = False
            if stop:
                for b in open_branches:
                    b.cancel("decided")
                break
        return launched

    def _vote(self, task: Task, model: str) -> float:
        return task.weight(model) * self.win_rate(model)

    def _decide(self, run: _Run, launched: list[br.Branch], strategy: str) -> dict[str, Any]:
        task = run.call.task
        answers = sorted((b for b in launched if b.valid), key=lambda b: b.finished_at or 0.0)
        if not answers:
            raise self._failure(run, "no model of this task gave a usable answer")
        if strategy == "consensus":
            found = voting.groups(answers, task.output, task.vote_field)
            best = max(found, key=len)
            share = len(best) / max(len(answers), 2 if len(launched) > 1 else 1)
            if share >= task.quorum:
                winner = voting.representative(best, task.weight)
                self._record_wins(answers, best)
                return self._answer(run, winner, share)
            if task.fallback is None:
                if run.left() <= 0:  # the deadline cut the vote short: say that
                    raise self._failure(run, f"no quorum among {len(answers)} answers in time")
                raise self._failure(
                    run,
                    f"no consensus: the largest agreeing share was {share:.2f}, "
                    f"quorum {task.quorum:g}",
                    status=422,
                    type="no_consensus",
                    agreement=round(share, 4),
                )
            return self._decide_by(run, answers, task.fallback)
        return self._decide_by(run, answers, strategy, record=True)

    def _decide_by(
        self, run: _Run, answers: list[br.Branch], rule: str, *, record: bool = False
    ) -> dict[str, Any]:
        """Apply a strategy's rule to the answers in hand (also the ``fallback`` of a task)."""
        task = run.call.task
        if rule != run.call.strategy:
            run.decided_by = rule
        if rule == "fastest":
            return self._answer(run, min(answers, key=lambda b: b.finished_at or 0.0), None)
        if rule == "fallback":
            order = {names.normalize(m): i for i, m in enumerate(run.call.models)}
            first = min(answers, key=lambda b: order.get(names.normalize(b.model), 99))
            return self._answer(run, first, None)
        if rule == "weighted":
            winner, agreement, group = voting.weighted(
                answers, task.output, task.vote_field, lambda m: self._vote(task, m), task.weight
            )
        else:
            winner, agreement, group = voting.plurality(
                answers, task.output, task.vote_field, task.weight
            )
        if record:
            self._record_wins(answers, group)
        return self._answer(run, winner, agreement)

    # --- judge

    def _judge(self, run: _Run, models: list[str]) -> dict[str, Any]:
        task = run.call.task
        judge = task.judge
        assert judge is not None
        budget = run.deadline - run.arrived
        until = run.arrived + budget * (1 - judge.deadline_share)
        launched = self._collect(run, models, "judge", until=until)
        # The judge asks for its slot only after every candidate gave its own back.
        self._wait_ended(run, launched, run.deadline)
        answers = sorted((b for b in launched if b.valid), key=lambda b: b.finished_at or 0.0)
        if not answers:
            raise self._failure(run, "no candidate gave a usable answer")
        if len(answers) == 1:
            return self._answer(run, answers[0], 1.0)
        shuffled = answers[:]
        self._rng.shuffle(shuffled)
        labels = {f"c{i + 1}": b for i, b in enumerate(shuffled)}
        listing = "\n\n".join(f"[{label}]\n{b.content.strip()}" for label, b in labels.items())
        fields = input_fields(run.call.input)
        # The task's prompt as it was encoded for the candidates: spliced into the judge's.
        fields.update(candidates=listing, task=task.name, prompt=run.prompt)
        try:
            prompt = br.encode_prompt(judge.template.pieces(fields))
        except TemplateError as exc:
            raise errors.BadRequest(str(exc), type="invalid_input", field="input") from None
        schema = {
            "type": "object",
            "properties": {
                "winner": {"type": "string", "enum": list(labels)},
                "reason": {"type": "string"},
            },
            "required": ["winner", "reason"],
        }
        judge_branch = None
        if run.left() > 0:
            judge_branch = self._launch(
                run,
                judge.model,
                "judge",
                prompt=prompt,
                fmt=schema,
                options={"temperature": 0},
                system="",
            )
        run.judge = judge_branch
        if judge_branch is not None:
            while judge_branch.running:
                if self._wait(run, run.deadline) is None:
                    judge_branch.cancel(br.DEADLINE)
                    break
        verdict = judge_branch.parsed if judge_branch is not None and judge_branch.valid else None
        if isinstance(verdict, dict) and verdict.get("winner") in labels:
            winner = labels[verdict["winner"]]
            found = voting.groups(answers, task.output, task.vote_field)
            group = next(g for g in found if winner in g)
            result = self._answer(run, winner, len(group) / len(answers))
            result["judge"] = {
                "model": judge.model,
                "winner": verdict["winner"],
                "reason": str(verdict.get("reason", ""))[:2000],
                "labels": {label: b.model for label, b in labels.items()},
            }
            return result
        return self._decide_by(run, answers, task.fallback or JUDGE_FALLBACK)

    # --- results

    def _candidates(self, run: _Run) -> list[dict[str, Any]]:
        return [b.summary() for b in run.branches] + list(run.skipped)

    def _answer(self, run: _Run, winner: br.Branch, agreement: float | None) -> dict[str, Any]:
        for branch in run.branches:
            if branch is winner:
                branch.status = br.WON
            elif branch.status == "answered":
                branch.status = br.LOST
        self._cancel_open(run, br.CANCELLED)
        self._finish_branches(run)
        call = run.call
        now = time.monotonic()
        if agreement is not None and self.observer is not None:
            self.observer.on_agreement(call.task.name, agreement)
        result: dict[str, Any] = {
            "request_id": call.request_id,
            "task": call.task.name,
            "strategy": call.strategy,
            "content": winner.content,
            "parsed": winner.parsed if call.task.output == "json" else None,
            "model": winner.model,
            "agreement": round(agreement, 4) if agreement is not None else None,
            "candidates": self._candidates(run),
            "duration_ms": round((now - run.arrived) * 1000, 1),
            "timings": {
                "deadline_ms": call.deadline_ms,
                "first_token_ms": (
                    round((winner.first_token_at - run.arrived) * 1000, 1)
                    if winner.first_token_at
                    else None
                ),
                "winner_ms": winner.duration_ms,
                "branches": len(run.branches),
            },
        }
        if run.decided_by:
            result["decided_by"] = run.decided_by
        return result

    def _failure(
        self,
        run: _Run,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        **extra: Any,
    ) -> errors.ApiError:
        """The error for a request without an answer; the branches say which one."""
        expired = run.left() <= 0
        if expired:
            self._cancel_open(run, br.DEADLINE)
        self._finish_branches(run)
        candidates = self._candidates(run)
        headers: dict[str, str] = {}
        if status is None:
            rejected = [b for b in run.branches if b.error == "concurrency_limit"]
            if expired:
                status, type = 504, "deadline_exceeded"
                message = f"the deadline of {run.call.deadline_ms} ms passed: {message}"
            elif rejected and len(rejected) == len(run.branches):
                status, type = 429, "concurrency_limit"
                retry = min(b.retry_after or 1 for b in rejected)
                headers["Retry-After"] = str(retry)
                extra["reason"] = "models_busy"
            elif run.branches and all(
                b.upstream_status is not None and 400 <= b.upstream_status < 500
                for b in run.branches
            ):
                # Ollama refused every branch (e.g. an embedding-only model was named).
                status, type = 400, "model_refused"
            elif all(
                b.verdict == "failure" or b.error == "ollama_unavailable" for b in run.branches
            ):
                status, type = 503, "models_unavailable"
                headers["Retry-After"] = "5"
            else:
                status, type = 502, "no_valid_answer"
        return InferFailed(
            message,
            http_status=status,
            type=type,
            headers=headers,
            request_id=run.call.request_id,
            task=run.call.task.name,
            strategy=run.call.strategy,
            candidates=candidates,
            duration_ms=round((time.monotonic() - run.arrived) * 1000, 1),
            **extra,
        )

    def _finish_branches(self, run: _Run) -> None:
        """Statuses for branches still open, then one access-log line and metric per branch."""
        for branch in run.branches:
            if branch.running and branch.status == "running":
                if branch.cancel_reason == br.DEADLINE:
                    branch.status = br.TIMEOUT if branch.had_slot else br.SKIPPED
                else:
                    branch.status = br.CANCELLED
            elif branch.status == "answered":
                branch.status = br.LOST
        for branch in run.branches:
            self._branch_done(run, branch.model, branch.role, branch.status, branch)

    def _branch_done(
        self, run: _Run, model: str, role: str, outcome: str, branch: br.Branch | None = None
    ) -> None:
        if self.observer is not None:
            self.observer.on_branch_done(run.call.task.name, model, role, outcome)
        if access_log.isEnabledFor(logging.INFO):
            line = {
                "time": _utc_now(),
                "request_id": run.call.request_id,
                "kind": "branch",
                "caller": run.call.caller,
                "task": run.call.task.name,
                "strategy": run.call.strategy,
                "model": model,
                "role": role,
                "outcome": outcome,
                "duration_ms": branch.duration_ms if branch else 0.0,
            }
            if branch is not None and branch.error:
                line["error"] = branch.error
            access_log.info(json.dumps(line, separators=(",", ":")))
