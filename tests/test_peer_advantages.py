"""The peers' advantages (pass@k GRPO, OPO, GPG, GDPO, ReMax, the optimal token baseline) against
hand-worked values and against the peer's function rewritten here as a plain loop from
verl-project/verl@1dda039 verl/trainer/ppo/core_algos.py (GDPO also from TRL's normalize_then_sum)."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.batch import RolloutBatch
from unipo.parts.otb import OptimalTokenBaseline
from unipo.parts.peer_advantages import GDPO, OPO, GPGAdvantage, PassKGroup
from unipo.parts.remax import ReMax


def make_batch(rewards, groups, lengths, t=None, **extra) -> RolloutBatch:
    b = len(rewards)
    t = t or max(lengths)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float()
    return RolloutBatch(
        prompt_ids=torch.tensor(groups)[:, None] + 5,
        prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.ones(b, t, dtype=torch.long),
        completion_mask=mask,
        group_ids=torch.tensor(groups),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        **extra,
    )


def random_batch(seed: int, groups: int = 4, g: int = 5, t: int = 6, levels=(0.0, 0.5, 1.0)) -> RolloutBatch:
    gen = torch.Generator().manual_seed(seed)
    n = groups * g
    rewards = torch.tensor(levels)[torch.randint(len(levels), (n,), generator=gen)].tolist()
    lengths = torch.randint(1, t + 1, (n,), generator=gen).tolist()
    order = torch.randperm(n, generator=gen)  # groups interleaved, as after a shuffle
    ids = torch.arange(groups).repeat_interleave(g)[order].tolist()
    return make_batch(rewards, ids, lengths, t)


def seq(adv: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:  # [B, T] → [B]: the value on each row
    return adv.sum(1) / batch.completion_mask.sum(1)


# ------------------------------------------------------------------ pass@k
def test_passk_hand_values():
    # group 0: r = [0, 1, 0.5, 0]: best row 1, gap 1 − 0.5; unbiased std: mean 0.375, Σ dev² = 0.6875,
    #   /3 = 0.229167, std 0.478714 → A = 0.5/0.478715 = 1.044460 on row 1, 0 elsewhere
    # group 1: r = [1, 1, 0]: the maximum is tied → gap 0 → all 0
    b = make_batch([0, 1, 0.5, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1], [2] * 7)
    adv, _ = PassKGroup()(b)
    want = torch.tensor([0, 0.5 / (math.sqrt(0.6875 / 3) + 1e-6), 0, 0, 0, 0, 0])
    torch.testing.assert_close(seq(adv, b), want)
    adv, _ = PassKGroup(scale_by_std=False)(b)
    torch.testing.assert_close(seq(adv, b), torch.tensor([0, 0.5, 0, 0, 0, 0, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_passk_matches_verl(seed):
    batch = random_batch(seed)
    scores, index = batch.rewards.clone(), batch.group_ids.tolist()
    want = torch.zeros_like(scores)  # compute_grpo_passk_outcome_advantage
    id2scores, id2indices = defaultdict(list), defaultdict(list)
    for i in range(len(index)):
        id2scores[index[i]].append(scores[i])
        id2indices[index[i]].append(i)
    for idx in id2scores:
        rewards = torch.stack(id2scores[idx])
        topk, topk_idx = torch.topk(rewards, 2)
        advantage = (topk[0] - topk[1]) / (torch.std(rewards) + 1e-6)
        want[id2indices[idx][topk_idx[0].item()]] = advantage  # on a tie the gap is 0 whichever row
    adv, _ = PassKGroup()(batch)
    torch.testing.assert_close(adv, want[:, None] * batch.completion_mask, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ OPO
def test_opo_hand_values():
    # lengths [1, 3], r [1, 0]: b = (1·1 + 3·0)/4 = 0.25 → A = [0.75, −0.25]; a lone row (group 1) → 0
    b = make_batch([1, 0, 1], [0, 0, 1], [1, 3, 2])
    adv, _ = OPO()(b)
    torch.testing.assert_close(seq(adv, b), torch.tensor([0.75, -0.25, 0.0]))
    assert adv[0, 1:].abs().sum() == 0  # padding stays 0


@pytest.mark.parametrize("seed", [0, 1])
def test_opo_matches_verl(seed):
    batch = random_batch(seed)
    length, scores, index = batch.completion_mask.sum(-1), batch.rewards.clone(), batch.group_ids.tolist()
    id2score, id2len = defaultdict(list), defaultdict(list)  # compute_opo_outcome_advantage
    for i in range(len(index)):
        id2score[index[i]].append(scores[i])
        id2len[index[i]].append(length[i])
    bsl = {
        k: (torch.stack(id2len[k]) * torch.stack(v)).sum() / torch.stack(id2len[k]).sum()
        for k, v in id2score.items()
    }
    want = torch.stack([scores[i] - bsl[index[i]] for i in range(len(index))])
    adv, _ = OPO()(batch)
    torch.testing.assert_close(adv, want[:, None] * batch.completion_mask, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ GPG
def test_gpg_hand_values():
    # r [1, 0 | 0, 1 | 0, 0], 6 rows, 2 nonzero → α = 6/2 = 3; group means 0.5, 0.5, 0
    # A = 3·[0.5, −0.5, −0.5, 0.5, 0, 0]
    b = make_batch([1, 0, 0, 1, 0, 0], [0, 0, 1, 1, 2, 2], [1] * 6)
    adv, m = GPGAdvantage()(b)
    torch.testing.assert_close(seq(adv, b), torch.tensor([1.5, -1.5, -1.5, 1.5, 0, 0]))
    assert m["advantage/gpg_alpha"] == 3.0
    # the authors' α: 2 of 3 groups have distinct rewards → 1/(2/3 + 1e-5)
    adv, m = GPGAdvantage(alpha="valid_groups")(b)
    assert m["advantage/gpg_alpha"] == pytest.approx(1 / (2 / 3 + 1e-5))
    assert GPGAdvantage(alpha="none").scale(b) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_gpg_matches_verl(seed):
    batch = random_batch(seed)
    scores, index = batch.rewards.clone(), batch.group_ids.tolist()
    alpha = len(index) / torch.count_nonzero(scores).clamp(min=1)  # compute_gpg_outcome_advantage
    id2score = defaultdict(list)
    for i in range(len(index)):
        id2score[index[i]].append(scores[i])
    mean = {k: torch.stack(v).mean() for k, v in id2score.items()}
    want = torch.stack([alpha * (scores[i] - mean[index[i]]) / 1.0 for i in range(len(index))])
    adv, _ = GPGAdvantage()(batch)
    torch.testing.assert_close(adv, want[:, None] * batch.completion_mask, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ GDPO
def with_components(batch: RolloutBatch, comps: dict[str, list[float]], weights: dict[str, float]):
    meta = [
        {"reward_components": {k: v[i] for k, v in comps.items()}, "reward_weights": weights}
        for i in range(batch.size)
    ]
    return batch.replace(metadata=meta)


def test_gdpo_hand_values():
    # 2 groups of 2, one token each. Terms: a = [1, 0 | 1, 1], b = [0, 0 | 0, 1], weights a 1, b 2.
    # a: group 0 → ±(0.5/0.707107) = ±0.707106; group 1 constant → 0
    # b: group 0 constant → 0; group 1 → ∓0.707106 for [0, 1] = [−0.707106, +0.707106]
    # S = a + 2b = [0.707106, −0.707106, −1.414213, 1.414213]; mean 0, unbiased var = 5/3
    # whiten over the 4 tokens: S / √(5/3) = [0.547723, −0.547723, −1.095445, 1.095445]
    comps = {"a": [1, 0, 1, 1], "b": [0, 0, 0, 1]}
    b = with_components(make_batch([0] * 4, [0, 0, 1, 1], [1] * 4), comps, {"a": 1.0, "b": 2.0})
    adv, m = GDPO()(b)
    s = 0.5 / (math.sqrt(0.5) + 1e-6)
    want = torch.tensor([s, -s, -2 * s, 2 * s]) / math.sqrt(10 * s * s / 3 + 1e-8)
    torch.testing.assert_close(seq(adv, b), want)
    assert m["advantage/gdpo_terms"] == 2.0
    # GRPO on the weighted total a + 2b = [1, 0 | 1, 3] would see group 1's a-term only through the sum;
    # with one term (no components) GDPO is GRPO + whitening: r [1, 0 | 0, 0] → [s, −s, 0, 0]/√(2s²/3)
    plain = make_batch([1, 0, 0, 0], [0, 0, 1, 1], [1] * 4)
    adv, _ = GDPO()(plain)
    torch.testing.assert_close(seq(adv, plain), torch.tensor([s, -s, 0, 0]) / math.sqrt(2 * s * s / 3 + 1e-8))


def _grpo_verl(scores, index, eps=1e-6):  # compute_grpo_outcome_advantage (groups of ≥ 2 here)
    id2score = defaultdict(list)
    for i in range(len(index)):
        id2score[index[i]].append(scores[i])
    mean = {k: torch.mean(torch.stack(v)) for k, v in id2score.items()}
    std = {k: torch.std(torch.stack(v)) for k, v in id2score.items()}
    return torch.stack([(scores[i] - mean[index[i]]) / (std[index[i]] + eps) for i in range(len(index))])


@pytest.mark.parametrize("seed", [0, 1])
def test_gdpo_matches_verl_and_trl(seed):
    batch = random_batch(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    fmt = torch.randint(0, 2, (batch.size,), generator=gen).float()
    comps = {"acc": batch.rewards.tolist(), "fmt": fmt.tolist()}
    weights = {"acc": 1.0, "fmt": 0.5}
    batch = with_components(batch, comps, weights)
    index, mask = batch.group_ids.tolist(), batch.completion_mask
    # verl compute_gdpo_outcome_advantage: Σ_k w_k·GRPO(r^k), broadcast, then verl masked_whiten
    total = sum(weights[k] * _grpo_verl(torch.tensor(v), index) for k, v in comps.items())
    values = total[:, None] * mask
    mean = (values * mask).sum() / mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / (mask.sum() - 1)  # unbiased
    verl = (values - mean) * torch.rsqrt(var + 1e-8) * mask
    adv, _ = GDPO()(batch)
    torch.testing.assert_close(adv, verl, atol=1e-6, rtol=1e-6)
    # TRL normalize_then_sum: per term (r − mean)/(std + 1e-4) in the group, weighted sum,
    # then (S − mean S)/(std S + 1e-4) over the completions
    reward_k = {}
    for k, v in comps.items():
        r = torch.tensor(v)
        reward_k[k] = torch.stack([
            (r[i] - r[[j for j in range(len(index)) if index[j] == index[i]]].mean())
            / (r[[j for j in range(len(index)) if index[j] == index[i]]].std() + 1e-4)
            for i in range(len(index))
        ])  # fmt: skip
    s = sum(weights[k] * reward_k[k] for k in comps)
    trl = (s - s.mean()) / (s.std() + 1e-4)
    adv, _ = GDPO(whiten="sequences", eps=1e-4)(batch)
    torch.testing.assert_close(adv, trl[:, None] * mask, atol=1e-6, rtol=1e-6)


def test_gdpo_refuses_rows_with_different_terms():
    b = make_batch([1, 0], [0, 0], [1, 1]).replace(
        metadata=[{"reward_components": {"a": 1.0}}, {"reward_components": {"b": 0.0}}]
    )
    with pytest.raises(ValueError, match="row 1 has reward components"):
        GDPO()(b)
    with pytest.raises(ValueError, match="whiten"):
        GDPO(whiten="batch")


# ------------------------------------------------------------------ ReMax
def test_remax_hand_values_and_the_missing_baseline():
    # r = [1, 0], greedy baselines 0.5 and None, no KL: A = 1 − 0.5 = 0.5 on both tokens of row 0;
    # row 1 has no baseline → 0
    meta = [{"remax_baseline": 0.5}, {"remax_baseline": None}]
    b = make_batch([1, 0], [0, 1], [2, 2]).replace(metadata=meta)
    adv, _ = ReMax(kl_coef=0.0)(b)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
    # with k1 KL in the reward, β = 0.1, log π_old − log π_ref = [0.2, 0.4] on row 0:
    # token rewards [−0.02, 1 − 0.04] → returns [0.94, 0.96] → A = [0.44, 0.46]
    kl = b.replace(
        old_logprobs=torch.tensor([[-1.0, -1.0], [-1.0, -1.0]]),
        ref_logprobs=torch.tensor([[-1.2, -1.4], [-1.0, -1.0]]),
    )
    adv, _ = ReMax(kl_coef=0.1)(kl)
    torch.testing.assert_close(adv[0], torch.tensor([0.44, 0.46]))
    with pytest.raises(ValueError, match="remax_baseline"):
        ReMax()(make_batch([1.0], [0], [1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_remax_matches_verl(seed):
    batch = random_batch(seed)
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(batch.size, generator=gen)
    old = -torch.rand(batch.size, batch.completion_mask.shape[1], generator=gen)
    ref = old - 0.3 * torch.randn(old.shape, generator=gen)
    batch = batch.replace(
        old_logprobs=old, ref_logprobs=ref, metadata=[{"remax_baseline": float(v)} for v in base]
    )
    mask = batch.completion_mask
    # verl: token_level_rewards = scores on the last token − β·(old − ref) (apply_kl_penalty), then
    # compute_remax_outcome_advantage: reverse cumsum of the masked rewards − baseline·mask
    scores = torch.zeros_like(mask)
    last = mask.sum(-1).long() - 1
    scores[torch.arange(batch.size), last] = batch.rewards
    token_level_rewards = scores - 0.001 * (old - ref) * mask
    returns = (token_level_rewards * mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    want = returns - base.unsqueeze(-1) * mask
    adv, _ = ReMax()(batch)
    torch.testing.assert_close(adv, want, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ optimal token baseline
def test_otb_hand_values():
    # one group, rows of length 2 (r = 1) and 3 (r = 0); π_old = 0.5 and Σπ² = 0.5 everywhere:
    # w = 1 − 2·0.5 + 0.5 = 0.5, W = [0.5, 1.0, 1.5]; returns: row 0 [1, 1, ·], row 1 [0, 0, 0]
    # B_0 = (1·0.5 + 0·0.5)/(0.5 + 0.5) = 0.5, B_1 = (1·1 + 0·1)/2 = 0.5, B_2 = 0·1.5/1.5 = 0
    # zero tail: row 1 is the one longest (3 > 2): its B from t = 2 on is 0
    # A: row 0 = [0.5, 0.5, 0 (padding)], row 1 = [−0.5, −0.5, 0]
    b = make_batch([1, 0], [0, 0], [2, 3], old_logprobs=torch.full((2, 3), math.log(0.5)))
    b = b.replace(old_stats={"sum_pi_squared": torch.full((2, 3), 0.5)})
    adv, _ = OptimalTokenBaseline()(b)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.0], [-0.5, -0.5, 0.0]]))
    with pytest.raises(ValueError, match="sum_pi_squared"):
        OptimalTokenBaseline()(b.replace(old_stats={}))
    assert OptimalTokenBaseline().old_token_stats == ("sum_pi_squared",)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otb_matches_verl(seed):
    batch = random_batch(seed, levels=(0.0, 1.0))
    gen = torch.Generator().manual_seed(seed)
    b, t = batch.completion_mask.shape
    old = -2 * torch.rand(b, t, generator=gen)
    s2 = torch.rand(b, t, generator=gen) * 0.5 + 0.1
    batch = batch.replace(old_logprobs=old, old_stats={"sum_pi_squared": s2})
    mask, index = batch.completion_mask, batch.group_ids.tolist()
    scores = torch.zeros_like(mask)
    scores[torch.arange(b), mask.sum(-1).long() - 1] = batch.rewards
    # compute_optimal_token_baseline_advantage, without rollout IS
    returns = (scores * mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    w_cumulative = ((1 - 2 * torch.exp(old) + s2) * mask).cumsum(dim=-1)
    groups = defaultdict(list)
    for i in range(b):
        groups[index[i]].append(i)
    baselines = torch.zeros_like(returns)
    for rows in groups.values():
        ti = torch.tensor(rows)
        num = (returns[ti] * w_cumulative[ti] * mask[ti]).sum(dim=0)
        den = (w_cumulative[ti] * mask[ti]).sum(dim=0) + 1e-8
        baselines[ti] = (num / den).unsqueeze(0).expand(len(rows), -1)
        lengths = mask[ti].sum(dim=-1)
        srt, _ = torch.sort(lengths)
        mx, second = int(srt[-1].item()), int(srt[-2].item())
        at = (lengths == mx).nonzero(as_tuple=True)[0]
        if at.numel() == 1 and mx > second:
            baselines[rows[int(at[0])], second:] = 0.0
    want = (returns - baselines) * mask
    adv, _ = OptimalTokenBaseline()(batch)
    torch.testing.assert_close(adv, want, atol=1e-6, rtol=1e-6)


def test_presets_use_the_peer_parts():
    assert get_algorithm("grpo_passk").advantage == PassKGroup()
    assert get_algorithm("opo").advantage == OPO()
    assert get_algorithm("gdpo").advantage == GDPO()
    remax = get_algorithm("remax")
    assert remax.advantage.kl_coef == 0.001 and remax.needs_reference
    request = remax.extra_rollout({})
    assert (request.fraction, request.temperature, request.samples) == (1.0, 0.0, 1)
    for name in ("grpo_passk", "opo", "gdpo", "remax"):
        assert get_algorithm(name).surrogate.dual_clip == 3.0  # verl's vanilla loss
