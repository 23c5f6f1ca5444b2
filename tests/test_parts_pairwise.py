"""P3O's pairwise clipped surrogate (parts/pairwise.py): hand-worked pairs, the code's token-wise
variant against a direct transcription of the authors' formula, larger groups, composition checks."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm, policy_loss
from unipo.parts.aggregate import SeqMeanTokenMean
from unipo.parts.base import LossInputs
from unipo.parts.pairwise import P3OClip


def pair(old_b: float, adv=(1.0, -1.0)) -> LossInputs:
    """One group of two one-token responses a, b (log π_θ −1, −2; log π_ref −1.1, −2.2; log π_old(a) −1.2)."""
    lp = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    return LossInputs(
        logprobs=lp, old_logprobs=torch.tensor([[-1.2], [old_b]]),
        advantages=torch.tensor([[adv[0]], [adv[1]]]),
        mask=torch.ones(2, 1), ref_logprobs=torch.tensor([[-1.1], [-2.2]]), group_ids=torch.tensor([7, 7]),
    )  # fmt: skip


def token_mean(x: LossInputs, loss: torch.Tensor) -> torch.Tensor:
    return (loss * x.mask).sum() / x.num_tokens


def test_joint_clip_inside_the_band_is_the_weighted_pairwise_gradient():
    # ρ_a = −1 + 1.1 = 0.1, ρ_b = −2 + 2.2 = 0.2: Δ = −0.1; with old_b = −2.15: ρ_old = (−0.1, 0.05),
    # Δ_old = −0.15
    # q = (A_a − A_b)/2 − β(ρ_a − ρ_b) = (1 + 1)/2 − 0.05·(−0.1) = 1.005
    # w = exp((−1 + 1.2) + (−2 + 2.15)) = exp(0.35); Δ ∈ [Δ_old − 0.2, Δ_old + 0.2] = [−0.35, 0.05]: unclipped
    # pair loss = −q·w·Δ = 0.1005·e^0.35; token mean over the pair's 2 tokens halves it
    x = pair(-2.15)
    loss, m = P3OClip()(x)
    q, w = 1.005, math.exp(0.35)
    total = token_mean(x, loss)
    assert total.item() == pytest.approx(q * w * 0.1 / 2, rel=1e-5)
    total.backward()  # d/dlog π(a) = −q·w/2, d/dlog π(b) = +q·w/2
    assert torch.allclose(x.logprobs.grad, torch.tensor([[-q * w / 2], [q * w / 2]]), rtol=1e-5)
    assert m["p3o/clip_frac"].item() == 0.0 and m["p3o/weight_mean"].item() == pytest.approx(w, rel=1e-5)
    assert m["p3o/q_abs_mean"].item() == pytest.approx(q, rel=1e-5)


def test_joint_clip_outside_the_band_stops_the_gradient():
    # old_b = −1.9: ρ_old_b = 0.3, Δ_old = −0.4; Δ = −0.1 > Δ_old + 0.2 = −0.2, the way q > 0 favours:
    # max(−q·w·Δ, −q·w·(−0.2)) takes the clipped, constant term: loss q·w·0.2, no gradient
    x = pair(-1.9)
    loss, m = P3OClip()(x)
    w = math.exp(0.2 - 0.1)  # (−1 + 1.2) + (−2 + 1.9)
    total = token_mean(x, loss)
    assert total.item() == pytest.approx(1.005 * w * 0.2 / 2, rel=1e-5)
    total.backward()
    assert x.logprobs.grad.abs().sum().item() == 0.0 and m["p3o/clip_frac"].item() == 1.0


def test_importance_weight_is_clipped_to_one_over_c_and_c():
    x = pair(-12.0)  # log w = 0.2 + 10 = 10.2 > log 10
    _, m = P3OClip(ratio_clip=10.0)(x)
    assert m["p3o/weight_mean"].item() == pytest.approx(10.0, rel=1e-5)


def authors_token_loss(lp, old, ref, r, kl_coef, eps, c):
    """A transcription of AccelerateP3OTrainer.p3o_loss with clip_tokenwise=True for one pair of rows
    (lp/old/ref [2, T], r [2]): weights = −q·clip(ratio);
    [Σ max(w·lp_a, w·clip(lp_a)) + Σ max(−w·lp_b, −w·clip(lp_b))] / n."""
    logratio = (lp - ref).sum(1)
    old_logratio = (old - ref).sum(1)
    q = (r[0] - r[1] - kl_coef * (logratio[0] - logratio[1])).detach()
    ratio = torch.exp((logratio[0] - old_logratio[0]) + (logratio[1] - old_logratio[1])).detach()
    weight = -q * torch.clamp(ratio, 1 / c, c)
    loss0 = weight * lp[0]
    loss0_cl = weight * torch.clamp(lp[0], old[0] - eps, old[0] + eps)
    loss1 = -weight * lp[1]
    loss1_cl = -weight * torch.clamp(lp[1], old[1] - eps, old[1] + eps)
    return (torch.max(loss0, loss0_cl).sum() + torch.max(loss1, loss1_cl).sum()) / lp.numel()


def test_token_mode_matches_the_authors_clip_tokenwise_formula():
    g = torch.Generator().manual_seed(0)
    lp = (-2 * torch.rand(2, 4, generator=g)).requires_grad_(True)
    old = lp.detach() + 0.3 * torch.randn(2, 4, generator=g)  # some tokens outside ±0.2
    ref = lp.detach() - 0.2 * torch.rand(2, 4, generator=g)
    r = torch.tensor([0.3, 1.0])
    x = LossInputs(logprobs=lp, old_logprobs=old, advantages=torch.tensor([[-0.7], [0.7]]).expand(2, 4),
                   mask=torch.ones(2, 4), ref_logprobs=ref, group_ids=torch.tensor([0, 0]))  # fmt: skip
    loss, _ = P3OClip(mode="token")(x)
    ours = token_mean(x, loss)
    (g_ours,) = torch.autograd.grad(ours, lp)
    theirs = authors_token_loss(lp, old, ref, r, 0.05, 0.2, 10.0)  # RLOO at G = 2: A = ±(r_a − r_b)
    (g_theirs,) = torch.autograd.grad(theirs, lp)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)


def test_a_group_of_three_uses_every_pair_once_per_row():
    # naive: Σ_{i<j} L_ij/(G − 1) with L_ij the joint pair loss, each spread over its 2·1 tokens
    g = torch.Generator().manual_seed(1)
    lp = (-2 * torch.rand(3, 1, generator=g)).requires_grad_(True)
    old = lp.detach() + 0.05 * torch.randn(3, 1, generator=g)
    ref = lp.detach() - 0.1
    adv = torch.randn(3, 1, generator=g)
    x = LossInputs(logprobs=lp, old_logprobs=old, advantages=adv, mask=torch.ones(3, 1), ref_logprobs=ref,
                   group_ids=torch.tensor([4, 4, 4]))  # fmt: skip
    loss, m = P3OClip()(x)
    naive = torch.zeros(())
    rho, rho_old = (lp - ref)[:, 0], (old - ref)[:, 0]
    for i in range(3):
        for j in range(i + 1, 3):
            q = (adv[i, 0] - adv[j, 0]) / 2 - 0.05 * (rho[i] - rho[j]).detach()
            w = torch.exp((lp[i, 0] - old[i, 0]) + (lp[j, 0] - old[j, 0])).detach().clamp(0.1, 10)
            d, d_old = rho[i] - rho[j], rho_old[i] - rho_old[j]
            naive = naive + torch.max(-q * w * d, -q * w * d.clamp(d_old - 0.2, d_old + 0.2)) / 2
    assert loss.sum().item() == pytest.approx(naive.item(), rel=1e-5)
    assert m["p3o/unpaired_rows"].item() == 0.0


def test_a_row_alone_in_its_group_gets_no_loss_and_is_counted():
    x = pair(-2.15)
    x = LossInputs(logprobs=x.logprobs, old_logprobs=x.old_logprobs, advantages=x.advantages, mask=x.mask,
                   ref_logprobs=x.ref_logprobs, group_ids=torch.tensor([0, 1]))  # fmt: skip
    loss, m = P3OClip()(x)
    assert loss.abs().sum().item() == 0.0 and m["p3o/unpaired_rows"].item() == 2.0


def test_p3o_preset_and_rejected_compositions():
    algo = get_algorithm("p3o")
    assert algo.any_part("micro_batch_statistics") and algo.needs_reference
    x = pair(-2.15)
    loss, _ = policy_loss(algo, x)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"p3o cannot be used here.*token_mean"):
        algo.replace(aggregate=SeqMeanTokenMean())
    with pytest.raises(ValueError, match="ratio_clip must be ≥ 1"):
        P3OClip(ratio_clip=0.5)
    assert not P3OClip(kl_coef=0.0).needs_reference
