"""The tasks file: the shipped example loads, and every mistake names file, key and form."""

from __future__ import annotations

from pathlib import Path

import pytest

from management_api.settings import PROJECT_ROOT
from management_api.tasks import voting
from management_api.tasks.config import TasksConfigError, load_tasks
from management_api.tasks.jsonschema import validate

SHIPPED = ("expand_queries", "site_tactics", "rerank_candidates", "judge", "recovery_plan",
           "enrich_metadata")  # fmt: skip


def test_shipped_tasks_file_loads_with_the_six_example_tasks():
    config = load_tasks(PROJECT_ROOT / "config" / "tasks.toml")
    assert tuple(config.tasks) == SHIPPED
    assert {t.strategy for t in config.tasks.values()} == {
        "fastest", "judge", "consensus", "weighted", "fallback", "voting"
    }  # fmt: skip
    expand = config.tasks["expand_queries"]
    assert expand.schema is not None and validate({"queries": ["a"]}, expand.schema) is None
    assert validate({"queries": []}, expand.schema) == "$.queries: [] should be non-empty"


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "p.md").write_text("Q: {{input}}\n")
    path = tmp_path / "tasks.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('[tasks.a]\nstrategy = "best"\nmodels = ["m"]\ntemplate = "p.md"\n',
         "tasks.a.strategy: got 'best'; expected one of: fallback"),
        ('[tasks.a]\nstrategy = "fallback"\nmodels = []\ntemplate = "p.md"\n',
         "tasks.a.models: got []; expected a list of 1 to 8 model names"),
        ('[tasks.a]\nstrategy = "fallback"\nmodels = ["m"]\ntemplate = "nope.md"\n',
         "tasks.a.template: cannot read 'nope.md'"),
        ('[tasks.a]\nstrategy = "judge"\nmodels = ["m"]\ntemplate = "p.md"\n',
         "tasks.a.judge: missing"),
        ('[tasks.a]\nstrategy = "consensus"\nmodels = ["m"]\ntemplate = "p.md"\nquorum = 2\n',
         "tasks.a.quorum: got 2; expected a number in (0, 1]"),
        ('[tasks.a]\nstrategy = "fallback"\nmodels = ["m"]\ntemplate = "p.md"\nmodles = 1\n',
         "tasks.a.modles: unknown key"),
        ('[breaker]\nwindow = 2\nmin_calls = 5\n', "breaker.min_calls: larger than window"),
        ("[defaults]\nmax_concurrent = 200\n[tasks.a]\nstrategy = \"fallback\"\n"
         "models = [\"m\"]\ntemplate = \"p.md\"\n", "defaults.max_concurrent"),
    ],
)  # fmt: skip
def test_each_mistake_names_the_key_and_the_accepted_form(tmp_path, body, fragment):
    path = write(tmp_path, body)
    with pytest.raises(TasksConfigError) as caught:
        load_tasks(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and fragment in message, message
    assert "\n" not in message


class A:
    def __init__(self, model: str, content: str = "", parsed=None, at: float = 0.0) -> None:
        self.model, self.content, self.parsed, self.finished_at = model, content, parsed, at


def test_plurality_ties_go_to_weight_then_speed():
    answers = [A("a", parsed={"l": 1}, at=1), A("b", parsed={"l": 2}, at=2)]
    winner, share, _ = voting.plurality(answers, "json", "l", lambda m: 1.0)
    assert winner.model == "a" and share == 0.5  # equal weight: the earlier answer
    winner, _, _ = voting.plurality(answers, "json", "l", lambda m: 2.0 if m == "b" else 1.0)
    assert winner.model == "b"


def test_medoid_and_early_decision():
    answers = [A("a", "red green blue"), A("b", "red green blue yellow"), A("c", "dog")]
    winner, share, _ = voting.plurality(answers, "text", None, lambda m: 1.0)
    assert winner.model in ("a", "b") and share == pytest.approx(2 / 3)
    assert voting.decided_early([2.0], 1.5) and not voting.decided_early([2.0, 1.0], 1.0)
