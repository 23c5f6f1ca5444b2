"""Surrogates against hand-computed values (torchtune style: the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.parts.aggregate import SeqMeanTokenMean, TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.surrogates import GSPO, GSPOToken, PolicyGradient, PPOClip

E = math.e


def inputs(log_ratio, adv, mask=None, old=None) -> LossInputs:
    log_ratio = torch.as_tensor(log_ratio, dtype=torch.float)
    old = torch.full_like(log_ratio, -1.0) if old is None else torch.as_tensor(old, dtype=torch.float)
    logp = (old + log_ratio).requires_grad_(True)
    mask = torch.ones_like(log_ratio) if mask is None else torch.as_tensor(mask, dtype=torch.float)
    return LossInputs(
        logprobs=logp, old_logprobs=old, advantages=torch.as_tensor(adv, dtype=torch.float), mask=mask
    )


def test_ppo_clip_hand_values():
    # ratio e, A = +1: max(−e, −1.2) = −1.2 (upper clip active)
    # ratio e, A = −1: max(e, 1.2) = e (no clip for A < 0 above 1)
    # ratio 1/e, A = −1: max(0.368, 0.8) = 0.8 (lower clip active)
    # ratio 1/e, A = +1: max(−0.368, −0.8) = −0.368
    x = inputs([[1.0, 1.0, -1.0, -1.0]], [[1.0, -1.0, -1.0, 1.0]])
    loss, m = PPOClip()(x)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, E, 0.8, -1 / E]]))
    assert m["surrogate/clip_frac_high"].item() == pytest.approx(0.25)
    assert m["surrogate/clip_frac_low"].item() == pytest.approx(0.25)
    # clipped tokens carry no gradient; unclipped ones −A·ρ
    loss.sum().backward()
    torch.testing.assert_close(x.logprobs.grad, torch.tensor([[0.0, E, 0.0, -1 / E]]))


def test_ppo_clip_higher_and_dual_clip():
    # clip-higher ε_high = 0.28: ratio 1.5, A = 1 → max(−1.5, −1.28) = −1.28
    # dual clip c = 3, A = −1: ratio e → min(e, 3) = e; ratio e² = 7.39 → min(7.39, 3) = 3
    x = inputs([[math.log(1.5), 1.0, 2.0]], [[1.0, -1.0, -1.0]])
    loss, m = PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=3.0)(x)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, E, 3.0]]))
    assert m["surrogate/dual_clip_frac"].item() == pytest.approx(1 / 3)
    assert PPOClip().clipped(inputs([[1.0, 0.0]], [[1.0, 1.0]])).tolist() == [[True, False]]


def test_ppo_clip_rejects_bad_params():
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        PPOClip(dual_clip=1.0)
    with pytest.raises(ValueError, match="≥ 0"):
        PPOClip(eps_low=-0.1)


def test_policy_gradient_on_policy_is_reinforce():
    # old = logp.detach(): ρ = 1 in value → ℓ = −A; ∂ℓ/∂logp = −A·ρ = −A
    x = inputs([[0.0, 0.0, 0.0]], [[2.0, -1.0, 0.5]])
    loss, _ = PolicyGradient()(x)
    torch.testing.assert_close(loss, torch.tensor([[-2.0, 1.0, -0.5]]))
    loss.sum().backward()
    torch.testing.assert_close(x.logprobs.grad, torch.tensor([[-2.0, 1.0, -0.5]]))
    # off-policy: no clipping at all, ratio e → ℓ = −A·e
    loss2, _ = PolicyGradient()(inputs([[1.0]], [[1.0]]))
    assert loss2.item() == pytest.approx(-E)


def test_gspo_sequence_ratio_hand_values():
    # row 0: log ρ = [0.1, 0.3] → log s = 0.2, s = 1.2214, A = 1, ε = 0.2:
    #        max(−1.2214, −1.2) = −1.2 on both tokens (clipped)
    # row 1: log ρ = [−0.2, −0.2, pad] → s = e^−0.2 = 0.8187, A = −1: max(0.8187, 0.8) = 0.8187
    x = inputs(
        [[0.1, 0.3, 0.0], [-0.2, -0.2, 5.0]],
        [[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]],
        mask=[[1, 1, 0], [1, 1, 0]],
    )
    loss, m = GSPO(eps_low=0.2, eps_high=0.2)(x)
    s1 = math.exp(-0.2)
    torch.testing.assert_close(loss[:, :2], torch.tensor([[-1.2, -1.2], [s1, s1]]))
    assert m["surrogate/seq_ratio_mean"].item() == pytest.approx((math.exp(0.2) + s1) / 2)
    # aggregated with seq_mean_token_mean: (−1.2 + 0.8187)/2
    assert SeqMeanTokenMean()(loss, x).item() == pytest.approx((-1.2 + s1) / 2, rel=1e-5)


def test_gspo_token_equals_gspo_when_advantage_is_per_sequence():
    gen = torch.Generator().manual_seed(0)
    log_ratio = 0.01 * torch.randn(3, 4, generator=gen)  # inside a wide clip range
    adv = torch.tensor([1.0, -2.0, 0.5])[:, None].expand(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float)
    grads, losses = [], []
    for part in (GSPO(eps_low=0.5, eps_high=0.5), GSPOToken(eps_low=0.5, eps_high=0.5)):
        x = inputs(log_ratio, adv, mask=mask)
        loss = SeqMeanTokenMean()(part(x)[0], x)
        loss.backward()
        losses.append(loss.detach())
        grads.append(x.logprobs.grad * mask)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_gspo_token_value_is_sequence_ratio():
    # s_{i,t} has the value s_i = exp(mean log ρ) on every token: mean(0.1, 0.3) = 0.2; A = 1 unclipped
    x = inputs([[0.1, 0.3]], [[1.0, 1.0]])
    loss, _ = GSPOToken(eps_low=1.0, eps_high=1.0)(x)
    torch.testing.assert_close(loss, torch.full((1, 2), -math.exp(0.2)))


def test_gspo_rejects_token_mean_with_reason():
    gspo = get_algorithm("gspo")
    with pytest.raises(ValueError, match="seq_mean_token_mean"):
        gspo.replace(aggregate=TokenMean())
    with pytest.raises(ValueError, match="token count"):
        gspo.replace(surrogate=GSPOToken(), aggregate=TokenMean())
    assert gspo.replace(surrogate=GSPOToken()).surrogate == GSPOToken()
