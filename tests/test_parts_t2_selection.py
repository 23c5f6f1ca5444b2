"""Sample and token selection (D³S, PF-PPO, HPT, CAPO, ARES) on constructed examples with a known
selected set, and every T2 preset's composition and loss."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import Algorithm, get_algorithm, policy_loss
from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.selection_t2 import D3SSamples, HPTAdvantage, HPTSwitch, PFFilter, max_variance_subset
from unipo.parts.surrogates import PPOClip
from unipo.parts.tokens_t2 import CAPOMask, D3STokens, HighWindowEntropy, window_entropy


def make_batch(rewards, group_ids, metadata=None) -> RolloutBatch:
    b = len(rewards)
    return RolloutBatch(
        prompt_ids=torch.full((b, 2), 3, dtype=torch.long),
        prompt_mask=torch.ones(b, 2, dtype=torch.long),
        completion_ids=torch.arange(b)[:, None].expand(b, 2).clone(),  # row i's tokens are i: traceable
        completion_mask=torch.ones(b, 2),
        group_ids=torch.tensor(group_ids),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float),
        metadata=metadata or [],
    )


def rows(batch: RolloutBatch) -> list[int]:
    return batch.completion_ids[:, 0].tolist()


# ------------------------------------------------------------------ D³S
def test_max_variance_subset_takes_the_extremes():
    v = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.5])
    # k = 2: one 1 and one 0 (variance 0.25); ties keep the earliest rows → {0, 3}
    assert max_variance_subset(v, 2).tolist() == [0, 3]
    # k = 4: j = 2 largest + 2 smallest = [1, 1, 0, 0] (variance 0.25) beats
    # [1, 0, 0, 0] (0.1875) and [1, 1, .5, 0] (0.172)
    assert max_variance_subset(v, 4).tolist() == [0, 2, 3, 4]


def test_d3s_samples_schedule_and_state():  # within groups (D³S-I); across: test_parts_t2_fidelity.py
    batch = make_batch([1, 0, 0, 0, 1, 0.5, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1])
    part = D3SSamples(scope="within", keep_start=0.5, keep_end=1.0, schedule_steps=100)
    # group 0 (G = 6): k = round(0.5·6) = 3 → j = 1: [1] + [0, 0] (variance 2/9; j = 2 ties and
    # loses) → rows 0, 2, 3
    # group 1 (G = 2): k = max(2, 1) = 2 → both
    kept, m = part(batch)
    assert rows(kept) == [0, 2, 3, 6, 7] and m["selection/d3s_keep_fraction"].item() == 0.5
    for _ in range(50):
        part.on_step_end({})
    assert part.keep_fraction == pytest.approx(0.75)  # 0.5 + 0.5·50/100
    other = D3SSamples(scope="within", keep_start=0.5, keep_end=1.0, schedule_steps=100)
    other.load_state_dict(part.state_dict())
    assert other.keep_fraction == pytest.approx(0.75) and rows(other(batch)[0]) == rows(part(batch)[0])
    for _ in range(60):
        part.on_step_end({})
    assert part.keep_fraction == 1.0 and rows(part(batch)[0]) == list(range(8))


def test_d3s_tokens_top_abs_adv_times_entropy():
    # score |A|·H = [1, 1.2, 2, 0]; step 0 keeps ⌈0.5·4⌉ = 2: tokens 2 and 1, weight N/k = 2 ("selected")
    x = LossInputs(logprobs=torch.zeros(1, 4), old_logprobs=torch.zeros(1, 4),
                   advantages=torch.tensor([[1.0, -2.0, 0.5, 0.0]]), mask=torch.ones(1, 4),
                   entropies=torch.tensor([[1.0, 0.6, 4.0, 3.0]]))  # fmt: skip
    w, _ = D3STokens()(x)
    torch.testing.assert_close(w, torch.tensor([[0.0, 2.0, 2.0, 0.0]]))
    x.step = 100  # schedule relaxed to all tokens
    torch.testing.assert_close(D3STokens()(x)[0], torch.ones(1, 4))


# ------------------------------------------------------------------ PF-PPO
def test_pf_filter_rules():
    batch = make_batch([0.2, 0.9, -0.5, 0.9, 1, 0], [0, 0, 0, 0, 1, 1])
    # group 0: best = first 0.9 (row 1), worst = −0.5 (row 2); group 1: rows 4 and 5
    assert rows(PFFilter("best_worst")(batch)[0]) == [1, 2, 4, 5]
    assert rows(PFFilter("best_of_n")(batch)[0]) == [1, 4]
    br = rows(PFFilter("best_random", seed=3)(batch)[0])
    assert 1 in br and 4 in br and 5 in br and len(br) == 4  # best + one other per group
    assert br == rows(PFFilter("best_random", seed=3)(batch)[0])  # the same draw on a rerun


# ------------------------------------------------------------------ HPT
def test_hpt_switch_replaces_failed_groups_with_the_demonstration():
    meta = [{"sft_target_ids": [5, 6, 7]}, {"sft_target_ids": [5, 6, 7]}, {}, {}]
    batch = make_batch([0, 0, 1, 0], [0, 0, 1, 1], meta)
    out, m = HPTSwitch(gate=0)(batch)
    # group 0 (0 solved ≤ γ = 0, has a demonstration) → one SFT row; group 1 (1 solved) stays RL
    assert out.size == 3 and m["selection/hpt_sft_groups"].item() == 1
    assert out.completion_ids[2].tolist() == [5, 6, 7] and out.completion_mask[2].tolist() == [1, 1, 1]
    assert out.completion_mask[0].tolist() == [1, 1, 0]  # RL rows re-padded to the new width
    adv, _ = HPTAdvantage()(out)
    # group 1: r = [1, 0] → r − mean = ±0.5 (the script's grpo_use_std=False); the SFT row: A = 0 (the
    # hpt_sft regularizer trains on it, not the RL term)
    expected = torch.tensor([[0.5, 0.5, 0.0], [-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    s = 1 / math.sqrt(2)  # with the std: ±0.5/0.7071
    torch.testing.assert_close(HPTAdvantage(scale_by_std=True)(out)[0][:2, 0], torch.tensor([s, -s]))
    # without a demonstration a failing group stays RL
    assert HPTSwitch()(make_batch([0, 0, 1, 0], [0, 0, 1, 1]))[0].size == 4
    with pytest.raises(ValueError, match="advantage=hpt"):
        Algorithm(name="x", paper="-", advantage=GroupNorm(), selections=(HPTSwitch(),),
                  surrogate=PPOClip(), aggregate=TokenMean())  # fmt: skip
    with pytest.raises(ValueError, match="hpt_sft regularizer"):
        Algorithm(name="x", paper="-", advantage=HPTAdvantage(), selections=(HPTSwitch(),),
                  surrogate=PPOClip(), aggregate=TokenMean())  # fmt: skip


# ------------------------------------------------------------------ CAPO
def test_capo_masks_the_highest_curvature_tokens():
    # κ = A²·gᵀFg = [1·0.1, 4·0.2, 9·0.05, 0.25·0.3, 1·0.25] = [0.1, 0.8, 0.45, 0.075, 0.25]
    x = LossInputs(logprobs=torch.zeros(1, 5), old_logprobs=torch.zeros(1, 5),
                   advantages=torch.tensor([[1.0, 2.0, -3.0, 0.5, -1.0]]), mask=torch.ones(1, 5),
                   stats={"logit_fisher_self": torch.tensor([[0.1, 0.2, 0.05, 0.3, 0.25]])})  # fmt: skip
    torch.testing.assert_close(CAPOMask().curvature(x), torch.tensor([[0.1, 0.8, 0.45, 0.075, 0.25]]))
    # ratio 0.4 → k = ⌊2⌋ = 2: tokens 1 and 2
    w, m = CAPOMask(ratio=0.4)(x)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]]))
    assert m["token_weight/capo_reject_frac"].item() == pytest.approx(0.4)
    w, _ = CAPOMask(ratio=0.4, threshold=0.5)(x)  # only κ > 0.5 of the top 2: token 1
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(CAPOMask(ratio=0.1)(x)[0], torch.ones(1, 5))  # ⌊0.5⌋ = 0: nothing rejected


# ------------------------------------------------------------------ ARES high window entropy
def test_window_entropy_matches_the_ares_rule():
    ent = torch.tensor([[1.0, 2, 3, 4, 5, 6], [7.0, 1, 0, 0, 0, 0]])
    mask = torch.tensor([[1.0] * 6, [1, 1, 0, 0, 0, 0]])
    # row 0, w = 2: full windows at t = 0..3: mean(e_{t+1}, e_{t+2}) = [2.5, 3.5, 4.5, 5.5];
    # t = 4, 5 get their mean 4.0.  Row 1 (2 tokens): no full window → e_0 = 7 everywhere
    wnd = window_entropy(ent, mask, 2)
    torch.testing.assert_close(wnd, torch.tensor([[2.5, 3.5, 4.5, 5.5, 4.0, 4.0], [7.0, 7.0, 0, 0, 0, 0]]))
    x = LossInputs(logprobs=torch.zeros(2, 6), old_logprobs=torch.zeros(2, 6), advantages=torch.zeros(2, 6),
                   mask=mask, entropies=ent)  # fmt: skip
    # row 0 median of [2.5, 3.5, 4, 4, 4.5, 5.5] = 4 → HWE at t = 2..5; row 1 both tokens
    w, m = HighWindowEntropy(window=2, quantile=0.5, floor=0.25)(x)
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.25, 1, 1, 1, 1], [1.0, 1, 0, 0, 0, 0]]))
    assert m["token_weight/hwe_frac"].item() == pytest.approx(6 / 8)


# ------------------------------------------------------------------ presets
T2 = ["lp_reg", "siren", "aepo", "steer", "spine", "light_if", "hpt", "bapo", "bapo_code", "hapo",
      "grpo_guard", "opmd", "asymre", "d3s", "d3s_i", "capo", "ares", "ares_tokens", "pf_ppo"]  # fmt: skip


def test_t2_compositions():
    assert get_algorithm("lp_reg").old_token_stats == ("minp_logprob:0.02",)
    assert get_algorithm("siren").token_stats == ("topp_entropy:0.8",)
    assert get_algorithm("capo").token_stats == ("logit_fisher_self",)
    assert get_algorithm("aepo").extra_rollout({}).temperature == 1.2
    assert get_algorithm("bapo").surrogate.part_name == "bapo"
    assert get_algorithm("bapo_code").surrogate.part_name == "bapo_code"
    assert get_algorithm("pf_ppo").advantage.part_name == "gae"
    lp = get_algorithm("lp_reg").surrogate  # [0, 10] bounds: an A < 0 token's surrogate is −Aρ
    assert (lp.eps_low, lp.eps_high) == (1.0, 9.0)


@pytest.mark.parametrize("name", T2)
def test_every_t2_preset_gives_a_finite_differentiable_loss(name):
    gen = torch.Generator().manual_seed(0)
    b, t = 4, 6
    logp = (-2 * torch.rand(b, t, generator=gen)).requires_grad_(True)
    mask = torch.ones(b, t)
    mask[1, 4:] = 0
    ent = (2 * torch.rand(b, t, generator=gen)).requires_grad_(True)
    algo = get_algorithm(name)
    stats = {n: torch.rand(b, t, generator=gen).requires_grad_(True) for n in algo.token_stats}
    old_stats = {n: logp.detach() + 0.5 for n in algo.old_token_stats}
    x = LossInputs(
        logprobs=logp, old_logprobs=logp.detach() + 0.05 * torch.randn(b, t, generator=gen),
        advantages=torch.randn(b, 1, generator=gen).expand(b, t) * mask, mask=mask, entropies=ent,
        ref_logprobs=logp.detach() - 0.1, old_entropies=ent.detach(), group_ids=torch.tensor([0, 0, 1, 1]),
        truncated=torch.tensor([False, True, False, False]), stats=stats, old_stats=old_stats,
    )  # fmt: skip
    loss, metrics = policy_loss(algo, x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert all(k.count("/") == 1 for k in metrics)
    assert "arXiv" in algo.paper or "REINFORCE" in algo.paper or "HAPO" in algo.paper
    assert algo.notes
