"""Regularizers: KL estimators, entropy bonuses (fixed and adaptive) and KL-Cov."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.parts.base import LossInputs
from unipo.parts.regularizers import AdaptiveEntropy, EntropyBonus, KLCov, KLPenalty, kl_estimate


def test_kl_estimators_hand_values():
    # ℓ = log π − log π_ref = 0.5: k1 = 0.5, k2 = ½·0.25 = 0.125, k3 = e^−0.5 − 1 + 0.5 = 0.106531
    logp, ref = torch.tensor([0.5]), torch.tensor([0.0])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.125)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 0.5)


def test_k3_plus_is_k3_forward_k2_backward():
    # forward k3; gradient of k2: ∂(½ℓ²)/∂logp = ℓ = 0.5 (k3's would be 1 − e^−ℓ = 0.3935)
    logp = torch.tensor([0.5], requires_grad=True)
    v = kl_estimate(logp, torch.tensor([0.0]), "k3+")
    assert v.item() == pytest.approx(math.exp(-0.5) - 0.5)
    v.backward()
    assert logp.grad.item() == pytest.approx(0.5)


def test_kl_penalty_and_entropy_bonus():
    logp = torch.tensor([[0.5, 0.0]])
    x = LossInputs(
        logprobs=logp,
        old_logprobs=logp,
        advantages=torch.zeros(1, 2),
        mask=torch.ones(1, 2),
        ref_logprobs=torch.zeros(1, 2),
        entropies=torch.tensor([[1.0, 3.0]]),
    )
    term, m = KLPenalty(coef=0.1, estimator="k2")(x)
    torch.testing.assert_close(term, torch.tensor([[0.0125, 0.0]]))  # 0.1·0.125, 0.1·0
    assert m["regularizer/kl_ref"].item() == pytest.approx(0.0625)
    term, m = EntropyBonus(coef=0.01)(x)
    torch.testing.assert_close(term, torch.tensor([[-0.01, -0.03]]))
    assert m["regularizer/entropy"].item() == pytest.approx(2.0)
    assert not KLPenalty(coef=0.0).needs_reference
    with pytest.raises(ValueError, match="k3\\+"):
        KLPenalty(estimator="k4")


def test_adaptive_entropy_update_rule_and_clamp():
    part = AdaptiveEntropy(target=0.5, lr=0.1, coef_init=0.0, coef_max=0.05)
    part.on_step_end({"regularizer/entropy": 0.3})  # α = 0 + 0.1·(0.5 − 0.3) = 0.02
    assert part.coef == pytest.approx(0.02)
    part.on_step_end({"regularizer/entropy": 0.1})  # 0.02 + 0.04 = 0.06 → clamp α_max 0.05
    assert part.coef == pytest.approx(0.05)
    part.on_step_end({"loss/policy": 1.0})  # no entropy metric → unchanged
    assert part.coef == pytest.approx(0.05)
    part.on_step_end({"regularizer/entropy": 1.0})  # 0.05 + 0.1·(−0.5) = 0.0
    assert part.coef == pytest.approx(0.0)
    part.on_step_end({"regularizer/entropy": 2.0})  # −0.15 → clamp 0
    assert part.coef == 0.0


def test_adaptive_entropy_loss_and_state():
    part = AdaptiveEntropy(target=1.0, lr=0.1, coef_init=0.01)
    ent = torch.tensor([[0.5, 1.5]], requires_grad=True)
    x = LossInputs(
        logprobs=torch.zeros(1, 2),
        old_logprobs=torch.zeros(1, 2),
        advantages=torch.zeros(1, 2),
        mask=torch.ones(1, 2),
        entropies=ent,
    )
    term, m = part(x)
    torch.testing.assert_close(term, torch.tensor([[-0.005, -0.015]]))  # −α·H with α = 0.01
    assert m["regularizer/entropy_coef"].item() == pytest.approx(0.01)
    part.on_step_end({k: float(v) for k, v in m.items()})  # H = 1.0 = target → α unchanged
    assert part.coef == pytest.approx(0.01)
    saved = part.state_dict()
    fresh = AdaptiveEntropy(target=1.0, lr=0.1, coef_init=0.01)
    fresh.on_step_end({"regularizer/entropy": 2.0})  # 0.01 − 0.1 → clamp 0
    assert fresh.coef == 0.0 and fresh == part  # the mutable state is not part of equality
    fresh.load_state_dict(saved)
    assert fresh.coef == pytest.approx(0.01)
    # through an Algorithm: state_dict keys per part, and on_step_end reaches the part
    algo = get_algorithm("grpo").replace(regularizers=(AdaptiveEntropy(target=1.0, lr=0.1),))
    assert algo.needs_entropy_grad
    algo.on_step_end({"regularizer/entropy": 0.5})  # α = 0 + 0.1·0.5 = 0.05 → clamp α_max 0.01
    state = algo.state_dict()
    assert list(state.values()) == [{"coef": pytest.approx(0.01)}]


def kl_cov_inputs() -> LossInputs:
    # Cov = [2.5, 0.5, 3.5, −0.5] (see test_parts_weights); |log π − log π_old| = [0.1, 0.2, 0.3, 0.4]
    logp = torch.tensor([[-0.5, -0.5, -2.5, -2.5, 0.0]], requires_grad=True)
    old = logp.detach() - torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]])
    return LossInputs(
        logprobs=logp,
        old_logprobs=old,
        advantages=torch.tensor([[3.0, 1.0, -3.0, 1.0, 0.0]]),
        mask=torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]),
    )


def test_kl_cov_top_k_by_covariance():
    # ratio 0.25 → k = max(1, ⌊0.25·4⌋) = 1: the top-Cov token is 2 (Cov 3.5) → β·0.3 there
    x = kl_cov_inputs()
    term, m = KLCov(ratio=0.25, coef=1.0)(x)
    torch.testing.assert_close(term, torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.0]]))
    assert m["regularizer/kl_cov_frac"].item() == pytest.approx(0.25)
    term.sum().backward()  # ∂|log π − old|/∂log π = sign = +1 on the selected token only
    torch.testing.assert_close(x.logprobs.grad, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]))
    # ratio 0.5 → k = 2: tokens 2 and 0 (Cov 3.5, 2.5), β = 2
    term, _ = KLCov(ratio=0.5, coef=2.0)(kl_cov_inputs())
    torch.testing.assert_close(term, torch.tensor([[0.2, 0.0, 0.6, 0.0, 0.0]]))


def test_kl_cov_fraction_not_percent():
    # 1000 valid tokens, ratio 2e-3 (the paper's 0.2 %) → k = 2
    logp = torch.linspace(-3, 0, 1000)[None]
    x = LossInputs(logprobs=logp, old_logprobs=logp - 0.1, advantages=logp.clone(), mask=torch.ones(1, 1000))
    assert KLCov(ratio=2e-3).select(x).sum().item() == 2
    with pytest.raises(ValueError, match="fraction"):
        KLCov(ratio=20.0)


def test_kl_cov_preset_has_no_clipping():
    algo = get_algorithm("kl_cov")
    assert algo.surrogate.part_name == "policy_gradient"
    assert [r.part_name for r in algo.regularizers] == ["kl_cov"]
