"""Every preset states what it follows and how it departs from it, and shows both.

``source`` names what was checked (a paper equation and/or ``owner/repo@commit path:function``);
``deviations`` lists each departure as a sentence, ``()`` when there is none. An empty source or
``deviations=None`` ("not stated") fails here, for RL algorithms and preference presets alike.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from unipo import cli
from unipo.algorithms import list_algorithms
from unipo.algorithms.docs import render_algorithms_markdown
from unipo.cli import app
from unipo.preference import list_presets

RL = {a.name: a for a in list_algorithms()}
PREFERENCE = {p.name: p for p in list_presets()}
ALL = [("rl", n) for n in sorted(RL)] + [("preference", n) for n in sorted(PREFERENCE)]


@pytest.mark.parametrize(("kind", "name"), ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_every_preset_states_source_and_deviations(kind: str, name: str):
    preset = RL[name] if kind == "rl" else PREFERENCE[name]
    assert preset.source.strip(), f"{kind} preset {name!r} has an empty source"
    assert preset.deviations is not None, f"{kind} preset {name!r}: deviations not stated (None)"
    assert isinstance(preset.deviations, tuple), f"{name}: deviations must be a tuple of sentences"
    for sentence in preset.deviations:
        assert isinstance(sentence, str) and sentence.strip(), f"{name}: an empty deviation"


def test_no_name_is_both_kinds():
    # `unipo algorithms NAME` and `unipo train algorithm.name=NAME` resolve names across both kinds
    assert not set(RL) & set(PREFERENCE)


def test_cli_lists_both_kinds():
    result = CliRunner().invoke(app, ["algorithms"])
    assert result.exit_code == 0, result.output
    assert "unipo algorithms (RL)" in result.output and "preference presets" in result.output
    for name in [*RL, *PREFERENCE]:
        assert name in result.output


@pytest.mark.parametrize("name", ["dapo", "ipo"])
def test_cli_shows_one_preset_with_its_provenance(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli.console, "width", 1000)  # no wrapping inside a sentence
    preset = RL.get(name) or PREFERENCE[name]
    result = CliRunner().invoke(app, ["algorithms", name])
    assert result.exit_code == 0, result.output
    assert ("RL algorithm" if name in RL else "preference preset") in result.output
    assert preset.source[:80] in result.output
    for sentence in preset.deviations or ():
        assert f"- {sentence}"[:80] in result.output
    if preset.deviations == ():
        assert re.search(r"deviations\s*│\s*none", result.output)
    other = "ipo" if name == "dapo" else "dapo"
    assert other not in result.output.split()  # only the one preset


def test_cli_unknown_name_is_a_one_line_error():
    result = CliRunner().invoke(app, ["algorithms", "no_such_method"])  # the console is 80 wide here
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "unknown preset 'no_such_method'" in lines[0]
    assert "grpo" in lines[0] and "dpo" in lines[0] and "preference presets:" in lines[0]


def test_docs_show_provenance_for_both_kinds():
    md = render_algorithms_markdown()
    assert "# Preference presets" in md
    for preset in [*RL.values(), *PREFERENCE.values()]:
        section = md.split(f"\n## {preset.name}\n", 1)[1].split("\n## ", 1)[0]
        assert f"Source: {preset.source or '(not stated)'}" in section
        if preset.deviations:
            assert all(f"- {s}" in section for s in preset.deviations)
