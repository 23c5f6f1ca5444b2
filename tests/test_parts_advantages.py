"""Advantage estimators against hand-computed values and naive loop implementations."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.parts.advantages import (
    GAE,
    RLOO,
    GroupMeanBatchStd,
    GroupNorm,
    ReinforcePP,
    ReinforcePPBaseline,
    gae_returns,
    masked_whiten,
)


def make_batch(rewards, group_ids, mask, **extra) -> RolloutBatch:
    mask = torch.as_tensor(mask, dtype=torch.float)
    b, t = mask.shape
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long),
        prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.zeros(b, t, dtype=torch.long),
        completion_mask=mask,
        group_ids=torch.as_tensor(group_ids),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.as_tensor(rewards, dtype=torch.float),
        **extra,
    )


def test_group_norm_hand_values():
    # group 0: r = [1, 0] → mean 0.5, unbiased std √((0.25+0.25)/1) = 0.70711 → A = ±0.70711
    # group 1: r = [2, 2] → std 0 → A = 0;  group 2: a lone sample → A = 0
    batch = make_batch([1, 0, 2, 2, 3], [0, 0, 1, 1, 2], torch.ones(5, 2))
    adv, m = GroupNorm()(batch)
    expected = torch.tensor([0.5 / (math.sqrt(0.5) + 1e-6), -0.5 / (math.sqrt(0.5) + 1e-6), 0, 0, 0])
    torch.testing.assert_close(adv, expected[:, None].expand(5, 2))
    # zero-std groups: group 1 and the singleton (std 0) → 3 of 5 items
    assert m["advantage/zero_std_frac"].item() == pytest.approx(3 / 5)


def test_group_norm_dr_grpo_no_std_and_padding():
    # Dr. GRPO: A = r − mean = ±0.5; padding stays 0
    batch = make_batch([1, 0], [7, 7], [[1, 1, 0], [1, 0, 0]])
    adv, _ = GroupNorm(scale_by_std=False)(batch)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]]))


def test_rloo_hand_values():
    # G = 3, r = [1, 0, 0]: A_0 = 1 − (0+0)/2 = 1, A_1 = 0 − (1+0)/2 = −0.5, A_2 = −0.5; singleton → 0
    batch = make_batch([1, 0, 0, 5], [0, 0, 0, 1], torch.ones(4, 1))
    adv, _ = RLOO()(batch)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -0.5, -0.5, 0.0]))


def test_rloo_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(12, generator=gen)
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    adv, _ = RLOO()(make_batch(r, g, torch.ones(12, 1)))
    naive = []
    for i in range(12):
        others = [r[j].item() for j in range(12) if g[j] == g[i] and j != i]
        naive.append(r[i].item() - sum(others) / len(others))
    torch.testing.assert_close(adv[:, 0], torch.tensor(naive))


def test_group_mean_batch_std_hand_values():
    # group means [0.5, 0.5, 1, 1]; batch std of [1, 0, 1, 1]: mean 0.75,
    # Σ(r − 0.75)² = 0.0625 + 0.5625 + 0.0625 + 0.0625 = 0.75, /3 = 0.25 → std 0.5
    batch = make_batch([1, 0, 1, 1], [0, 0, 1, 1], torch.ones(4, 1))
    adv, m = GroupMeanBatchStd()(batch)
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5, -0.5, 0.0, 0.0]) / (0.5 + 1e-6))
    assert m["advantage/batch_std"].item() == pytest.approx(0.5)


def test_masked_whiten_matches_naive():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float)
    vals = [v[i, j].item() for i in range(3) for j in range(5) if mask[i, j]]
    mu = sum(vals) / len(vals)
    var = sum((x - mu) ** 2 for x in vals) / (len(vals) - 1)  # unbiased, as verl
    naive = torch.tensor(
        [
            [(v[i, j].item() - mu) / math.sqrt(var + 1e-8) * mask[i, j].item() for j in range(5)]
            for i in range(3)
        ]
    )
    torch.testing.assert_close(masked_whiten(v, mask), naive)


def test_reinforce_pp_hand_values():
    # mask [[1,1,1],[1,1,0]], r = [1, 0], β = 0.1, k1 KL_t = old − ref = [[0.5,0,0],[0,0.5,·]]
    # token rewards: row0 [−0.05, 0, 1], row1 [0, −0.05, 0]
    # returns (γ=1): row0 [0.95, 1, 1], row1 [−0.05, −0.05, ·]
    # valid: 0.95, 1, 1, −0.05, −0.05 → mean 0.57, deviations [.38, .43, .43, −.62, −.62],
    # Σdev² = 1.283, unbiased var = 1.283/4 = 0.32075
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.5, 0.0]])
    batch = make_batch([1, 0], [0, 1], [[1, 1, 1], [1, 1, 0]], old_logprobs=old, ref_logprobs=ref)
    part = ReinforcePP(kl_coef=0.1)
    adv, m = part(batch)
    expected = torch.tensor([[0.38, 0.43, 0.43], [-0.62, -0.62, 0.0]]) / math.sqrt(0.32075 + 1e-8)
    torch.testing.assert_close(adv, expected)
    assert m["advantage/kl_in_reward"].item() == pytest.approx(1.0 / 5)
    assert part.needs_reference and part.needs_old_logprobs
    assert not ReinforcePP(kl_coef=0.0).needs_reference


def test_reinforce_pp_matches_naive_loop():
    gen = torch.Generator().manual_seed(2)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float)
    old, ref = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    r = torch.tensor([1.0, -1.0, 0.5])
    adv, _ = ReinforcePP(kl_coef=0.2, gamma=0.9)(
        make_batch(r, [0, 1, 2], mask, old_logprobs=old, ref_logprobs=ref)
    )
    returns = torch.zeros(3, 4)
    for i in range(3):
        n = int(mask[i].sum())
        for t in range(n):
            g = 0.0
            for s in range(t, n):
                r_s = (r[i].item() if s == n - 1 else 0.0) - 0.2 * (old[i, s] - ref[i, s]).item()
                g += 0.9 ** (s - t) * r_s
            returns[i, t] = g
    torch.testing.assert_close(adv, masked_whiten(returns, mask))


def test_reinforce_pp_needs_logprobs():
    batch = make_batch([1.0], [0], [[1, 1]])
    with pytest.raises(ValueError, match=r"old_logprobs and batch\.ref_logprobs"):
        ReinforcePP(kl_coef=0.1)(batch)
    adv, _ = ReinforcePP(kl_coef=0.0)(batch)  # no KL: no log-probs needed
    assert adv.shape == (1, 2)


def test_reinforce_pp_baseline_hand_values():
    # centred r − mean_G: [0.5, −0.5, 0, 0]; tokens (mask rows of 2, 1, 2, 2 tokens):
    # 0.5, 0.5, −0.5, 0, 0, 0, 0 → mean 1/14; Σdev² = 5/7; unbiased var = (5/7)/6 = 5/42
    batch = make_batch([1, 0, 1, 1], [0, 0, 1, 1], [[1, 1], [1, 0], [1, 1], [1, 1]])
    adv, _ = ReinforcePPBaseline()(batch)
    mu, sd = 1 / 14, math.sqrt(5 / 42 + 1e-8)
    expected = torch.tensor([[0.5 - mu, 0.5 - mu], [-0.5 - mu, 0.0], [-mu, -mu], [-mu, -mu]]) / sd
    torch.testing.assert_close(adv, expected)


def test_gae_returns_hand_values():
    # γ = λ = 1: A_t = R − V_t = 1 − [0.5, 0.2, 0.1] = [0.5, 0.8, 0.9]; returns R_t = 1
    # row 1 (mask [1,1,0], r = 2 at t=1, V = [0.3, 0.4, 9(pad)]): A = [1.7, 1.6, 0], returns [2, 2, 0]
    r_tok = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae_returns(r_tok, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8, 0.9], [1.7, 1.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]]))


def test_gae_returns_discounted():
    # γ = 0.9, λ = 0.5, V = [0.5, 0.2, 0.1], r = 1 at t = 2
    # δ_2 = 1 − 0.1 = 0.9 → A_2 = 0.9
    # δ_1 = 0.9·0.1 − 0.2 = −0.11 → A_1 = −0.11 + 0.45·0.9 = 0.295
    # δ_0 = 0.9·0.2 − 0.5 = −0.32 → A_0 = −0.32 + 0.45·0.295 = −0.18725
    adv, ret = gae_returns(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.1]]), torch.ones(1, 3), 0.9, 0.5
    )
    torch.testing.assert_close(adv, torch.tensor([[-0.18725, 0.295, 0.9]]))
    torch.testing.assert_close(ret, torch.tensor([[0.31275, 0.495, 1.0]]))


def test_gae_part_places_reward_and_whitens():
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])
    batch = make_batch([1.0, 2.0], [0, 1], [[1, 1, 1], [1, 1, 0]], values=values)
    raw, ret = GAE(whiten=False).advantages_and_returns(batch)
    torch.testing.assert_close(raw, torch.tensor([[0.5, 0.8, 0.9], [1.7, 1.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]]))
    adv, _ = GAE()(batch)
    torch.testing.assert_close(adv, masked_whiten(raw, batch.completion_mask))
    assert GAE.needs_values and not GAE().needs_reference
    with pytest.raises(ValueError, match=r"batch\.values"):
        GAE()(make_batch([1.0], [0], [[1, 1]]))
