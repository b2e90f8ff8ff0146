"""Every `curl` example of the README and docs/ runs against the stack `make run` starts.

The examples are read out of the Markdown, so an example is tested the day it is written.
Each fenced shell block that calls the service is run as one bash script (its lines depend on
each other: `job=$(curl …)`, a background loop then a `wait`), in the order the pages give,
against one stack: scripts/run-dev.sh with the emulator, on free ports that replace 11433
(the emulator), 11434 and 11436 in the text.

What a call must answer: a 2xx; or a status the example names in the comment on its line
(`# 202 and the job`, `# 200 when Ollama answers, 503 otherwise`) or in a comment line above it
(a comment line speaks for the lines below it, up to the next comment or blank line); or, for a
`curl -i`, the
status of the `HTTP/1.1 …` response shown in the text block right after; a call given a time
limit (`-m`) may also run out of it (that is what the README's queue-filling clients do).
Lines for other tools (`docker`, `kubectl`, `podman`, `supervisorctl`) are not run here: the
image tests (tests/container) run the Docker commands' equivalents.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.e2e.supervised import wait_until
from tests.service_harness import ROOT, free_port

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
SHELL = {"", "sh", "bash", "shell", "console"}
NOT_RUN_HERE = re.compile(r"^\s*(docker|kubectl|podman|LLM_SUPERVISOR_SOCKET=|\S*supervisorctl)\b")
SERVICE_PORTS = re.compile(r"localhost:1143[346]")
SHOWN_STATUS = re.compile(r"^HTTP/1\.[01] (\d{3})", re.M)
# Each call writes its line, status and exit code to a file of its own: the README's background
# clients run side by side, and curl writes its --write-out to stderr a piece at a time.
PRELUDE = r"""curl() {
  local report rc
  report=$(mktemp "$CURL_REPORTS/call.XXXXXX")
  command curl "$@" --write-out "%{stderr}CURL_STATUS %{http_code}\n" 2>"$report"
  rc=$?
  grep -v '^CURL_STATUS ' "$report" >&2
  printf 'CURL_REPORT %s %s %s\n' "${BASH_LINENO[0]}" \
    "$(sed -n 's/^CURL_STATUS //p' "$report" | tail -n 1)" "$rc" >"$report"
  return $rc
}
"""


@dataclass
class Example:
    page: str
    line: int  # of the block's first line in the page
    script: list[str]
    shown_status: int | None  # the status of the response the page shows after the block
    outcomes: list[tuple[int, str, int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            indent, lang, body = match.groups()
            if lang not in SHELL or "curl" not in body or not SERVICE_PORTS.search(body):
                continue
            after = FENCE.search(text, match.end())
            shown = None
            if after and not text[match.end() : after.start()].strip():
                status = SHOWN_STATUS.search(after.group(3))
                shown = int(status.group(1)) if status else None
            lines = [line[len(indent) :] for line in body.splitlines()]
            script = ["" if NOT_RUN_HERE.match(line) else line for line in lines]
            first = text[: match.start()].count("\n") + 2
            found.append(Example(str(page.relative_to(ROOT)), first, script, shown))
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, int]]:
    """`make run`'s script, the emulator standing in for Ollama, on free ports."""
    ports = {"11433": free_port(), "11434": free_port(), "11436": free_port()}
    run_dir = Path(tempfile.mkdtemp(prefix="llm-doc-examples-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OLLAMA_"))},
        "PY": sys.executable,
        "PATH": "/usr/bin:/bin",  # no `ollama` binary: the emulator stands in
        "LLM_RUN_DIR": str(run_dir),
        "OLLAMA_URL": f"http://127.0.0.1:{ports['11433']}",
        "LLM_PROXY_PORT": str(ports["11434"]),
        "LLM_MANAGEMENT_PORT": str(ports["11436"]),
    }
    log = (run_dir / "run.log").open("ab")
    process = subprocess.Popen(
        ["bash", "scripts/run-dev.sh"], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def ready() -> bool:
        assert process.poll() is None, (run_dir / "run.log").read_text()[-3000:]
        try:
            url = f"http://127.0.0.1:{ports['11436']}/health/ready"
            return requests.get(url, timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_until(ready, 60, "the make-run stack to be ready", 0.2)
        yield ports
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_the_pages_have_examples_to_run():
    assert len(EXAMPLES) >= 15, [e.name for e in EXAMPLES]
    pages = {example.page for example in EXAMPLES}
    assert {"README.md", "docs/api.md", "docs/tasks.md"} <= pages, pages


@pytest.mark.timeout(600)
def test_every_documented_curl_example_answers_as_documented(stack):
    failures = []
    for example in EXAMPLES:
        body = "\n".join(example.script)
        for port, free in stack.items():
            body = body.replace(f"localhost:{port}", f"127.0.0.1:{free}")
        script = PRELUDE + body + "\n"
        offset = PRELUDE.count("\n")
        reports = Path(tempfile.mkdtemp(prefix="llm-doc-curl-"))
        try:
            run = subprocess.run(
                ["bash", "-c", script], capture_output=True, text=True, timeout=90, cwd=ROOT,
                env={**os.environ, "CURL_REPORTS": str(reports)},
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            failures.append(f"{example.name}: did not finish within 90 s")
            shutil.rmtree(reports, ignore_errors=True)
            continue
        statuses: dict[int, list[str]] = {}
        exits: dict[int, list[int]] = {}
        for report in sorted(reports.iterdir()):
            parts = report.read_text().split()
            # A call the example itself killed leaves no complete report.
            if len(parts) == 4 and parts[0] == "CURL_REPORT" and parts[1].isdigit():
                statuses.setdefault(int(parts[1]) - offset, []).append(parts[2])
                exits.setdefault(int(parts[1]) - offset, []).append(int(parts[3]))
        shutil.rmtree(reports, ignore_errors=True)
        if not statuses:
            failures.append(f"{example.name}: no call reached curl\n{run.stderr[-500:]}")
        for number, codes in sorted(statuses.items()):
            source = example.script[number - 1] if 0 < number <= len(example.script) else "?"
            said = _comment(source) + _comment_above(example.script, number - 1)
            allowed = {int(code) for code in re.findall(r"\b([1-5]\d\d)\b", said)}
            if example.shown_status and re.search(r"\bcurl\s+-\w*i", source):
                allowed.add(example.shown_status)
            timed = re.search(r"\s(-m|--max-time)\s", source) is not None
            for code, rc in zip(codes, exits.get(number, []), strict=False):
                if code.startswith("2") or int(code) in allowed:
                    continue
                if timed and rc == 28:
                    continue
                failures.append(
                    f"{example.name} (+{number - 1}): {code} (curl exit {rc}) for: "
                    f"{source.strip()[:160]}"
                )
    assert not failures, "\n".join(failures)


def _comment(line: str) -> str:
    """The trailing `# …` of a shell line, outside quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[index:]
    return ""


def _comment_above(script: list[str], index: int) -> str:
    """The nearest comment line above `script[index]`, unless a blank line comes between."""
    for line in reversed(script[:index]):
        if not line.strip():
            return ""
        if line.lstrip().startswith("#"):
            return line
    return ""
