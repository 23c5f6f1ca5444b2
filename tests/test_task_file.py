"""A saved model carries its prompt format and task (unipo_task.json); `unipo eval` and runs use it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unipo.cli import app
from unipo.config import load_config
from unipo.models.task_file import (
    TASK_FILE,
    PromptFormatWarning,
    eval_settings,
    read_task_file,
    task_settings,
)

TASK = "{min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}"


def flat(text: str) -> str:
    return " ".join(text.split())


def run_cfg(model_dir: Path, out: Path, *extra: str):
    return load_config(None, [
        f"model.path={model_dir}", "model.device=cpu", "task.name=chain_sum", f"task.config={TASK}",
        "task.train_size=20", "task.eval_size=3", "task.eval_seed=1000000", "task.chat=false",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.sampling.max_new_tokens=3",
        "optim.micro_batch_size=4", "eval.samples=2", "eval.ks=[1,2]", "eval.greedy=false",
        "train.steps=1", f"train.output_dir={out}", *extra,
    ])  # fmt: skip


def prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's flow in small: a run with the chat template off (the tiny tokenizer has one)."""
    from unipo.train.trainer import Trainer

    out = tmp_path_factory.mktemp("task_file") / "run"
    Trainer(run_cfg(tiny_model_dir, out)).train()
    return out


@pytest.mark.slow
def test_eval_with_defaults_sees_the_training_prompts(trained: Path, tmp_path: Path):
    saved = read_task_file(trained / "final")
    assert saved is not None and saved["task.chat"] is False and saved["task.eval_seed"] == 1_000_000
    assert saved["rollout.sampling.max_new_tokens"] == 3 and saved["task.config"]["max_digits"] == 1
    # the README's command: task.name given (as trained), everything else default (task.chat: None,
    # which would turn the tiny tokenizer's chat template on)
    res = CliRunner().invoke(app, ["eval", str(trained / "final"), "task.name=chain_sum", "eval.samples=2",
                                   "eval.greedy=false", "--out", str(tmp_path / "ev")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "unipo_task.json" in flat(res.output) and "not as trained" not in res.output
    run_prompts = prompts(trained / "samples.jsonl")[:6]  # the step-0 evaluation: 3 prompts × 2 samples
    assert prompts(tmp_path / "ev" / "samples.jsonl") == run_prompts
    assert not any("<|user|>" in p for p in run_prompts)  # plain prompts, no chat template
    record = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert record["max_new_tokens"] == 3 and record["differ_from_saved"] == []


@pytest.mark.slow
def test_eval_says_which_keys_differ_from_the_saved_ones(trained: Path, tmp_path: Path):
    res = CliRunner().invoke(app, ["eval", str(trained / "final"), "task.chat=true", "task.eval_size=2",
                                   "eval.samples=1", "eval.greedy=false", "--out",
                                   str(tmp_path / "ev")])  # fmt: skip
    assert res.exit_code == 0, res.output
    text = flat(res.output)
    assert "not as trained: task.chat: trained with false, now true" in text
    assert "task.eval_size: trained with 3, now 2" in text
    assert all("<|user|>" in p for p in prompts(tmp_path / "ev" / "samples.jsonl"))  # as asked


@pytest.mark.slow
def test_run_warns_when_its_prompt_format_differs(trained: Path, tmp_path: Path):
    from unipo.train.trainer import Trainer

    final = trained / "final"
    said = r"task\.chat: the model was trained with false, this run uses true"
    with pytest.warns(PromptFormatWarning, match=said):
        Trainer(run_cfg(final, tmp_path / "a", "task.chat=true"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptFormatWarning)
        Trainer(run_cfg(final, tmp_path / "b"))  # the same format: no warning


def test_eval_settings_fill_only_what_the_user_did_not_set():
    saved = {"task.name": "chain_sum", "task.config": {"min_terms": 2}, "task.chat": False,
             "task.template": "{question}", "task.eval_seed": 7,
             "rollout.sampling.max_new_tokens": 8}  # fmt: skip
    fill, differ = eval_settings(saved, {"task": {"name": "chain_sum", "chat": True}})
    assert 'task.chat=false' not in fill and differ == ["task.chat: trained with false, now true"]
    assert {'task.config={"min_terms": 2}', "task.eval_seed=7", "rollout.sampling.max_new_tokens=8"} <= set(
        fill
    )
    cfg = load_config(None, [*fill, "model.path=m", "task.name=chain_sum", "task.chat=true"])
    assert cfg.task.config == {"min_terms": 2} and cfg.task.chat is True and cfg.task.eval_seed == 7
    # another task: the model's prompt format, that task's own options and seeds
    fill, differ = eval_settings(saved, {"task": {"name": "basic_arithmetic"}})
    assert set(fill) == {"task.chat=false", 'task.template="{question}"', "rollout.sampling.max_new_tokens=8"}
    assert differ == ['task.name: trained with "chain_sum", now "basic_arithmetic"']
    # a whole section from a config file counts as set
    fill, _ = eval_settings(saved, {"task": {"config": {"min_terms": 3}}})
    assert not any(f.startswith("task.config=") for f in fill)


def test_task_settings_resolve_chat_and_write_beside_the_weights(tiny, tmp_path: Path):
    from unipo.models import save_model

    model, tok = tiny
    cfg = load_config(None, ["model.path=m"])  # task.chat None: the tiny tokenizer has a template
    settings = task_settings(cfg.task, tok, 16)
    assert settings["task.chat"] is True and settings["rollout.sampling.max_new_tokens"] == 16
    save_model(model, tok, tmp_path / "m", task=settings)
    assert read_task_file(tmp_path / "m") == json.loads(json.dumps(settings))
    save_model(model, tok, tmp_path / "plain")
    assert read_task_file(tmp_path / "plain") is None and not (tmp_path / "plain" / TASK_FILE).exists()
