"""docs/configuration.md cannot drift from the code, in either direction.

* Every environment variable the code reads is documented there: the declared settings
  (`management_api/settings.py`), every name the Python package reads from the environment, and
  every ``LLM_*``, ``OLLAMA_*`` and ``JETSON_*`` name in the entrypoint, the health check, the
  scripts ``make run`` and supervisord start, ``supervisord.conf``, the compose file and the
  Dockerfile (plus the compose file's ``${VARIABLE}`` substitutions).
* Every key the limits and tasks loaders accept is documented in that file's section, written
  as the loaders' error messages write the key path (``defaults.max_queue``,
  ``tasks.<name>.quorum``).
* And back: every variable in the first column of a table there is read somewhere, every key
  documented for a file is one its loader accepts, every gunicorn setting named is one
  ``config/gunicorn.conf.py`` sets.

A variable counts as documented when it appears, in backticks, in the first column of a table
row; that is where a reader looks for it.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from management_api.proxy.limits_config import LIMIT_KEYS, SCHEDULER_KEYS, LimitsConfig
from management_api.settings import CONFIG_FILE_VARIABLE, SETTINGS
from management_api.tasks.config import _TASK_KEYS, BreakerSettings, Defaults, Judge

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
DOC_NAME = "docs/configuration.md"

# Files whose environment variables are settings of the product (not test knobs).
ENV_FILES = (
    "entrypoint.sh",
    "healthcheck.sh",
    "supervisord.conf",
    "docker-compose.yml",
    "Dockerfile",
    "scripts/run-dev.sh",
    "scripts/import-gguf.sh",
)
PYTHON_SOURCES = ("management_api", "config/gunicorn.conf.py")

_PREFIXED = re.compile(r"\b(?:LLM|OLLAMA|JETSON)_[A-Z0-9_]+\b")
_PREFIXED_EXACT = re.compile(r"(?:LLM|OLLAMA|JETSON)_[A-Z0-9_]+\Z")
_SUPERVISOR_ENV = re.compile(r"%\(ENV_([A-Z0-9_]+)\)s")
_SUBSTITUTION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")
_VARIABLE = re.compile(r"[A-Z][A-Z0-9]*_[A-Z0-9_]+\Z")
_BACKTICKED = re.compile(r"`([^`]+)`")


# --- what the code reads


def _python_files() -> list[Path]:
    files: list[Path] = []
    for name in PYTHON_SOURCES:
        path = ROOT / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def code_variables() -> dict[str, set[str]]:
    """Every environment variable the product reads → the files that read it."""
    found: dict[str, set[str]] = {}

    def add(name: str, where: str) -> None:
        found.setdefault(name, set()).add(where)

    for setting in SETTINGS:
        add(setting.variable, "management_api/settings.py")
    add(CONFIG_FILE_VARIABLE, "management_api/settings.py")
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and _PREFIXED_EXACT.match(node.value):
                add(node.value, str(path.relative_to(ROOT)))
    for name in ENV_FILES:
        text = (ROOT / name).read_text()
        for pattern in (_PREFIXED, _SUPERVISOR_ENV):
            for match in pattern.finditer(text):
                add(match.group(match.lastindex or 0), name)
        if name in ("docker-compose.yml", "Dockerfile"):
            for match in _SUBSTITUTION.finditer(text):
                if _VARIABLE.match(match.group(1)):  # not the comment's ``${VAR:-default}``
                    add(match.group(1), name)
    return found


def code_text() -> str:
    """All text a documented variable may be read from (to check the other direction)."""
    parts = [(ROOT / name).read_text() for name in ENV_FILES]
    parts += [path.read_text() for path in _python_files()]
    return "\n".join(parts)


def limits_keys() -> set[str]:
    global_keys = LimitsConfig().to_dict()["global"].keys()
    return {
        *(f"defaults.{key}" for key in LIMIT_KEYS),
        *(f"global.{key}" for key in global_keys),
        *(f"scheduler.{key}" for key in SCHEDULER_KEYS),
        "models[].match",
        *(f"models[].{key}" for key in LIMIT_KEYS),
    }


def tasks_keys() -> set[str]:
    return {
        *(f"defaults.{f.name}" for f in dataclasses.fields(Defaults)),
        *(f"breaker.{f.name}" for f in dataclasses.fields(BreakerSettings)),
        *(f"tasks.<name>.{key}" for key in _TASK_KEYS),
        *(f"tasks.<name>.judge.{f.name}" for f in dataclasses.fields(Judge)),
    }


def gunicorn_settings() -> set[str]:
    tree = ast.parse((ROOT / "config" / "gunicorn.conf.py").read_text())
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


# --- what the page documents


def sections(text: str) -> dict[str, str]:
    """``## heading`` → the text under it (the part before the first one under "")."""
    out: dict[str, str] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            continue
        out[heading] = out.get(heading, "") + line + "\n"
    return out


def first_column(text: str) -> list[str]:
    """The backticked names in the first cell of every table row (header and rule skipped)."""
    names: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cell = line.strip("|").split("|")[0]
        names += _BACKTICKED.findall(cell)
    return names


def section(title_part: str) -> str:
    matches = [body for title, body in sections(DOC.read_text()).items() if title_part in title]
    assert len(matches) == 1, f"{DOC_NAME}: expected one section whose title has {title_part!r}"
    return matches[0]


def documented_variables() -> set[str]:
    return {name for name in first_column(DOC.read_text()) if _VARIABLE.match(name)}


def _sorted_lines(found: dict[str, set[str]]) -> str:
    return "\n".join(f"  {name} (read in {', '.join(sorted(found[name]))})" for name in found)


# --- the checks


def test_every_variable_the_code_reads_is_documented() -> None:
    documented = documented_variables()
    read = code_variables()
    missing = {name: read[name] for name in sorted(read) if name not in documented}
    assert not missing, (
        f"{DOC_NAME} lacks these environment variables (add a row to one of its tables, "
        f"name in backticks in the first column):\n{_sorted_lines(missing)}"
    )


def test_every_documented_variable_exists_in_the_code() -> None:
    text = code_text()
    stale = sorted(name for name in documented_variables() if not re.search(rf"\b{name}\b", text))
    assert not stale, (
        f"{DOC_NAME} documents variables that no code reads any more (looked in "
        f"{', '.join((*ENV_FILES, *PYTHON_SOURCES))}): {', '.join(stale)}"
    )


def test_limits_file_keys_match_the_loader() -> None:
    documented = set(first_column(section("limits.toml")))
    expected = limits_keys()
    missing = sorted(expected - documented)
    unknown = sorted(documented - expected)
    assert not missing, (
        f"{DOC_NAME}, section on limits.toml, lacks keys that "
        f"management_api/proxy/limits_config.py accepts: {', '.join(missing)}"
    )
    assert not unknown, (
        f"{DOC_NAME}, section on limits.toml, documents keys the loader "
        f"(management_api/proxy/limits_config.py) refuses: {', '.join(unknown)}"
    )


def test_tasks_file_keys_match_the_loader() -> None:
    documented = set(first_column(section("tasks.toml")))
    expected = tasks_keys()
    missing = sorted(expected - documented)
    unknown = sorted(documented - expected)
    assert not missing, (
        f"{DOC_NAME}, section on tasks.toml, lacks keys that management_api/tasks/config.py "
        f"accepts: {', '.join(missing)}"
    )
    assert not unknown, (
        f"{DOC_NAME}, section on tasks.toml, documents keys the loader "
        f"(management_api/tasks/config.py) refuses: {', '.join(unknown)}"
    )


def test_gunicorn_settings_named_are_the_configs() -> None:
    named = set(first_column(section("gunicorn")))
    unknown = sorted(named - gunicorn_settings())
    assert named and not unknown, (
        f"{DOC_NAME}, section gunicorn, names settings config/gunicorn.conf.py does not set: "
        f"{', '.join(unknown)}"
    )


def test_the_collectors_see_what_they_should() -> None:
    """The scanners themselves work: names from each kind of source are found."""
    read = code_variables()
    assert "entrypoint.sh" in read["LLM_ENTRYPOINT_DRY_RUN"]
    assert "supervisord.conf" in read["LLM_IMPORT_AUTOSTART"]
    assert "docker-compose.yml" in read["BASE_IMAGE"]
    assert "management_api/services.py" in read["OLLAMA_MAX_LOADED_MODELS"]
    assert "healthcheck.sh" in read["LLM_HEALTHCHECK_TIMEOUT"]
    rows = "| variable | what |\n|---|---|\n| `A_B`, `C_D` | x `E_F` |\n| `g.h` | y |\n"
    assert first_column(rows) == ["A_B", "C_D", "g.h"]
