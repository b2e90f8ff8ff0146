"""The README and docs/ hold together: every relative link resolves (file and #anchor), nothing
links outside the repository, and the README stays a front page (at most 250 lines).

Anchors are computed the way GitHub renders headings (lower case, punctuation dropped, spaces
to hyphens, ``-1``, ``-2`` … for repeats), so a link that works here works on GitHub.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the target ends at whitespace or ")".
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_SCHEMES = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, with their numbers (1-based)."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and _
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text()):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in _prose_lines(path.read_text()):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def test_docs_exist() -> None:
    assert DOCS.is_dir() and len(pages()) > 5, "docs/ is missing"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if _SCHEMES.match(target):
            broken.append(f"{where} (unexpected scheme)")
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{where} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            broken.append(f"{where} (no heading with anchor #{anchor} in {resolved.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it a front page (at most {README_MAX_LINES}) and "
        "move the detail into docs/"
    )


def test_every_doc_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in links(README)}
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs/ pages the README does not link to: {orphans}"


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checks themselves work: anchors as GitHub makes them, and a broken link is found."""
    assert slug("Scheduling across models (`[scheduler]`)") == "scheduling-across-models-scheduler"
    assert slug("Docker / Jetson") == "docker--jetson"
    assert slug("What is cached — nothing else, ever") == "what-is-cached--nothing-else-ever"
    assert slug("A client that leaves (`bench/client_drop.py`)") == (
        "a-client-that-leaves-benchclient_droppy"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Part\n\n## Part\n\n[ok](#part-1) `[no](#x)`\n```\n[no](#y)\n```\n"
    )
    assert anchors(page) == {"title", "part", "part-1"}
    assert links(page) == [(7, "#part-1")]
