"""The package layout holds: parts are packages, arrows run one way, Flask stays at the edge.

Imports are read with `ast` (every ``import`` and ``from … import`` anywhere in a module,
function-local ones included), so nothing is imported to check them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "management_api"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
FLASK_MODULES = ("flask", "werkzeug")
# Where Flask may be imported: the blueprints, the request plumbing, and the app factory.
FLASK_ALLOWED = {"routes", "access", "app"}
MAX_TOP_LEVEL_MODULES = 10


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by one file (``from a import b`` yields a and a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use absolute imports"
            if node.module:
                found.append(node.module)
                found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _part(module: str) -> str | None:
    """The node of the graph a module belongs to: its subpackage, or the top-level module."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    name = parts[1]
    if (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file():
        return name
    return None  # ``from management_api import __version__`` and the like


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _sources():
        source = _part(_module_name(path)) or "__init__"
        edges = graph.setdefault(source, set())
        for imported in _imports(path):
            target = _part(imported)
            if target is not None and target != source:
                edges.add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path of nodes, or None (depth-first search with colours)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, white) == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour.get(nxt, white) == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def test_top_level_holds_only_wiring_and_core() -> None:
    modules = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


@pytest.mark.parametrize(
    "package", sorted(p.parent.name for p in ROOT.glob("*/__init__.py")), ids=str
)
def test_every_package_says_what_it_is_and_may_import(package: str) -> None:
    init = ROOT / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc, f"{package}/__init__.py has no docstring"
    assert "import" in doc, f"{package}/__init__.py: say what it may import and what imports it"


def test_package_graph_has_no_cycle() -> None:
    graph = _graph()
    assert {"proxy", "access", "models", "health", "routes", "usage"} <= graph.keys()
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle between parts: " + " -> ".join(cycle or [])


def test_core_imports_no_part() -> None:
    """The shared core sits at the bottom: it may import other core modules only."""
    core = {"settings", "errors", "names", "bodies", "ollama"}
    graph = _graph()
    for module in core:
        assert graph.get(module, set()) <= core, (module, graph.get(module))


def test_flask_only_at_the_edge() -> None:
    offenders = []
    for path in _sources():
        part = _part(_module_name(path))
        if part in FLASK_ALLOWED:
            continue
        flask_imports = [m for m in _imports(path) if m.split(".")[0] in FLASK_MODULES]
        if flask_imports:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(set(flask_imports))}")
    assert not offenders, offenders


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself works: a planted cycle is reported, an acyclic graph is not."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
