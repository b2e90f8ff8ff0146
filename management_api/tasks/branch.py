"""One branch of a task request: one ordinary admitted generate request through the gateway.

A branch holds at most one slot (the gateway's admission), from ``admit`` until its body's
``close()``; it never asks for another. Its ``ClientWatch`` reports the branch gone once it is
cancelled (deadline, lost hedge, early stop, client left), so a branch still queued for a slot
leaves the queue, and ``cancel`` also aborts the upstream exchange so Ollama sees the connection
close at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from management_api import errors
from management_api.bodies import string_pieces
from management_api.proxy.answer_lines import LineReader
from management_api.proxy.gateway import Admission, ClientRequest, Gateway
from management_api.proxy.priority import DEFAULT_POLICY, CallerPolicy
from management_api.proxy.priority import HEADER as PRIORITY_HEADER
from management_api.proxy.transport import BodyParts, ClientGone, ClientWatch
from management_api.tasks import breaker as breakers
from management_api.tasks.config import Verbatim
from management_api.tasks.jsonschema import validate

MAX_ERROR_BODY = 64 * 1024

# Final statuses shown to callers.
WON, LOST, CANCELLED, SKIPPED, ERROR, TIMEOUT = (
    "won",
    "lost",
    "cancelled",
    "skipped",
    "error",
    "timeout",
)
# Why a branch was cancelled from outside; the deadline makes it a timeout, or a skip when it
# never got its slot.
DEADLINE = "deadline"
CLIENT_GONE = "client_gone"


class BranchWatch(ClientWatch):
    """Gone when the branch was cancelled or the client of the whole request left."""

    def __init__(self, branch: Branch, parent: ClientWatch | None) -> None:
        super().__init__(None)
        self._branch = branch
        self._parent = parent

    def gone(self) -> bool:
        if self._branch.cancel_reason is not None:
            return True
        return self._parent is not None and self._parent.gone()


class Branch:
    """State of one branch; the orchestrator reads it after ``ended`` is set."""

    def __init__(
        self,
        *,
        index: int,
        model: str,
        role: str,
        body: dict[str, Any],
        output: str,
        schema: dict[str, Any] | None,
        deadline: float,
    ) -> None:
        self.index = index
        self.model = model
        self.role = role
        self.body = body
        # The request's prompt, encoded once and shared with the other branches; its body's
        # "prompt" then holds only the prompt's first characters (all admission reads).
        self.prompt_json: EncodedPrompt | None = None
        self.output = output
        self.schema = schema
        self.deadline = deadline
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.status = "running"
        self.content = ""
        self.parsed: Any = None
        self.valid = False
        self.error: str | None = None
        self.retry_after: int | None = None
        self.upstream_status: int | None = None
        self.verdict = breakers.NEUTRAL
        self.cancel_reason: str | None = None
        self.had_slot = False
        self.admission: Admission | None = None
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._sink: Callable[[str], None] | None = None

    @property
    def duration_ms(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return round((end - self.started) * 1000, 1)

    @property
    def running(self) -> bool:
        return not self.ended.is_set()

    def cancel(self, reason: str) -> None:
        """Stop the branch: it leaves the slot queue, or its upstream connection is closed."""
        with self._lock:
            if self.cancel_reason is not None or self.ended.is_set():
                return
            self.cancel_reason = reason
            admission = self.admission
        if admission is not None:
            admission.cancel(reason)

    def attach(self, sink: Callable[[str], None]) -> None:
        """Send the text so far and every later piece to ``sink`` (the winner of a stream)."""
        with self._lock:
            if self._parts:
                sink("".join(self._parts))
            self._sink = sink

    def _piece(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)
            sink = self._sink
            if sink is not None:
                sink(text)

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "role": self.role,
            "content": self.content if self.valid or self.content else None,
            "status": self.status,
            "duration_ms": self.duration_ms,
            **({"error": self.error} if self.error else {}),
        }


def run_branch(
    branch: Branch,
    gateway: Gateway,
    *,
    request_id: str,
    watch: ClientWatch | None,
    remote_addr: str | None,
    key_name: str | None,
    caller: str = "anonymous",
    policy: CallerPolicy = DEFAULT_POLICY,
    task_priority: str | None = None,
    task: str | None = None,
    asked_priority: str | None = None,
    on_event: Callable[[Branch, str], None],
) -> None:
    """Run on a pool thread: admit, stream the answer, release, then report "done"."""
    try:
        _run(
            branch, gateway, request_id, watch, remote_addr, key_name, caller, policy,
            task_priority, task, asked_priority, on_event,
        )  # fmt: skip
    except Exception as exc:  # a bug must not leave the orchestrator waiting
        branch.status, branch.error = ERROR, f"internal error ({type(exc).__name__})"
    finally:
        branch.finished_at = time.monotonic()
        if branch.status == "running":
            branch.status = ERROR
        branch.ended.set()
        on_event(branch, "done")


def _cancelled_status(branch: Branch) -> str:
    if branch.cancel_reason == DEADLINE:
        return TIMEOUT if branch.had_slot else SKIPPED
    return CANCELLED


PROMPT_HEAD_CHARS = 200


@dataclass(frozen=True)
class EncodedPrompt(Verbatim):
    """A prompt as a JSON string, UTF-8 in pieces: built once per request and sent by each of
    its branches, never copied per branch nor held a second time as one string."""

    pieces: tuple[bytes, ...]
    head: str  # its first characters: whether it is empty is all admission reads of it


def encode_prompt(parts: Iterable[str | Verbatim]) -> EncodedPrompt:
    """Encode the prompt that is the concatenation of ``parts`` (a template's literal text and
    field values): the JSON escape of a concatenation is the concatenation of the escapes, so
    a part already encoded (the task's prompt inside a judge's) is spliced in, not copied."""
    pieces = [b'"']
    head = ""
    for part in parts:
        if isinstance(part, EncodedPrompt):
            text, escaped = part.head, part.pieces[1:-1]  # without its quotes
        elif isinstance(part, str):
            text, escaped = part, tuple(string_pieces(part))
        else:
            raise TypeError(f"a prompt is made of text, not {type(part).__name__}")
        if len(head) < PROMPT_HEAD_CHARS:
            head += text[: PROMPT_HEAD_CHARS - len(head)]
        pieces.extend(escaped)
    pieces.append(b'"')
    return EncodedPrompt(tuple(pieces), head)


def body_parts(branch: Branch) -> BodyParts:
    """The branch's /api/generate body as pieces: its own small fields, then the prompt."""
    encoded = branch.prompt_json
    if encoded is None:
        encoded = encode_prompt([branch.body.get("prompt", "")])
    rest = {key: value for key, value in branch.body.items() if key != "prompt"}
    head = json.dumps(rest, ensure_ascii=False)[:-1] + (", " if rest else "") + '"prompt": '
    return BodyParts((head.encode(), *encoded.pieces, b"}"))


def _run(
    branch: Branch,
    gateway: Gateway,
    request_id: str,
    watch: ClientWatch | None,
    remote_addr: str | None,
    key_name: str | None,
    caller: str,
    policy: CallerPolicy,
    task_priority: str | None,
    task: str | None,
    asked_priority: str | None,
    on_event: Callable[[Branch, str], None],
) -> None:
    parts = body_parts(branch)
    request = ClientRequest(
        method="POST",
        path="/api/generate",
        query="",
        headers=[("Content-Type", "application/json")]
        + ([(PRIORITY_HEADER, asked_priority)] if asked_priority else []),
        body=b"",
        streamed_body=parts,
        content_length=parts.length,
        payload=branch.body,
        watch=BranchWatch(branch, watch),
        request_id=request_id,
        remote_addr=remote_addr,
        key_name=key_name,
        caller=caller,
        policy=policy,
        task_priority=task_priority,
        task=task,
    )
    try:
        admission = gateway.admit(request)
    except ClientGone:
        branch.status = _cancelled_status(branch)
        return
    except errors.ConcurrencyLimit as exc:
        branch.status, branch.error = SKIPPED, "concurrency_limit"
        branch.retry_after = int(exc.headers.get("Retry-After", "1"))
        return
    branch.had_slot = admission.slot is not None
    with branch._lock:
        branch.admission = admission
        cancelled = branch.cancel_reason
    if cancelled is not None:
        admission.cancel(cancelled)
    remaining = max(0.05, branch.deadline - time.monotonic())
    try:
        forwarded = gateway.open(admission, first_byte_timeout=remaining)
    except ClientGone:
        branch.status = _cancelled_status(branch)
        return
    except errors.ApiError as exc:
        if branch.cancel_reason is not None:
            branch.status = _cancelled_status(branch)
            if branch.status == TIMEOUT:
                branch.verdict = breakers.FAILURE
            return
        branch.status = TIMEOUT if exc.status == 504 else ERROR
        branch.error = exc.type
        branch.verdict = breakers.FAILURE if exc.status >= 500 else breakers.NEUTRAL
        return
    try:
        if forwarded.status >= 400:
            _read_error(branch, forwarded.status, forwarded.body)
            return
        _read_stream(branch, forwarded.body, on_event)
    finally:
        close = getattr(forwarded.body, "close", None)
        if close is not None:
            close()  # releases the slot, exactly once


def _read_error(branch: Branch, status: int, body: Any) -> None:
    data = b""
    for piece in body:
        data += piece
        if len(data) > MAX_ERROR_BODY:
            break
    try:
        message = str(json.loads(data).get("error") or f"Ollama answered {status}")
    except (ValueError, AttributeError):
        message = f"Ollama answered {status}"
    branch.status, branch.error = ERROR, message[:300]
    branch.upstream_status = status
    branch.verdict = breakers.FAILURE if status >= 500 else breakers.NEUTRAL


def _read_stream(branch: Branch, body: Any, on_event: Callable[[Branch, str], None]) -> None:
    reader = LineReader()
    done = False
    for piece in body:  # read to the end, so the exchange counts as completed
        if done:
            continue
        for line in reader.feed(piece):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if not isinstance(item, dict):
                continue
            if "error" in item:
                if branch.cancel_reason is not None:
                    break  # the terminal line of our own abort
                branch.status, branch.error = ERROR, str(item["error"])[:300]
                branch.verdict = breakers.FAILURE
                return
            token = item.get("response") or item.get("thinking")
            if token and branch.first_token_at is None:
                branch.first_token_at = time.monotonic()
                on_event(branch, "token")
            if item.get("response"):
                branch._piece(item["response"])
            if item.get("done"):
                done = True
                break
    if branch.cancel_reason is not None and not done:
        branch.status = _cancelled_status(branch)
        if branch.status == TIMEOUT:
            branch.verdict = breakers.FAILURE
        branch.content = branch.text()
        return
    if not done:
        branch.status, branch.error = ERROR, "the stream from Ollama ended early"
        branch.verdict = breakers.FAILURE
        return
    branch.verdict = breakers.SUCCESS
    branch.content = branch.text()
    _judge_output(branch)


def _judge_output(branch: Branch) -> None:
    """Whether the answer is usable: non-empty text, or JSON (matching the schema if any)."""
    text = branch.content.strip()
    if branch.output == "json":
        try:
            branch.parsed = json.loads(text)
        except ValueError:
            branch.status, branch.error = ERROR, "invalid_json"
            return
        if branch.schema is not None:
            problem = validate(branch.parsed, branch.schema)
            if problem:
                branch.status, branch.error = ERROR, f"schema: {problem}"[:300]
                return
    elif not text:
        branch.status, branch.error = ERROR, "empty answer"
        return
    branch.valid = True
    branch.status = "answered"  # won or lost once the strategy decided
