"""docs/algorithms.md is generated from the registries; docs/adding-a-method.md points at real files."""

from __future__ import annotations

import re
from pathlib import Path

from unipo.algorithms.docs import render_algorithms_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_algorithms_md_is_in_sync():
    on_disk = (ROOT / "docs" / "algorithms.md").read_text(encoding="utf-8")
    assert on_disk == render_algorithms_markdown(), (
        "docs/algorithms.md is out of date: run `python -m unipo.algorithms.docs > docs/algorithms.md`"
    )


def test_adding_a_method_points_at_existing_files():
    text = (ROOT / "docs" / "adding-a-method.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:src|tests|docs)/[\w/.\-]+\.(?:py|md))`", text))
    assert len(paths) >= 5
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/adding-a-method.md names files that do not exist: {missing}"
