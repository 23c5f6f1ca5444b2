"""T2 advantage estimators from group statistics and entropies (BNPO, CANON, OBLR-PO, EMPG, ETTRL's EAR),
against values worked out by hand (each test says how)."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.parts.advantages_entropy import EMPG, EntropyAdvantageReshaping
from unipo.parts.advantages_norm import BNPO, CANON, OBLRBaseline


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


def row_values(adv: torch.Tensor) -> list[float]:  # the value on each row's first token
    return adv[:, 0].tolist()


# ------------------------------------------------------------------ BNPO
def beta_pdf(p: float, a: float, b: float) -> float:
    return p ** (a - 1) * (1 - p) ** (b - 1) * math.gamma(a + b) / (math.gamma(a) * math.gamma(b))


def test_bnpo_hand_values():
    # 4 prompts × G=4 with success rates p = [0.25, 0.5, 0.5, 0.75]: μ = 0.5, unbiased
    # σ² = (0.0625 + 0 + 0 + 0.0625)/3 = 1/24, μ(1−μ)/σ² − 1 = 0.25·24 − 1 = 5,
    # a = b = 5·0.5 = 2.5 → α = β = 1 + 2.5/3 = 11/6; A = (r − p)/Beta(11/6, 11/6).pdf(p)
    rewards = [1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0]  # groups of 4
    gid = [g for g in range(4) for _ in range(4)]
    adv, m = BNPO()(make_batch(rewards, gid, torch.ones(16, 2)))
    a = 11 / 6
    assert (m["advantage/bnpo_alpha"].item(), m["advantage/bnpo_beta"].item()) == pytest.approx((a, a))
    p = [0.25] * 4 + [0.5] * 8 + [0.75] * 4
    expected = [(r - q) / beta_pdf(q, a, a) for r, q in zip(rewards, p)]
    assert row_values(adv) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(adv[:, 0], adv[:, 1])


def test_bnpo_rescales_rewards_and_lone_rows_stay_out_of_the_fit():
    # rewards in [−1, 1] with r_min = −1: r̃ = (r + 1)/2 ∈ {0, 1}; two prompts p = [0.5, 0.75] and a
    # lone row (A = 0, not in the fit): μ = 0.625, σ² = 0.03125, 0.234375/0.03125 − 1 = 6.5,
    # α = 1 + 6.5·0.625/3, β = 1 + 6.5·0.375/3
    rewards = [1, -1, 1, -1, 1, 1, 1, -1, 1]
    gid = [0] * 4 + [1] * 4 + [2]
    adv, m = BNPO(r_min=-1.0, r_max=1.0)(make_batch(rewards, gid, torch.ones(9, 1)))
    a, b = 1 + 6.5 * 0.625 / 3, 1 + 6.5 * 0.375 / 3
    assert (m["advantage/bnpo_alpha"].item(), m["advantage/bnpo_beta"].item()) == pytest.approx((a, b))
    s = [(r + 1) / 2 for r in rewards]
    p = [0.5] * 4 + [0.75] * 4
    expected = [(x - q) / beta_pdf(q, a, b) for x, q in zip(s, p)] + [0.0]
    assert row_values(adv) == pytest.approx(expected, rel=1e-6)


def test_bnpo_fallbacks_and_bad_rewards():
    # one prompt: the code's fallback μ = 0, σ² = 1 → a = −0·…, b = (0 − 1)·1 = −1 → α = β = 1, f ≡ 1
    adv, m = BNPO()(make_batch([1, 0, 0, 0], [0] * 4, torch.ones(4, 1)))
    assert (m["advantage/bnpo_alpha"].item(), m["advantage/bnpo_beta"].item()) == (1.0, 1.0)
    assert row_values(adv) == pytest.approx([0.75, -0.25, -0.25, -0.25])
    # equal success rates (σ² = 0; the code divides by zero): the same fallback, finite advantages
    adv, _ = BNPO()(make_batch([1, 0, 0, 1], [0, 0, 1, 1], torch.ones(4, 1)))
    assert row_values(adv) == pytest.approx([0.5, -0.5, -0.5, 0.5])
    # an all-failed prompt at p = 0 where α > 1 (pdf 0, weight clamped to 1e6) keeps A = 0
    rewards = [0] * 4 + [1, 0, 0, 0] + [1, 1, 0, 0] + [0, 1, 0, 1]
    adv, m = BNPO()(make_batch(rewards, [g for g in range(4) for _ in range(4)], torch.ones(16, 1)))
    assert m["advantage/bnpo_alpha"].item() > 1 and torch.isfinite(adv).all() and (adv[:4] == 0).all()
    with pytest.raises(ValueError, match=r"r_min=0.0, r_max=1.0.*\[0.0, 2.0\]"):
        BNPO()(make_batch([2.0, 0.0], [0, 0], torch.ones(2, 1)))
    with pytest.raises(ValueError, match="r_max > r_min"):
        BNPO(r_min=1.0, r_max=1.0)


# ------------------------------------------------------------------ CANON
def canon_batch(split_values, lengths=None):
    # group 0 (rows 0, 2, 4, 6 interleaved with group 1): rewards [1, 1, 1, 0];
    # group 1 (rows 1, 3, 5, 7): rewards [1, 0, 0, 0]; a lone row 8 (group 2)
    rewards = [1, 1, 1, 0, 1, 0, 0, 0, 1]
    gid = [0, 1, 0, 1, 0, 1, 0, 1, 2]
    t = 4
    lengths = lengths or [t] * 9
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float()
    ent = torch.tensor(split_values, dtype=torch.float)[:, None] * mask  # mean entropy = the value
    return make_batch(rewards, gid, mask, entropies=ent)


def test_canon_entropy_split_hand_values():
    # group 0 entropies [0.4, 0.1, 0.3, 0.2] (rows 0, 2, 4, 6; rewards 1, 1, 1, 0): sorted ascending
    # S = {row 2, row 6} (r̄_S = 0.5), L = {row 0, row 4} (r̄_L = 1). μ = 1, α = 1:
    # L: r − r̄_S = 0.5, 0.5; S: r − r̄_L = 0 (row 2), −1 (row 6).
    # group 1 entropies [0.2, 0.2, 0.2, 0.2] (ties keep batch order): S = {1, 3} (r̄_S = 0.5),
    # L = {5, 7} (r̄_L = 0): L: 0 − 0.5 = −0.5 each; S: row 1: 1 − 0 = 1, row 3: 0.
    batch = canon_batch([0.4, 0.2, 0.1, 0.2, 0.3, 0.2, 0.2, 0.2, 0.9])
    adv, m = CANON()(batch)
    assert row_values(adv) == pytest.approx([0.5, 1.0, 0.0, 0.0, 0.5, -0.5, -1.0, -0.5, 0.0])
    # μ = 0.5, α = 2, β = 0.1, group 0: L: 0.5(1 − 2·0.5 + 0.1) + 0.5(1 − 1) = 0.05;
    # S row 2: 0.5(2·1 − 1 − 0.1) + 0.5(1 − 0.5) = 0.7; row 6: 0.5(0 − 1.1) + 0.5(0 − 0.5) = −0.8
    adv, _ = CANON(alpha=2.0, beta=0.1, mu=0.5)(batch)
    assert [row_values(adv)[i] for i in (0, 2, 4, 6)] == pytest.approx([0.05, 0.7, 0.05, -0.8])
    assert m["advantage/canon_upper_reward"].item() == pytest.approx(0.5)  # rows 0, 4, 5, 7


def test_canon_length_split_hand_values():
    # group 0 lengths [4, 1, 3, 2] order the rows as the entropies above: S = {2, 6}, L = {0, 4}.
    # μ = 0.5, α = 2, β = 0.1: L: 0.5(2·1 − 0.5 + 0.1) + 0.5(1 − 1) = 0.8;
    # S row 2: 0.5(1 − 2·1 − 0.1) + 0.5(1 − 0.5) = −0.3; row 6: 0.5(0 − 2.1) + 0.5(0 − 0.5) = −1.3
    batch = canon_batch([0.0] * 9, lengths=[4, 2, 1, 2, 3, 2, 2, 2, 1])
    adv, _ = CANON(split="length", alpha=2.0, beta=0.1, mu=0.5)(batch)
    assert [row_values(adv)[i] for i in (0, 2, 4, 6)] == pytest.approx([0.8, -0.3, 0.8, -1.3])
    assert adv[2, 1:].abs().sum() == 0  # padding stays 0
    # μ = 1, α = 1 compares with the other half: the same values as the entropy split's
    adv, _ = CANON(split="length")(batch)
    assert [row_values(adv)[i] for i in (0, 2, 4, 6)] == pytest.approx([0.5, 0.0, 0.5, -1.0])


def test_canon_odd_groups_needs_and_errors():
    # G = 3, entropies [0.3, 0.1, 0.2], rewards [1, 0, 1]: S = {row 1} (⌊3/2⌋ = 1, r̄_S = 0),
    # L = {rows 2, 0} (r̄_L = 1): L: r − 0 = 1, 1; S: 0 − 1 = −1
    ent = torch.tensor([[0.3], [0.1], [0.2]])
    adv, _ = CANON()(make_batch([1, 0, 1], [5, 5, 5], torch.ones(3, 1), entropies=ent))
    assert row_values(adv) == pytest.approx([1.0, -1.0, 1.0])
    assert CANON().needs_old_logprobs and not CANON(split="length").needs_old_logprobs
    with pytest.raises(ValueError, match=r"batch\.entropies"):
        CANON()(make_batch([1, 0], [0, 0], torch.ones(2, 1)))
    with pytest.raises(ValueError, match="split"):
        CANON(split="depth")


# ------------------------------------------------------------------ OBLR-PO
def test_oblr_gradient_weighted_baseline_hand_values():
    # row 0 (r = 1): two tokens at π_old = 0.5 → w = 0.5² + 0.5² = 0.5; row 1 (r = 0): one token at
    # 0.9 (the second is padding) → w = 0.1² = 0.01; b = (0.5·1 + 0.01·0)/0.51 = 50/51
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.3]]))
    batch = make_batch([1, 0], [0, 0], [[1, 1], [1, 0]], old_logprobs=lp)
    adv, _ = OBLRBaseline()(batch)
    b = 50 / 51
    assert row_values(adv) == pytest.approx([1 - b, -b], rel=1e-5)
    assert adv[1, 1] == 0
    # scale_by_std divides by the unbiased group std √0.5 (+1e-6)
    adv, _ = OBLRBaseline(scale_by_std=True)(batch)
    assert row_values(adv) == pytest.approx([(1 - b) / (math.sqrt(0.5) + 1e-6), -b / (math.sqrt(0.5) + 1e-6)])


def test_oblr_zero_weights_fall_back_to_the_mean_and_needs_old_logprobs():
    # every sampled token at π_old = 1 → w = 0 for both rows → plain mean 0.5; a lone row → 0
    batch = make_batch([1, 0, 3], [0, 0, 1], torch.ones(3, 2), old_logprobs=torch.zeros(3, 2))
    adv, _ = OBLRBaseline()(batch)
    assert row_values(adv) == pytest.approx([0.5, -0.5, 0.0])
    assert OBLRBaseline.needs_old_logprobs
    with pytest.raises(ValueError, match="old_logprobs"):
        OBLRBaseline()(make_batch([1, 0], [0, 0], torch.ones(2, 1)))


# ------------------------------------------------------------------ EMPG
def test_empg_hand_values():
    # group [1, 0], Dr. GRPO advantages ±0.5. Entropies: row 0 [0, 1], row 1 [2, pad].
    # Valid H ∈ {0, 1, 2}: H̃ = H/(2 + ε). k = 1: e = exp(−H̃), g = e/mean(e) over the 3 tokens.
    # Future bonus ζ·exp(−H̃_{t+1}) only at row 0, t = 0 (its next token is valid).
    # A_mod = g·A + bonus, then whitened: (x − mean)/sqrt(unbiased var + 1e-8).
    batch = make_batch([1, 0], [0, 0], [[1, 1], [1, 0]], entropies=torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    adv, m = EMPG(scale_by_std=False)(batch)
    eps = 1e-6
    hn = [0.0, 1 / (2 + eps), 2 / (2 + eps)]  # (row 0, t 0), (row 0, t 1), (row 1, t 0)
    e = [math.exp(-h) for h in hn]
    g = [x / (sum(e) / 3) for x in e]
    mod = [g[0] * 0.5 + 0.1 * math.exp(-hn[1]), g[1] * 0.5, g[2] * -0.5]
    mean = sum(mod) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in mod) / 2 + 1e-8)
    expected = [(x - mean) / std for x in mod]
    assert [adv[0, 0].item(), adv[0, 1].item(), adv[1, 0].item()] == pytest.approx(expected, rel=1e-5)
    assert adv[1, 1] == 0
    assert m["advantage/empg_scale_max"].item() == pytest.approx(g[0], rel=1e-6)
    assert EMPG.needs_old_logprobs
    with pytest.raises(ValueError, match=r"batch\.entropies"):
        EMPG()(make_batch([1, 0], [0, 0], torch.ones(2, 1)))


def test_empg_calibration_keeps_the_scale_mean_at_one_and_zeta_zero_is_a_rescaled_grpo():
    # ζ = 0 and equal entropies: g ≡ 1, so the result is the whitened GRPO advantage
    batch = make_batch([1, 0, 0, 0], [0] * 4, torch.ones(4, 3), entropies=torch.full((4, 3), 0.7))
    adv, _ = EMPG(zeta=0.0, scale_by_std=False)(batch)
    base = torch.tensor([0.75, -0.25, -0.25, -0.25])[:, None].expand(4, 3)
    expected = (base - base.mean()) / torch.sqrt(base.var() + 1e-8)
    torch.testing.assert_close(adv, expected)


# ------------------------------------------------------------------ ETTRL's EAR
def test_ettrl_ear_hand_values():
    # rewards [1, 1, 0] → Dr. GRPO A = [1/3, 1/3, −2/3]; mean entropies [1, 2, 3] → group mean 2,
    # unbiased std 1 → z = [−1, 0, 1]. α = 0.5: w = 1 + 0.5·sign(A)·z = [0.5, 1, 0.5]
    ent = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 0.0]])
    batch = make_batch([1, 1, 0], [0, 0, 0], [[1, 1], [1, 1], [1, 0]], entropies=ent)
    adv, _ = EntropyAdvantageReshaping(scale_by_std=False)(batch)
    z = 1 / (1 + 1e-6)  # (h − mean)/(std + ε)
    expected = [(1 - 0.5 * z) / 3, 1 / 3, -2 / 3 * (1 - 0.5 * z)]
    assert row_values(adv) == pytest.approx(expected)
    assert adv[2, 1] == 0
    # α = 2 takes w below the floor: 1 − 2z ≈ −1 → w_min = 0.25
    adv, _ = EntropyAdvantageReshaping(alpha=2.0, w_min=0.25, scale_by_std=False)(batch)
    assert row_values(adv) == pytest.approx([0.25 / 3, 1 / 3, -2 / 3 * 0.25])


def test_ettrl_ear_relative_rule_hand_values():
    # ETTRL's Adv-Res: Y = 1 + (H̄ − H)/H̄. Mean entropies [1, 2, 3] → H̄ = 2 → Y = [1.5, 1, 0.5];
    # rewards [1, 1, 0] → Dr. GRPO A = [1/3, 1/3, −2/3] → Â = [0.5, 1/3, −1/3] (Y never flips a sign)
    ent = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 0.0]])
    batch = make_batch([1, 1, 0], [0, 0, 0], [[1, 1], [1, 1], [1, 0]], entropies=ent)
    adv, _ = EntropyAdvantageReshaping(rule="relative", w_min=0.0, w_max=2.0, scale_by_std=False)(batch)
    assert row_values(adv) == pytest.approx([0.5, 1 / 3, -1 / 3])
    # H = [1, 1, 7]: H̄ = 3 → Y = [5/3, 5/3, −1/3] → clamped to [0, 2]: row 3 gets 0, not a flipped sign
    ent = torch.tensor([[1.0, 1.0], [1.0, 1.0], [7.0, 0.0]])
    batch = make_batch([1, 1, 0], [0, 0, 0], [[1, 1], [1, 1], [1, 0]], entropies=ent)
    adv, _ = EntropyAdvantageReshaping(rule="relative", w_min=0.0, w_max=2.0, scale_by_std=False)(batch)
    assert row_values(adv) == pytest.approx([5 / 9, 5 / 9, 0.0])
    with pytest.raises(ValueError, match="rule"):
        EntropyAdvantageReshaping(rule="ratio")


def test_ettrl_ear_constant_entropy_is_grpo():
    ent = torch.ones(4, 2)
    batch = make_batch([1, 0, 1, 1], [0, 0, 1, 1], torch.ones(4, 2), entropies=ent)
    adv, m = EntropyAdvantageReshaping()(batch)
    s = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert row_values(adv) == pytest.approx([s, -s, 0.0, 0.0])
    assert m["advantage/ear_weight_mean"].item() == 1.0
    with pytest.raises(ValueError, match="w_min"):
        EntropyAdvantageReshaping(w_min=1.5)
