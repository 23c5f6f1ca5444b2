"""RTO (parts/token_reward.py): the DPO token reward worked by hand, GAE on it, the trainer's prepare
hook with a frozen local model, and the whole pipeline: a DPO run's model as the reward of a PPO run."""

from __future__ import annotations

import json

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.parts.token_reward import RTOAdvantage, dpo_token_reward


def test_dpo_token_reward_hand_values():
    # β(log π_dpo − log π_ref) = 0.05·(0.5, −1) = (0.025, −0.05) → clipped to ±0.02 → (0.02, −0.02); masked
    dpo, ref, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]), torch.tensor([[1.0, 0.0]])
    r = dpo_token_reward(dpo, ref, mask, beta=0.05, clip=0.02)
    assert r[0].tolist() == pytest.approx([0.02, 0.0])
    unclipped = dpo_token_reward(torch.tensor([[-1.0]]), torch.tensor([[-1.5]]), torch.ones(1, 1), 0.05, 0.0)
    assert unclipped.item() == pytest.approx(0.025)


def rollout(token_rewards=None) -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=torch.ones(1, 1, dtype=torch.long), prompt_mask=torch.ones(1, 1, dtype=torch.long),
        completion_ids=torch.ones(1, 2, dtype=torch.long), completion_mask=torch.ones(1, 2),
        group_ids=torch.zeros(1, dtype=torch.long), truncated=torch.zeros(1, dtype=torch.bool),
        rewards=torch.tensor([1.0]), values=torch.tensor([[0.5, 0.25]]), token_rewards=token_rewards,
    )  # fmt: skip


def test_gae_on_the_dpo_token_rewards():
    # r_tok = token reward + 1[last]·r = (0.02, −0.02 + 1) = (0.02, 0.98); V = (0.5, 0.25), γ = 1, λ = 0.95:
    # δ_1 = 0.98 − 0.25 = 0.73 = A_1; δ_0 = 0.02 + 0.25 − 0.5 = −0.23, A_0 = −0.23 + 0.95·0.73 = 0.4635
    adv, _ = RTOAdvantage(whiten=False, kl_coef=0.0)(rollout(torch.tensor([[0.02, -0.02]])))
    assert adv[0].tolist() == pytest.approx([0.4635, 0.73])
    with pytest.raises(ValueError, match=r"needs batch\.token_rewards"):
        RTOAdvantage()(rollout())
    with pytest.raises(ValueError, match=r"algorithm.params=\{rto_gae: \{dpo_model: DIR\}\}"):
        RTOAdvantage().dpo()


def test_prepare_scores_the_batch_with_the_frozen_dpo_model(tmp_path, tiny):
    from unipo.models import build_tiny_model
    from unipo.train.nograd import rollout_batch_logprobs

    model, _ = tiny
    other = build_tiny_model(tmp_path / "dpo", hidden_size=32, num_layers=1, num_heads=2, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 20, (2, 3), generator=g)
    b = RolloutBatch(
        prompt_ids=ids, prompt_mask=torch.ones(2, 3, dtype=torch.long), completion_ids=ids.flip(1),
        completion_mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), group_ids=torch.tensor([0, 0]),
        truncated=torch.zeros(2, dtype=torch.bool), rewards=torch.tensor([1.0, 0.0]),
    )  # fmt: skip

    def score(m):  # the trainer's pass
        return rollout_batch_logprobs(m, b, torch.device("cpu"), micro_batch=4)[0]

    b = b.replace(ref_logprobs=score(model))
    part = RTOAdvantage(dpo_model=str(other), dpo_beta=0.5, dpo_clip=0.0)
    out, m = part.prepare(b, score)
    expected = 0.5 * (score(part.dpo()) - b.ref_logprobs) * b.completion_mask  # an independent recomputation
    assert torch.allclose(out.token_rewards, expected) and out.token_rewards.abs().sum() > 0
    assert m["rto/token_reward_mean"].item() == pytest.approx(float(expected.sum() / 5), rel=1e-5)
    assert not any(p.requires_grad for p in part.dpo().parameters())


TASK = ["task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=20", "task.eval_size=0", "task.chat=false"]  # fmt: skip


@pytest.mark.slow
def test_dpo_run_then_rto_with_its_model(tiny_model_dir, tmp_path):
    # RTO's pipeline: DPO from the initial model, then PPO whose token reward is that DPO model's
    from unipo.config import load_config
    from unipo.preference.config import load_preference_config
    from unipo.preference.trainer import PreferenceTrainer
    from unipo.train.trainer import Trainer

    def parity(prompts, completions, **kw):
        return [float(sum(map(ord, c)) % 2) for c in completions]

    pref = load_preference_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cpu",
        "task={name: chain_sum, train_size: 20, eval_size: 0, chat: false, "
        "config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}", "pairs.prompts_per_round=4",
        "pairs.group_size=4", "pairs.sampling.max_new_tokens=4", "optim.lr=1e-2", "optim.batch_size=4",
        "optim.micro_batch_size=4", f"train.output_dir={tmp_path / 'dpo'}",
    ])  # fmt: skip
    PreferenceTrainer(pref, reward_fns=[("parity", parity, 1.0)]).train()
    dpo_dir = tmp_path / "dpo" / "final"
    assert (dpo_dir / "config.json").exists()
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cpu", "algorithm.name=rto",
        f"algorithm.params={{rto_gae: {{dpo_model: {dpo_dir}}}}}", *TASK, "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.sampling.max_new_tokens=4", "optim.micro_batch_size=4",
        "train.steps=2",
        "train.save_final=false", f"train.output_dir={tmp_path / 'rto'}",
    ])  # fmt: skip
    Trainer(cfg, extra_rewards=[("parity", parity, 1.0)]).train()
    steps = [json.loads(x) for x in (tmp_path / "rto" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "rto/token_reward_mean" in r]
    assert len(steps) == 2 and all(r["rto/token_reward_mean"] != 0 for r in steps)  # the DPO model moved
    assert all(abs(r["rto/token_reward_mean"]) <= 0.05 + 1e-9 for r in steps)  # clipped at ±c
    assert all("critic/loss" in r for r in steps)
