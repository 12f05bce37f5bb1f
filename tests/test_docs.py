"""The repository documents itself: code, tests, configs and docs cite only docs/ files that exist,
never design notes kept outside the repository (docs/contributing.md, "Contracts")."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["fsdtrain", "tests", "benchmarks", "docs", "configs", "launch", "README.md"]
OUTSIDE = ["DESIGN" + ".md", "STYLE" + ".md"]  # split so that this file does not cite them itself
DOC_LINK = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)")


def _texts():
    for name in SCANNED:
        root = REPO / name
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            try:
                yield path.relative_to(REPO).as_posix(), path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # binary files cite nothing
                continue


def outside_citations(files) -> list[str]:
    return [f"{rel}:{n}: {line.strip()}" for rel, text in files
            for n, line in enumerate(text.splitlines(), 1) if any(o in line for o in OUTSIDE)]  # fmt: skip


def missing_docs(files) -> list[str]:
    docs = {p.name for p in (REPO / "docs").glob("*.md")}
    return [f"{rel}:{n}: docs/{m}" for rel, text in files
            for n, line in enumerate(text.splitlines(), 1) for m in DOC_LINK.findall(line) if m not in docs]  # fmt: skip


def test_no_citation_of_notes_outside_the_repository():
    assert outside_citations(_texts()) == [], "cite the docs/ file that holds it instead"


def test_cited_docs_exist():
    assert missing_docs(_texts()) == []


def test_the_checks_can_fail():
    missing = "docs/" + "no-such-page.md"  # split, like OUTSIDE
    bad = [("fsdtrain/x.py", f'"""See {OUTSIDE[0]} §3 and {missing}."""')]
    assert len(outside_citations(bad)) == 1
    assert missing_docs(bad) == [f"fsdtrain/x.py:1: {missing}"]
