"""TasksReloader against files on disk: a Kubernetes ConfigMap volume updated by the kubelet's
``..data`` symlink swap (tests/configmap_volume.py), and a plain directory where only a prompt
or a schema the tasks file names is edited. Both must be applied once settled, a broken version
must keep the last good config, and nothing changes while nothing is written."""

from __future__ import annotations

import os
import time
from pathlib import Path

from management_api.tasks.reloader import TasksReloader, referenced_files
from tests.configmap_volume import ConfigMapVolume

ROOT = Path(__file__).resolve().parents[2]
STAMP = 1_700_000_000

TASKS = """\
[tasks.expand]
strategy = "fallback"
models = ["llama3.2:1b"]
template = "prompts/expand.md"
output = "json"
schema = "schemas/expand.json"

[tasks.pick]
strategy = "judge"
models = ["llama3.2:1b", "gemma3:4b"]
template = "prompts/pick.md"
judge = { model = "gemma3:4b", template = "prompts/judge.md" }
"""
SCHEMA = '{"type": "object", "required": ["queries"]}'


def files(expand: str = "Expand: {{input}}", schema: str = SCHEMA) -> dict[str, str]:
    return {
        "tasks.toml": TASKS,
        "prompts/expand.md": expand,
        "prompts/pick.md": "Pick: {{input}}",
        "prompts/judge.md": "Question: {{input}}\nAnswers: {{candidates}}",
        "schemas/expand.json": schema,
    }


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def expand_text(reloader: TasksReloader) -> str:
    return reloader.current.tasks["expand"].template.text


def test_referenced_files_are_the_templates_and_schemas_the_loader_reads(tmp_path):
    for key, text in files().items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(text)
    named = referenced_files(tmp_path / "tasks.toml")
    assert sorted(os.path.relpath(p, tmp_path) for p in named) == [
        "prompts/expand.md", "prompts/judge.md", "prompts/pick.md", "schemas/expand.json",
    ]  # fmt: skip
    reloader = TasksReloader(tmp_path / "tasks.toml")
    config = reloader.load_initial()
    templates = {t.template.source for t in config.tasks.values()}
    templates |= {t.judge.template.source for t in config.tasks.values() if t.judge}
    assert templates <= {os.path.realpath(p) for p in named}
    # The shipped file: every template and schema it names exists.
    shipped = referenced_files(ROOT / "config" / "tasks.toml")
    assert len(shipped) >= 5 and all(os.path.isfile(p) for p in shipped)
    # Unreadable or broken files name nothing (the reload reports them).
    assert referenced_files(tmp_path / "missing.toml") == ()
    (tmp_path / "broken.toml").write_text("[tasks.x\n")
    assert referenced_files(tmp_path / "broken.toml") == ()


def test_a_configmap_swap_that_changes_only_a_prompt_is_applied(tmp_path):
    volume = ConfigMapVolume(tmp_path / "tasks")
    volume.write(files(expand="Expand: {{input}}"), mtime=STAMP)
    assert (tmp_path / "tasks" / "prompts").is_symlink()  # the kubelet's layout
    reloader = TasksReloader(volume.path("tasks.toml"))
    reloader.load_initial()
    assert expand_text(reloader) == "Expand: {{input}}"
    assert reloader.check() is False

    # Same sizes, same mtimes, the tasks file byte for byte the same: only the swap tells.
    volume.write(files(expand="Widen:  {{input}}"), mtime=STAMP)
    assert reloader.check() is False  # settling, as for any edit
    assert reloader.check() is True
    assert expand_text(reloader) == "Widen:  {{input}}"
    assert reloader.check() is False

    # A version whose schema is broken keeps the last good config, and says why.
    volume.write(files(schema='{"type": "objekt"}'))
    assert reloader.check() is False
    assert reloader.check() is False
    assert expand_text(reloader) == "Widen:  {{input}}"
    assert reloader.last_error and "tasks.expand.schema" in reloader.last_error
    volume.write(files(expand="Again: {{input}}"))
    reloader.check()
    assert reloader.check() is True
    assert expand_text(reloader) == "Again: {{input}}" and reloader.last_error is None


def test_editing_a_prompt_in_a_plain_directory_is_applied(tmp_path):
    for key, text in files().items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(text)
    reloader = TasksReloader(tmp_path / "tasks.toml")
    reloader.load_initial()
    tasks_stat = (tmp_path / "tasks.toml").stat()

    prompt = tmp_path / "prompts" / "expand.md"
    prompt.write_text("Rewrite the request as queries: {{input}}")
    os.utime(prompt, (STAMP, STAMP))
    assert reloader.check() is False
    assert reloader.check() is True
    assert expand_text(reloader) == "Rewrite the request as queries: {{input}}"
    assert (tmp_path / "tasks.toml").stat().st_mtime_ns == tasks_stat.st_mtime_ns

    # A prompt that vanishes is an error of the tasks file; the last good config stays.
    (tmp_path / "prompts" / "pick.md").unlink()
    assert reloader.check() is False
    assert reloader.check() is False
    assert "tasks.pick.template" in (reloader.last_error or "")
    assert "pick" in reloader.current.tasks


def test_poll_thread_follows_configmap_swaps(tmp_path):
    volume = ConfigMapVolume(tmp_path / "tasks")
    volume.write(files(expand="v1 {{input}}"))
    applied: list[str] = []
    reloader = TasksReloader(
        volume.path("tasks.toml"),
        interval_seconds=0.02,
        on_apply=lambda config: applied.append(config.tasks["expand"].template.text),
    )
    reloader.load_initial()
    reloader.start()
    try:
        for version in ("v2", "v3"):
            volume.write(files(expand=f"{version} {{{{input}}}}"))
            assert wait_until(lambda v=version: expand_text(reloader).startswith(v))
    finally:
        reloader.stop()
    assert applied == ["v1 {{input}}", "v2 {{input}}", "v3 {{input}}"]
