"""The README's "Guarantees" section stays true: every line cites a test, and every cited test exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def guarantees_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Guarantees\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def defined_tests(path: Path) -> set[str]:
    """Names of the module-level test functions in ``path`` (read from its source, not imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    defs = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {node.name for node in tree.body if isinstance(node, defs) and node.name.startswith("test_")}


def test_every_guarantee_cites_an_existing_test() -> None:
    section = guarantees_section()
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(lines) >= 20, "the Guarantees section lost its lines"
    uncited = [line for line in lines if not CITED.search(line)]
    assert not uncited, f"guarantees without a test: {uncited}"
    cited = CITED.findall(section)
    missing = []
    for rel, name in cited:
        path = ROOT / rel
        if not path.is_file() or name not in defined_tests(path):
            missing.append(f"{rel}::{name}")
    assert not missing, f"the README cites tests that do not exist: {missing}"


def test_the_checker_sees_a_missing_test() -> None:
    # the parser must catch a renamed test, or the check above would pass on anything
    assert "test_every_guarantee_cites_an_existing_test" in defined_tests(Path(__file__))
    assert "test_no_such_name" not in defined_tests(Path(__file__))
    line = "- a promise (`tests/test_readme_guarantees.py::test_no_such_name`)"
    assert CITED.findall(line) == [("tests/test_readme_guarantees.py", "test_no_such_name")]
