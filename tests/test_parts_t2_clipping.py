"""Clipping / ratio surrogates (BAPO paper and code rules, HAPO, RatioNorm, OPMD / AsymRE)."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.parts.base import LossInputs
from unipo.parts.clipping_t2 import BAPO, BAPOCode, HAPOClip, RatioNormClip, RegularizedReinforce


def ratio_inputs(ratios, adv, mask=None, **kw) -> LossInputs:
    """log π_old = 0 and log π = log ρ, so x.ratio equals ``ratios``."""
    logp = torch.tensor(ratios).log().requires_grad_(True)
    mask = torch.ones_like(logp) if mask is None else torch.tensor(mask, dtype=torch.float)
    adv = torch.tensor(adv)
    return LossInputs(logprobs=logp, old_logprobs=torch.zeros_like(logp), advantages=adv, mask=mask, **kw)


# ------------------------------------------------------------------ BAPO
def test_bapo_paper_rule_raises_c_high_first_and_stops_when_met():
    # Eq. 8 on objective values; A = [1, −1, −1], ρ = [1.5, 1, 1]: P = min(1.5, c_high), N = 2
    # (0.6, 1.20): 1.20/3.20 = 0.375 < 0.4   (0.6, 1.25): 1.25/3.25 = 0.3846
    # (0.6, 1.30): 1.30/3.30 = 0.3939        (0.6, 1.35): 1.35/3.35 = 0.40299 ≥ ρ₀ = 0.4 → stop
    x = ratio_inputs([[1.5, 1.0, 1.0]], [[1.0, -1.0, -1.0]])
    part = BAPO()
    lo, hi, share = part.bounds(x)
    assert (lo, hi) == pytest.approx((0.6, 1.35)) and share == pytest.approx(1.35 / 3.35, rel=1e-6)
    # the old rule (gradient indicator, both bounds raised) stopped at (0.65, 1.3)
    loss, m = part(x)  # ℓ = max(−Aρ, −A·clip(ρ, 0.6, 1.35)) = [−1.35, 1, 1]
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.35, 1.0, 1.0]]))
    assert (m["surrogate/bapo_clip_low"], m["surrogate/bapo_clip_high"]) == pytest.approx((0.6, 1.35))
    loss.sum().backward()
    assert x.logprobs.grad[0, 0].item() == 0  # ρ = 1.5 > c_high: the positive token is clipped


def test_bapo_paper_rule_moves_c_low_only_after_c_high_reaches_its_maximum():
    # A = [1, −1, −1], ρ = [1, 2, 0.5]: P = 1 at any c_high; N = 2 + max(0.5, c_low) ≥ 2.6 → ρ < 0.4 always
    # c_high 1.2 → 3.0 in 36 steps of 0.05 (c_low stays 0.6), then c_low 0.6 → 0.9 in 15 steps of
    # 0.02; 0.9 + 0.02 > b⁻ ends the loop. Raising c_low lowers the share: 1/3.6 at 0.6, 1/3.9 at 0.9
    x = ratio_inputs([[1.0, 2.0, 0.5]], [[1.0, -1.0, -1.0]])
    part = BAPO()
    cands = part.candidates()
    assert len(cands) == 1 + 36 + 15
    assert cands[36] == pytest.approx((0.6, 3.0)) and cands[37] == pytest.approx((0.62, 3.0))
    lo, hi, share = part.bounds(x)
    assert (lo, hi) == pytest.approx((0.9, 3.0)) and share == pytest.approx(1 / 3.9, rel=1e-6)
    assert part.shares(x.ratio, x.advantages, x.mask, [(0.6, 3.0)]).item() == pytest.approx(1 / 3.6)
    # ℓ = [−1, 2 (ρ > c_high, A < 0: not clipped), max(0.5, 0.9) = 0.9]
    torch.testing.assert_close(part(x)[0].detach(), torch.tensor([[-1.0, 2.0, 0.9]]))


def test_bapo_paper_rule_edge_cases():
    # a share met at the start bounds moves nothing; no non-zero advantage counts as balanced (ρ = 1)
    assert BAPO().bounds(ratio_inputs([[1.0, 1.0]], [[1.0, -1.0]])) == pytest.approx((0.6, 1.2, 0.5))
    assert BAPO().bounds(ratio_inputs([[1.0, 3.0]], [[0.0, 0.0]])) == pytest.approx((0.6, 1.2, 1.0))
    # padding is ignored: the masked negative token would otherwise pull the share to 1/3.6
    x = ratio_inputs([[1.0, 2.0, 0.5]], [[1.0, -1.0, -1.0]], mask=[[1, 0, 0]])
    assert BAPO().bounds(x) == pytest.approx((0.6, 1.2, 1.0))
    # Algorithm 1 runs only while c_low can rise: a fixed c_low (a⁻ = b⁻) also fixes c_high
    fixed = BAPO(low_start=0.8, low_max=0.8)
    assert fixed.candidates() == [(0.8, 1.2)]
    with pytest.raises(ValueError, match="low_step and high_step must be > 0"):
        BAPO(low_step=0.0)


def test_bapo_code_rule_raises_low_first_then_high():
    # A = [1, −1, −1], ρ = [1, 0.7, 1]: P = 1, N = max(0.7, c_low) + 1 ≥ 1.7 → R < 1 at every c_low;
    # raising c_low only grows N (the §8 caution): 0.8 → N = 1.8; then c_high cannot help (P = 1)
    x = ratio_inputs([[1.0, 0.7, 1.0]], [[1.0, -1.0, -1.0]])
    lo, hi, r = BAPOCode().bounds(x)
    assert (lo, hi) == pytest.approx((0.8, 2.0)) and r == pytest.approx(1 / 1.8, rel=1e-5)
    # dual-clip loss with clamp(ρ, 0.8, 2.0): [−1, max(0.7, 0.8) = 0.8, 1], all below c·|A| = 3
    loss, _ = BAPOCode()(x)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.0, 0.8, 1.0]]))
    # A = [1, −1], ρ = [1.5, 1.28]: N = 1.28 at any c_low; P = min(1.5, c_high):
    # c_high 1.2 → 0.94, 1.25 → 0.977, 1.3 → 1.0156 ≥ 1 → stop
    x = ratio_inputs([[1.5, 1.28]], [[1.0, -1.0]])
    lo, hi, r = BAPOCode().bounds(x)
    assert (lo, hi) == pytest.approx((0.8, 1.3)) and r == pytest.approx(1.3 / 1.28, rel=1e-5)
    assert BAPOCode().bounds(ratio_inputs([[1.0]], [[1.0]]))[2] == math.inf  # no negative part


# ------------------------------------------------------------------ HAPO
# log H = [−2, −1, 0, 1, 2]; pivot q_0.8 ("nearest": index 3.2 → 3) = 1; h = [−3, −2, −1, 0, 1]
# scale = √(mean h²) = √(15/5) = √3 → h/√3; max h = 1/√3 → ĥ(t4) = 1; min h = −√3 → ĥ = h/√3 (paper)
# ĥ = [−1, −2/3, −1/3, 0, 1]
HAPO_ENT = torch.tensor([[-2.0, -1.0, 0.0, 1.0, 2.0]]).exp()


def hapo_inputs():
    return ratio_inputs([[0.65, 1.0, 1.0, 1.0, 1.5]], [[-1.0, -1.0, 1.0, 1.0, 1.0]], entropies=HAPO_ENT)


def test_hapo_normalized_entropy_both_sign_conventions():
    hh, norm = HAPOClip().h_hat(HAPO_ENT, torch.ones(1, 5))
    torch.testing.assert_close(hh, torch.tensor([[-1.0, -2 / 3, -1 / 3, 0.0, 1.0]]))
    assert norm["pivot"] == pytest.approx(1.0) and norm["scale"] == pytest.approx(math.sqrt(3))
    # the released code divides h ≤ 0 by min h (< 0): low-entropy tokens flip to ĥ > 0
    hh, _ = HAPOClip(repo_sign=True).h_hat(HAPO_ENT, torch.ones(1, 5))
    torch.testing.assert_close(hh, torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0, 1.0]]))


def test_hapo_clip_bounds_and_advantage_redistribution():
    # t0: ĥ=−1 → ε_low = 0.4 (bound 0.6); ρ = 0.65 outside the band (0.8, 1.14) → A stays −1 → ℓ = 0.65
    # t1: ĥ=−2/3, ρ = 1 in the band → A_ent = −1·(1/3) → ℓ = 1/3
    # t2: ĥ=−1/3, in band → A_ent = 1·(2/3) → ℓ = −2/3;  t3: ĥ = 0 → A_ent = A → ℓ = −1
    # t4: ĥ=1 → ε_high = 0.56 (bound 1.56); band (0.9, 1.28), ρ = 1.5 outside → A_ent = 2 → ℓ = −2·1.5 = −3
    loss, m = HAPOClip(eps_high=0.28)(hapo_inputs())  # DAPO's ε_high (the part's default is 0.2)
    torch.testing.assert_close(loss.detach(), torch.tensor([[0.65, 1 / 3, -2 / 3, -1.0, -3.0]]))
    assert m["surrogate/hapo_pivot"] == pytest.approx(1.0)


def test_hapo_token_temperature_from_state():
    part = HAPOClip(temperature_tau=0.05)
    h = torch.tensor([2.0, -2.0, 1.0]).exp()
    torch.testing.assert_close(part.token_temperature(h, 1.0), torch.ones(3))  # no normalization yet
    _, m = part(hapo_inputs())
    part.on_step_end({k: float(v) for k, v in m.items()})
    # log H = 2 → h = 1/√3 → ĥ = 1 → T = 1.05;  log H = −2 → ĥ = −1 → 0.95;  log H = 1 (pivot) → 1.0
    torch.testing.assert_close(part.token_temperature(h, 1.0), torch.tensor([1.05, 0.95, 1.0]))
    other = HAPOClip(temperature_tau=0.05)
    other.load_state_dict(part.state_dict())
    torch.testing.assert_close(other.token_temperature(h, 0.7), part.token_temperature(h, 0.7))


# ------------------------------------------------------------------ GRPO-Guard RatioNorm (adapted)
def rn_inputs(**kw):
    lr = torch.tensor([[0.1, 0.3, -0.1], [0.5, 0.5, 0.0]])
    return ratio_inputs(lr.exp().tolist(), [[1.0] * 3, [-1.0] * 3], [[1, 1, 1], [1, 1, 0]], **kw)


def test_ratio_norm_centres_log_ratio_per_sequence():
    # row 0: mean 0.1 → [0, 0.2, −0.2] → ρ̂ = [1, 1.221403, 0.818731]; A = 1 → ℓ = −clip(ρ̂, 0.8, 1.2)
    # row 1: mean 0.5 → ρ̂ = 1; A = −1 → ℓ = 1
    loss, _ = RatioNormClip()(rn_inputs())
    torch.testing.assert_close(loss.detach()[0], torch.tensor([-1.0, -1.2, -0.818731]))
    torch.testing.assert_close(loss.detach()[1, :2], torch.tensor([1.0, 1.0]))


def test_ratio_norm_group_and_standardize():
    # group mode (both rows one group): μ = (0.1 + 0.3 − 0.1 + 0.5 + 0.5)/5 = 0.26
    x = rn_inputs(group_ids=torch.tensor([7, 7]))
    lr = RatioNormClip(over="group").normalized_log_ratio(x).detach()
    torch.testing.assert_close(lr[0], torch.tensor([-0.16, 0.04, -0.36]))
    # standardize: σ_0 = √(0.08/3) = 0.163299, pooled √(0.08/5) = 0.126491 → s_0 = 0.774597
    lr = RatioNormClip(standardize=True).normalized_log_ratio(rn_inputs()).detach()
    torch.testing.assert_close(lr[0], torch.tensor([0.0, 0.2, -0.2]) * 0.774597)


def test_ratio_norm_is_ppo_on_policy():
    # log ρ = 0: ρ̂ = 1 and ∂ℓ/∂log π = −A, exactly PPO's first step
    x = ratio_inputs([[1.0, 1.0]], [[2.0, -1.0]])
    loss, _ = RatioNormClip()(x)
    loss.sum().backward()
    torch.testing.assert_close(x.logprobs.grad, torch.tensor([[-2.0, 1.0]]))


# ------------------------------------------------------------------ OPMD / AsymRE
def test_regularized_reinforce_opmd_and_asymre():
    def x():
        logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
        return LossInputs(logprobs=logp, old_logprobs=torch.tensor([[-1.5, -2.0]]),
                          advantages=torch.tensor([[2.0, -1.0]]), mask=torch.ones(1, 2))  # fmt: skip

    # OPMD k2, τ = 0.5: ℓ = −A·log π + τ(log π − log π_old)² = [2 + 0.5·0.25, −2 + 0] = [2.125, −2]
    xi = x()
    loss, _ = RegularizedReinforce("k2", 0.5)(xi)
    torch.testing.assert_close(loss.detach(), torch.tensor([[2.125, -2.0]]))
    loss.sum().backward()  # −A + 2τ(log π − log π_old) = [−2 + 0.5, 1]
    torch.testing.assert_close(xi.logprobs.grad, torch.tensor([[-1.5, 1.0]]))
    # AsymRE, τ = 0.1: ℓ = −(A + 0.1)·log π = [2.1, −1.8]
    xi = x()
    loss, _ = RegularizedReinforce("forward_kl", 0.1)(xi)
    torch.testing.assert_close(loss.detach(), torch.tensor([[2.1, -1.8]]))
    with pytest.raises(ValueError, match="none\\|k2\\|forward_kl"):
        RegularizedReinforce("k3")
