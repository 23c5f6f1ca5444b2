"""Tiny end-to-end runs of the on-policy trainer, and its failure handling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unipo.config import load_config
from unipo.tasks import prompt_overlap
from unipo.train.run_dir import RunDirError
from unipo.train.trainer import Trainer, TrainingError

pytestmark = pytest.mark.slow


def cfg_for(model_dir, out, *extra):
    return load_config(None, [
        f"model.path={model_dir}", "model.device=cpu",
        "task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=40", "task.eval_size=4", "task.eval_seed=1000000", "task.chat=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.sampling.max_new_tokens=4",
        "optim.lr=1e-3", "optim.micro_batch_size=4", "eval.samples=2", "eval.ks=[1,2]",
        "train.steps=2", f"train.output_dir={out}", *extra,
    ])  # fmt: skip


def _parity(prompts, completions, **kw):
    # a random tiny model never solves the task; this reward varies within groups, so GRPO has signal
    return [float(len(c) % 2) for c in completions]


def test_tiny_run_writes_metrics_and_changes_params(tiny_model_dir, tmp_path):
    trainer = Trainer(cfg_for(tiny_model_dir, tmp_path / "run"), extra_rewards=[("parity", _parity, 1.0)])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    summary = trainer.train()
    assert summary["steps"] == 2
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert changed, "no parameter moved"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss/total" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss/total"]) for r in steps)
    assert {"reward/mean", "policy/entropy", "time/generate", "time/update", "regularizer/kl_ref"} <= set(
        steps[0]
    )
    assert {"law/a", "law/b", "law/r2", "law/ceiling"} <= set(steps[1])  # refit every step (NaN < 3 pairs)
    # time and peak memory by phase (β > 0 here: the reference pass is the logprobs phase)
    phases = ("generate", "reward", "logprobs", "update", "entropy_rescore")
    assert {f"time/{p}" for p in phases} <= set(steps[0])
    if "memory/update_peak_mb" in steps[0]:  # Linux (resettable VmHWM)
        assert {f"memory/{p}_peak_mb" for p in phases} <= set(steps[0])
        assert all(0 < steps[0][f"memory/{p}_peak_mb"] <= steps[0]["memory/peak_mb"] for p in phases)
    assert steps[1]["memory/peak_mb"] >= steps[0]["memory/peak_mb"] > 0  # the run's peak never falls
    assert (tmp_path / "run" / "final" / "config.json").exists()
    assert (tmp_path / "run" / "plots" / "reward.png").exists()
    assert "after/accuracy" in summary and "before/pass@2" in summary
    # the evaluation prompts' overlap with training prompts, in the step-0 record and the summary
    overlap = prompt_overlap(trainer.train_examples, trainer.eval_set.examples)
    step0 = next(r for r in records if r.get("step") == 0)
    assert step0["eval/train_prompt_overlap"] == summary["eval/train_prompt_overlap"] == overlap


def test_refuses_non_empty_run_dir(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("keep me")
    with pytest.raises(RunDirError, match=r"not empty; pass --resume .* or --overwrite"):
        Trainer(cfg_for(tiny_model_dir, out)).train()
    assert (out / "something").read_text() == "keep me"


def test_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="local"):
        Trainer(cfg_for(tmp_path / "nope", tmp_path / "run"))


def test_unknown_reasoning_gym_dataset(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"task\.name"):
        Trainer(cfg_for(tiny_model_dir, tmp_path / "run", "task.name=chain_summ"))


def _raising(prompts, completions, **kw):
    raise RuntimeError("verifier crashed")


def _nan_half(prompts, completions, **kw):
    return [math.nan if i % 2 else 1.0 for i in range(len(completions))]


def test_reward_failures_excluded_and_counted(tiny_model_dir, tmp_path):
    # half the items get NaN (excluded, counted); the run continues under the 0.6 error rate
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "train.reward_error_rate=0.6", "task.eval_size=0")
    trainer = Trainer(cfg, extra_rewards=[("flaky", _nan_half, 1.0)])
    metrics = trainer.run_step()
    assert metrics["rewards/errors"] == 4.0  # 2 prompts × 4 samples, every second one NaN
    assert metrics["rollout/train_completions"] == 4.0


def test_reward_that_raises_stops_past_error_rate(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "task.eval_size=0")
    trainer = Trainer(cfg, extra_rewards=[("broken", _raising, 1.0)])
    with pytest.raises(TrainingError, match="8 of 8 rewards failed"):
        trainer.run_step()


def test_all_equal_group_gives_no_gradient_signal(tiny_model_dir, tmp_path):
    # a constant reward makes every group zero-variance: advantages are 0, loss is 0
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "task.eval_size=0", "rewards=[{name: task, weight: 0.0}]")
    trainer = Trainer(cfg)
    metrics = trainer.run_step()
    assert metrics["advantage/zero_std_frac"] == 1.0
    assert metrics["loss/policy"] == 0.0


def test_nonfinite_loss_skips_then_stops(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "task.eval_size=0", "train.max_nonfinite_steps=2")
    trainer = Trainer(cfg)
    # the advantage is replaced by one that returns NaN
    nan_adv = lambda batch: (torch.full_like(batch.completion_mask, math.nan), {})  # noqa: E731
    object.__setattr__(trainer, "algorithm", trainer.algorithm.replace(advantage=nan_adv))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    m = trainer.run_step()
    assert m["optim/skipped_steps"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    with pytest.raises(TrainingError, match="2 consecutive steps"):
        trainer.run_step()


def _slow(prompts, completions, **kw):
    import time

    time.sleep(2.0)
    return [1.0] * len(completions)


def test_reward_timeout_counts_as_failure(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "task.eval_size=0", "train.reward_timeout_s=0.2")
    trainer = Trainer(cfg, extra_rewards=[("slow", _slow, 1.0)])
    with pytest.raises(TrainingError, match="8 of 8 rewards failed"):
        trainer.run_step()


def test_empty_completion_is_scored_and_trained(tiny_model_dir, tmp_path):
    # force EOS as the only token: every completion is empty text ("" after removing EOS)
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "task.eval_size=0")
    trainer = Trainer(cfg, extra_rewards=[("parity", _parity, 1.0)])
    eos = trainer.tokenizer.eos_token_id
    head = torch.nn.Linear(trainer.model.config.hidden_size, trainer.model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()  # every logit is its bias: EOS at 50, the rest at 0
        head.bias.zero_()
        head.bias[eos] = 50.0
    trainer.model.lm_head = head
    metrics = trainer.run_step()
    assert metrics["response/length_mean"] == 1.0  # just the EOS token
    assert metrics["rewards/task_mean"] == 0.0 and metrics["rewards/errors"] == 0.0
    assert math.isfinite(metrics["loss/total"])


def test_tensorboard_logger_and_report(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "train.loggers=[tensorboard]")
    Trainer(cfg, extra_rewards=[("parity", _parity, 1.0)]).train()
    run = tmp_path / "run"
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    html = (run / "report.html").read_text()
    assert "run" in html and (run / "plots" / "reward.png").stat().st_size > 5000


@pytest.mark.parametrize("mode", ["exact", "lagged", "none"])
def test_entropy_change_modes(tiny_model_dir, tmp_path, mode):
    # lr ≈ 0 leaves π_θ unchanged, so the exact mode (same batch re-scored after the update)
    # must measure ΔH = 0 up to float noise; lagged pairs two different batches (a nonzero ΔH).
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "optim.lr=1e-12", f"train.entropy_change={mode}",
                  "train.save_final=false", "task.eval_size=0")  # fmt: skip
    Trainer(cfg, extra_rewards=[("parity", _parity, 1.0)]).train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss/total" in r]
    measured = [r.get("entropy/change_measured") for r in steps]
    if mode == "exact":
        assert all(m is not None and abs(m) < 1e-5 for m in measured), measured
        assert all("time/entropy_rescore" in r for r in steps)
    elif mode == "lagged":
        assert measured[0] is None and measured[1] is not None and abs(measured[1]) > 1e-4
    else:
        assert measured == [None, None] and "entropy/dyn_corr" not in steps[0]
