"""Every preset runs end to end on the tiny model from the CLI: ``unipo train ... algorithm.name=NAME``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from unipo.algorithms import list_algorithms
from unipo.cli import app

pytestmark = pytest.mark.slow

PRESETS = [a.name for a in list_algorithms()]
# presets that need a local artefact to run: RTO's token reward comes from a DPO-trained model (here the
# initial model itself, which gives zero DPO rewards but runs the whole path; tests/test_rto.py trains one)
EXTRA = {"rto": lambda model_dir: [f"algorithm.params={{rto_gae: {{dpo_model: {model_dir}}}}}"]}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_from_cli(name, tiny_model_dir, tmp_path):
    out = tmp_path / name
    args = [
        "train", f"model.path={tiny_model_dir}", "model.device=cpu", f"algorithm.name={name}",
        "task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=30", "task.eval_size=0", "task.chat=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.sampling.max_new_tokens=6",
        "rollout.max_refill_rounds=1", "optim.micro_batch_size=4", "optim.lr=1e-3",
        "train.steps=2", "train.save_final=false", f"train.output_dir={out}",
        # a reward with within-group variance so every part sees non-zero advantages
        "rewards=[{name: format, weight: 1.0, params: {pattern: '[0-9]'}}]",
        *EXTRA.get(name, lambda _: [])(tiny_model_dir),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert len(steps) == 2
    assert all(r.get("optim/skipped_steps", 0) == 0 for r in steps)


def test_algorithms_lists_every_preset():
    result = CliRunner().invoke(app, ["algorithms"])
    assert result.exit_code == 0
    for name in PRESETS:
        assert name in result.output


def test_incompatible_swap_is_rejected_with_reason(tiny_model_dir, tmp_path):
    args = ["train", f"model.path={tiny_model_dir}", "algorithm.name=gspo", "algorithm.aggregate=token_mean",
            f"train.output_dir={tmp_path / 'x'}"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "gspo" in result.output and "seq_mean_token_mean" in result.output
