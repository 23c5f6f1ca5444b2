"""The demo's testbed: the warm start's cache key and cache, and the demo path at a tiny budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import unipo.tasks.testbed as testbed
from unipo.tasks.testbed import WarmStartRecipe, cached_warm_start, recipe_key

BASE = WarmStartRecipe(task={"digits": 2}, model={"hidden_size": 32, "num_layers": 1, "num_heads": 2},
                       examples=64, sft_steps=2, batch_size=8, lr=1e-3, seed=0)  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"sft_steps": 3},
        {"lr": 2e-3},
        {"seed": 1},
        {"batch_size": 16},
        {"examples": 65},
        {"task": {"digits": 3}},
        {"task": {"digits": 2, "worked": False}},
        {"model": {"hidden_size": 64, "num_layers": 1, "num_heads": 2}},
    ],
)
def test_cache_key_changes_with_every_recipe_field(change):
    assert recipe_key(BASE) == recipe_key(replace(BASE))  # same recipe, same key
    assert recipe_key(replace(BASE, **change)) != recipe_key(BASE)


def test_cache_key_changes_with_device_and_builder_code(monkeypatch):
    key = recipe_key(BASE, "cpu")
    assert recipe_key(BASE, "cuda:0") != key and recipe_key(BASE, "cuda") == recipe_key(BASE, "cuda:1")
    monkeypatch.setattr(testbed, "BUILDER_VERSION", testbed.BUILDER_VERSION + 1)
    assert recipe_key(BASE, "cpu") != key
    monkeypatch.undo()
    real = Path.read_bytes
    edited = lambda p: real(p) + (b"# edited" if p.name == "sft.py" else b"")  # noqa: E731
    monkeypatch.setattr(Path, "read_bytes", edited)  # an edit to the SFT code
    assert recipe_key(BASE, "cpu") != key


def fake_builder(calls: list):
    def build(recipe, out_dir, device="cpu", on_step=None):
        calls.append(recipe)
        (out_dir / "model").mkdir()
        (out_dir / "model" / "weights").write_text(str(recipe.sft_steps))
        return {"loss_first": 1.0, "loss_last": 0.5, "seconds": 0.1, "problems": recipe.examples}

    return build


def test_a_cache_hit_skips_the_warm_start(tmp_path):
    calls: list = []
    first = cached_warm_start(BASE, root=tmp_path, builder=fake_builder(calls))
    assert not first.cached and len(calls) == 1
    assert first.path == tmp_path / "warmstart" / recipe_key(BASE) / "model"
    info = json.loads((first.path.parent / "warm_start.json").read_text())
    assert info["recipe"] == BASE.as_dict() and info["key"] == first.key
    again = cached_warm_start(BASE, root=tmp_path, builder=fake_builder(calls))
    assert again.cached and len(calls) == 1 and again.path == first.path  # not built again
    other = cached_warm_start(replace(BASE, sft_steps=5), root=tmp_path, builder=fake_builder(calls))
    assert not other.cached and len(calls) == 2 and other.path != first.path
    assert (other.path / "weights").read_text() == "5"


def test_a_failed_build_leaves_no_entry(tmp_path):
    def broken(recipe, out_dir, device="cpu", on_step=None):
        (out_dir / "model").mkdir()
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached_warm_start(BASE, root=tmp_path, builder=broken)
    assert list((tmp_path / "warmstart").iterdir()) == []
    assert not cached_warm_start(BASE, root=tmp_path, builder=fake_builder([])).cached


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    from rich.console import Console

    from unipo.demo import run_demo

    quiet, cache = Console(quiet=True), tmp_path / "cache"
    out = run_demo(str(tmp_path / "demo"), quick=True, console=quiet, cache=cache)
    run = tmp_path / "demo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_prompt_overlap"] == 0.0 and summary["warm_start"]["cached"] is False
    assert summary["accuracy_before_seen"] is None and summary["accuracy_before_unseen"] is not None
    curve = summary["pass_at_k"]
    n = summary["eval_samples_per_prompt"]
    assert curve["k"] == list(range(1, n + 1)) and len(curve["before"]) == len(curve["after"]) == n
    assert all(a <= b + 1e-12 for a, b in zip(curve["after"], curve["after"][1:]))  # pass@k grows with k
    assert curve["before"][0] == pytest.approx(summary["accuracy_before"])  # pass@1 = sampled accuracy
    assert curve["after"][-1] == pytest.approx(summary["after/pass@8"])  # the trainer's own estimate
    assert "pass_at_k_curve.png" in (run / "report.html").read_text()
    assert (run / "plots" / "pass_at_k_curve.png").is_file()
    assert (run / "warm_start" / "config.json").is_file()  # the copy examples/compare/*.yaml start from
    assert out["warm_start"]["key"] == summary["warm_start"]["key"]
    again = run_demo(str(tmp_path / "demo2"), quick=True, console=quiet, cache=cache)
    assert again["warm_start"]["cached"] is True and again["warm_start"]["key"] == out["warm_start"]["key"]


@pytest.mark.parametrize("size", ["small", "large"])
def test_testbed_configs_are_valid_and_fit_their_answers(size, tmp_path):
    from unipo.config import load_config
    from unipo.demo import SIZES, demo_overrides, quick
    from unipo.models import count_parameters
    from unipo.tasks import AdditionTask
    from unipo.tasks.addition import worked_solution

    tb = SIZES[size]
    cfg = load_config(None, demo_overrides(tmp_path / "run", tmp_path / "model", tb))
    assert cfg.task.source == "addition" and cfg.eval.samples == 64 and max(cfg.eval.ks) == 64
    task = AdditionTask(**tb.recipe.task)
    longest = worked_solution(10**task.digits - 1, 10**task.digits - 1, task.digits)  # every column carries
    assert len(longest) + 1 <= cfg.rollout.sampling.max_new_tokens  # + EOS: no correct answer is cut
    params = count_parameters(**tb.recipe.model)
    assert (params < 2e6) if size == "small" else (1e7 <= params < 1e8)  # large: tens of millions
    assert quick(tb).recipe.model == tb.recipe.model and quick(tb).recipe.sft_steps < tb.recipe.sft_steps


def test_passk_curves_by_hand():
    import torch

    from unipo.demo import passk_curves

    before = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # prompt 0: 1 of 2 correct; prompt 1: none
    after = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    c = passk_curves(before, after)
    # pass@1 = c/n per prompt: before (0.5 + 0) / 2, after (1 + 0.5) / 2; pass@2 = any correct
    assert c["k"] == [1, 2]
    assert c["before"] == pytest.approx([0.25, 0.5]) and c["after"] == pytest.approx([0.75, 1.0])
    # paired changes at k=1: [0.5, 0.5] → s.e. 0; at k=2: [0, 1] → sd 0.7071 / sqrt(2) = 0.5
    assert c["delta_stderr"] == pytest.approx([0.0, 0.5])
