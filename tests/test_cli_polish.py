"""Friction: deprecation noise filtered once (unipo's warnings kept), a summary table, progress for the
warm start and the evaluation (same numbers), plain help texts, the preference log's names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from unipo.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["train", "eval", "report", "compare", "preference", "algorithms", "demo", "config-help"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_is_plain_text(command):
    res = CliRunner().invoke(app, [command, "--help"] if command else ["--help"])
    assert res.exit_code == 0, res.output
    assert "``" not in res.output  # RST literals are not shown raw


def test_help_renders_code_as_markdown():
    res = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert "unipo train CONFIG.yaml model.path=DIR algorithm.name=dapo" in res.output
    res = CliRunner().invoke(app, ["eval", "--help"], terminal_width=200)
    assert "task.*" in res.output and "rollout.*" in res.output  # not read as Markdown emphasis


def test_summary_is_a_table(monkeypatch):
    from unipo import cli_output

    console = Console(record=True, width=160)
    monkeypatch.setattr(cli_output, "console", console)
    summary = {"steps": 200, "wall_seconds": 95.2, "algorithm": "grpo", "before/accuracy": 0.19,
               "after/accuracy": 0.288, "before/train_prompt_overlap": 0.0, "after/train_prompt_overlap": 0.0,
               "last": {"reward/mean": 0.31, "policy/entropy": 0.8, "event": "x"}}  # fmt: skip
    cli_output.print_summary(summary, "runs/demo")
    text = console.export_text()
    assert "grpo: 200 steps in 95 s" in text and "evaluation on the held-out set" in text
    row = next(line for line in text.splitlines() if " accuracy " in line)
    assert "0.1900" in row and "0.2880" in row and "+0.0980" in row
    assert "last training step" in text and "reward/mean" in text and "0.3100" in text
    assert "{'" not in text and "train_prompt_overlap" not in text  # no raw dict


def test_sft_shows_progress(tiny):
    import copy

    from unipo.train.sft import sft, sft_rows

    model, tok = copy.deepcopy(tiny[0]), tiny[1]  # the session's model stays untrained
    rows = sft_rows(tok, [tok("1+1=", add_special_tokens=False)["input_ids"]], ["2"])
    console = Console(record=True, width=120)
    seen = []
    losses = sft(model, rows, steps=3, batch_size=2, lr=1e-4, pad_id=tok.pad_token_id, console=console,
                 on_step=lambda i, loss: seen.append(i))  # fmt: skip
    text = console.export_text()
    assert len(losses) == 3 and seen == [0, 1, 2]
    assert "warm start" in text and "3/3" in text and f"loss {losses[-1]:.3f}" in text


def test_evaluation_progress_keeps_the_numbers(tiny, tmp_path):
    from unipo.config import load_config
    from unipo.rollout.hf import HFEngine
    from unipo.tasks import task_from_config
    from unipo.train.evaluate import EvalSet, encode_prompts, evaluate

    model, tok = tiny
    cfg = load_config(None, ["model.path=m", "task.chat=false", "task.config={min_terms: 2, max_terms: 2}"])
    task = task_from_config(cfg.task)
    examples = task.examples(5, 3)
    data = EvalSet(examples, *encode_prompts(tok, cfg.task, examples))
    engine = HFEngine(model, tok, max_batch=4)  # 2 prompts × 2 samples per generate call: 3 calls
    sampling = cfg.rollout.sampling.model_copy(update={"max_new_tokens": 5})
    heard: list[tuple[int, str]] = []
    out = {}
    for name, progress in (("with", lambda n, d: heard.append((n, d))), ("without", None)):
        torch.manual_seed(0)
        out[name] = evaluate(model, engine, task.reward_fn(), data, samples=2, sampling=sampling,
                             ks=[1, 2], greedy=True, samples_path=tmp_path / f"{name}.jsonl",
                             progress=progress)  # fmt: skip
    assert out["with"] == out["without"]
    assert (tmp_path / "with.jsonl").read_text() == (tmp_path / "without.jsonl").read_text()
    sampled = [n for n, d in heard if d.startswith("sampling")]
    greedy = [n for n, d in heard if d == "greedy"]
    assert sampled == [2, 2, 1] and sum(greedy) == 5 and (0, "token entropy") in heard


@pytest.mark.slow
def test_cli_filters_deprecations_but_shows_unipo_warnings(tiny, tmp_path):
    from unipo.models import save_model

    model, tok = tiny
    saved = {"task.chat": False, "task.template": "{question}", "task.system_prompt": None}
    trained = save_model(model, tok, tmp_path / "model", task=saved)
    cmd = [sys.executable, "-m", "unipo.cli", "train", f"model.path={trained}", "model.device=cpu",
           "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=8",
           "task.eval_size=0", "task.chat=true", "rollout.prompts_per_step=2", "rollout.group_size=2",
           "rollout.sampling.max_new_tokens=3", "train.steps=1", "train.save_final=false",
           f"train.output_dir={tmp_path / 'run'}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "400"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "deprecated" not in (done.stdout + done.stderr).lower()
    warned = [ln for ln in done.stderr.splitlines() if ln.startswith("warning: the prompt format differs")]
    assert len(warned) == 1 and "task.chat: the model was trained with false, this run uses true" in warned[0]
    assert "last training step" in done.stdout and "{'steps'" not in done.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 1
