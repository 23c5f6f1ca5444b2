"""Asynchronous rollouts: the next batch is generated during the update, with the previous weights;
staleness is bounded; at staleness 0 the run is the synchronous one; decoupled PPO's weight."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.config import load_config
from unipo.parts.corrections import Decoupled
from unipo.train.async_rollout import drop_stale
from unipo.train.trainer import Trainer


def cfg_for(model_dir, out, *extra):
    return load_config(None, [
        f"model.path={model_dir}", "model.device=cpu", "algorithm.name=grpo",
        "task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=40", "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.sampling.max_new_tokens=4", "optim.lr=1e-2",
        "optim.micro_batch_size=8", "train.threads=1", "train.seed=2", f"train.output_dir={out}",
        "rewards=[{name: format, weight: 1.0, params: {pattern: '[0-9]'}}]",  # varies within groups
        *extra,
    ])  # fmt: skip


def rows(versions: list[int]) -> RolloutBatch:
    b = len(versions)
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.ones(b, 2, dtype=torch.long), completion_mask=torch.ones(b, 2),
        group_ids=torch.arange(b), truncated=torch.zeros(b, dtype=torch.bool),
        weight_version=torch.tensor(versions),
    )  # fmt: skip


def test_drop_stale_keeps_rows_within_the_bound():
    kept, dropped = drop_stale(rows([3, 2, 1, 0]), version=3, max_staleness=1)
    assert kept.weight_version.tolist() == [3, 2] and dropped == 2
    assert drop_stale(rows([3, 3]), 3, 0)[1] == 0
    with pytest.raises(ValueError, match="> the policy's 2"):  # a row from the future cannot exist
        drop_stale(rows([3]), 2, 5)


def test_decoupled_weight_by_hand():
    # log π_prox − log μ = [0.5, −1.9]: w = [e^0.5 = 1.6487, e^−1.9 = 0.1496]; cap 1.5 zeroes the first
    # (it stays in the loss: keep is the mask), AReaL's behav_imp_weight_cap rule
    b = rows([0]).replace(
        old_logprobs=torch.tensor([[-1.0, -2.0]]), rollout_logprobs=torch.tensor([[-1.5, -0.1]])
    )
    w, keep, m = Decoupled(cap=1.5)(b)
    torch.testing.assert_close(w, torch.tensor([[0.0, math.exp(-1.9)]]))
    assert keep.tolist() == [[True, True]] and float(m["rollout_corr/decoupled_capped_frac"]) == 0.5
    w, _, _ = Decoupled(cap=None)(b)
    torch.testing.assert_close(w, torch.tensor([[math.exp(0.5), math.exp(-1.9)]]))
    with pytest.raises(ValueError, match="cap must be > 1"):
        Decoupled(cap=0.5)


@pytest.mark.slow
def test_async_samples_the_next_batch_with_the_previous_weights(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "a", "rollout.async=true", "rollout.max_staleness=1")
    trainer = Trainer(cfg)
    assert not trainer.engine.shares_weights  # the HF engine samples from a snapshot of the weights
    first = trainer.run_step()
    assert first["rollout/staleness_mean"] == 0.0  # the first batch is generated in place
    assert trainer.prefetch.future is not None  # ... and the next one is already in flight
    live = dict(trainer.model.named_parameters())
    snap = dict(trainer.engine.model.named_parameters())
    assert any(not torch.equal(live[k], snap[k]) for k in snap)  # the update did not touch the sampler
    second = trainer.run_step()
    assert second["rollout/staleness_mean"] == 1.0 and second["rollout/stale_dropped"] == 0.0
    assert "time/rollout_wait" in second
    trainer.close()
    assert trainer.prefetch is None


@pytest.mark.slow
def test_async_at_staleness_zero_is_the_synchronous_run(tiny_model_dir, tmp_path):
    # one after the other: both sample from the process's global random stream, seeded at construction
    a = Trainer(cfg_for(tiny_model_dir, tmp_path / "a", "rollout.async=true", "rollout.max_staleness=0"))
    losses_a = [a.run_step()["loss/total"] for _ in range(3)]
    b = Trainer(cfg_for(tiny_model_dir, tmp_path / "b"))
    losses_b = [b.run_step()["loss/total"] for _ in range(3)]
    assert losses_a == losses_b
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n


def test_spear_trains_on_replayed_rows_with_their_sampler_logprobs(tiny_model_dir, tmp_path):
    # SPEAR (a selection) replays step 0's and 1's wins at step 2: they keep the log μ and the weight
    # version they were sampled with, pass the synchronous staleness check, and TIS reads their μ
    from unipo.batch import REPLAYED_ROW_KEY

    cfg = cfg_for(tiny_model_dir, tmp_path / "run", "algorithm.name=spear", "algorithm.corrections=[tis]",
                  "train.steps=3", "train.save_final=false", "train.entropy_change=none")  # fmt: skip
    trainer = Trainer(cfg)
    seen: list = []
    collect = trainer.collect

    def recording():
        batch, metrics = collect()
        seen.append(batch)
        return batch, metrics

    trainer.collect = recording
    trainer.train()
    last = seen[-1]
    replayed = last.flags(REPLAYED_ROW_KEY)  # [B]
    assert bool(replayed.any()) and last.rollout_logprobs is not None
    assert all(v < 2 for v in last.weight_version[replayed].tolist())
    for i in replayed.nonzero().flatten().tolist():  # each is a row of the step that sampled it, as it was
        src = seen[int(last.weight_version[i])]
        n = int(last.completion_mask[i].sum())
        ids = last.completion_ids[i, :n].tolist()
        lengths = src.completion_mask.sum(1).long().tolist()
        match = [j for j in range(src.size) if src.completion_ids[j, :n].tolist() == ids and lengths[j] == n]
        assert match and any(torch.equal(src.rollout_logprobs[j, :n], last.rollout_logprobs[i, :n])
                             for j in match)  # fmt: skip
