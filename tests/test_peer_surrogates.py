"""The peers' policy losses (CISPO, SAPO, GMPO, GPG's, DPPO) against hand-worked values and against the
peer's formula, rewritten here as a plain per-token loop from verl-project/verl@1dda039
verl/trainer/ppo/core_algos.py (and TRL's ``_compute_loss`` where it differs), on random batches."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm, policy_loss
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.peer_surrogates import CISPO, GMPO, SAPO, DPPOBinaryKL, DPPOBinaryTV, LogProbPG

D = torch.float64


def inputs(logp, old, adv, mask=None) -> LossInputs:
    logp = torch.tensor(logp, dtype=D).requires_grad_(True)
    old = torch.tensor(old, dtype=D)
    mask = torch.ones_like(old) if mask is None else torch.tensor(mask, dtype=D)
    return LossInputs(logprobs=logp, old_logprobs=old, advantages=torch.tensor(adv, dtype=D), mask=mask)


def random_batch(seed: int, b: int = 6, t: int = 7) -> tuple[torch.Tensor, ...]:
    """(logp, old, adv, mask) [B, T]: ragged rows, ratios well away from 1, token-level advantages."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).to(D)
    old = -3 * torch.rand(b, t, generator=g, dtype=D) - 0.05  # π_old in (0.05, 0.95)
    logp = (old + 0.6 * torch.randn(b, t, generator=g, dtype=D)).clamp(max=-1e-3)
    adv = torch.randn(b, t, generator=g, dtype=D)
    return logp, old, adv, mask


def unipo_loss(part, aggregate, logp, old, adv, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, its gradient w.r.t. log π_θ) through the part and the aggregate."""
    lp = logp.clone().requires_grad_(True)
    x = LossInputs(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask)
    loss = aggregate(part(x)[0], x)
    loss.backward()
    return loss.detach(), lp.grad


def peer_loss(token_loss, agg: str, logp, old, adv, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer's loss: token_loss(lp, lo, a) -> ℓ per token (scalars), aggregated as verl agg_loss."""
    lp = logp.clone().requires_grad_(True)
    b, t = mask.shape
    rows = []
    for i in range(b):
        terms = [token_loss(lp[i, j], old[i, j], adv[i, j]) for j in range(t) if mask[i, j] > 0]
        rows.append(terms)
    if agg == "token-mean":  # Σ ℓ / Σ m
        loss = sum(sum(r) for r in rows) / mask.sum()
    elif agg == "seq-mean-token-mean":  # mean over rows of Σ ℓ / (|o_i| + 1e-8)
        loss = sum(sum(r) / (len(r) + 1e-8) for r in rows) / b
    else:  # seq-mean-token-sum-norm: Σ_i Σ_t ℓ / B / horizon
        loss = sum(sum(r) for r in rows) / b / t
    loss.backward()
    return loss.detach(), lp.grad


def assert_matches(ours, theirs) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ CISPO
def test_cispo_hand_values():
    # ρ = e^1 (log π −1, π_old −2), A = 1: ŵ = min(e, 1 + 0.2) = 1.2, ℓ = −1.2·1·(−1) = 1.2, ∂ℓ/∂log π = −1.2
    # ρ = e^−1 (log π −2, π_old −1), A = −1: no lower bound (1 − 10 < 0), ŵ = 1/e, ℓ = −(1/e)(−1)(−2) = −2/e,
    # ∂ℓ/∂log π = +1/e (ŵ carries no gradient)
    x = inputs([[-1.0, -2.0]], [[-2.0, -1.0]], [[1.0, -1.0]])
    loss, m = CISPO()(x)
    torch.testing.assert_close(loss, torch.tensor([[1.2, -2 / math.e]], dtype=D))
    loss.sum().backward()
    torch.testing.assert_close(x.logprobs.grad, torch.tensor([[-1.2, 1 / math.e]], dtype=D))
    assert m["surrogate/clip_frac"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_cispo_matches_verl_and_trl(seed):
    logp, old, adv, mask = random_batch(seed)

    def verl(lp, lo, a, low=10.0, high=0.2):  # compute_policy_loss_cispo
        ratio = torch.exp(torch.clamp(lp - lo, -20.0, 20.0))
        return -torch.clamp(ratio, 1 - low, 1 + high).detach() * a * lp

    def trl(lp, lo, a, eps_high=5.0):  # loss_type="cispo": clamp(coef_1, max=epsilon_high)
        return -torch.clamp(torch.exp(lp - lo), max=eps_high).detach() * a * lp

    ours = unipo_loss(CISPO(), TokenMean(), logp, old, adv, mask)
    assert_matches(ours, peer_loss(verl, "token-mean", logp, old, adv, mask))
    ours = unipo_loss(CISPO(eps_high=4.0), TokenMean(), logp, old, adv, mask)
    assert_matches(ours, peer_loss(trl, "token-mean", logp, old, adv, mask))


# ------------------------------------------------------------------ SAPO
def test_sapo_hand_values():
    # ρ = 1, A = 1, τ_pos = 1: gate σ(0)·4/1 = 2, ℓ = −2; ∂ℓ/∂log π = −A·σ'(0)·τ·(4/τ)·ρ = −0.25·4 = −1
    # ρ = 1, A = −1, τ_neg = 1.05: gate 0.5·4/1.05 = 1.904762, ℓ = +1.904762; ∂ℓ/∂log π = +1
    # ρ = e, A = 1: gate σ(e − 1)·4 = 0.847958·4 = 3.391832 (no hard cap at 1 + ε)
    x = inputs([[-1.0, -1.0, 0.0]], [[-1.0, -1.0, -1.0]], [[1.0, -1.0, 1.0]])
    loss, _ = SAPO()(x)
    sig = 1 / (1 + math.exp(-(math.e - 1)))
    torch.testing.assert_close(loss, torch.tensor([[-2.0, 2 / 1.05, -4 * sig]], dtype=D))
    loss[:, :2].sum().backward()
    torch.testing.assert_close(x.logprobs.grad[:, :2], torch.tensor([[-1.0, 1.0]], dtype=D))


@pytest.mark.parametrize("seed", [0, 1])
def test_sapo_matches_verl(seed):
    logp, old, adv, mask = random_batch(seed)

    def verl(lp, lo, a, tau_pos=1.0, tau_neg=1.05):  # compute_policy_loss_sapo (= TRL loss_type="sapo")
        ratio = torch.exp(torch.clamp(lp - lo, -20.0, 20.0))
        tau = tau_pos if a > 0 else tau_neg
        return -torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * a

    ours = unipo_loss(SAPO(), SeqMeanTokenMean(), logp, old, adv, mask)
    assert_matches(ours, peer_loss(verl, "seq-mean-token-mean", logp, old, adv, mask))


# ------------------------------------------------------------------ GMPO
def test_gmpo_hand_values():
    # A = 1, l = [0.5, −0.1]: min(l, clip(l, −0.4, 0.4)) = [0.4, −0.1], mean 0.15, s = e^0.15, ℓ = −e^0.15
    # A = −1, l = [0.5, −0.6]: max(l, clip) = [0.5, −0.4], mean 0.05, s = e^0.05, ℓ = +e^0.05
    x = inputs([[-0.5, -1.1], [-0.5, -1.6]], [[-1.0, -1.0], [-1.0, -1.0]], [[1.0, 1.0], [-1.0, -1.0]])
    loss, m = GMPO()(x)
    torch.testing.assert_close(loss[:, 0], torch.tensor([-math.exp(0.15), math.exp(0.05)], dtype=D))
    assert loss[0, 0] == loss[0, 1]  # one value per sequence
    # verl's fractions count every token outside the band (l ≠ clip(l)), kept by the min or not:
    # A > 0: token (0, 0); A < 0: tokens (1, 0) (kept unclipped, 0.5 > 0.4) and (1, 1)
    assert m["surrogate/clip_frac_high"].item() == pytest.approx(0.25)
    assert m["surrogate/clip_frac_low"].item() == pytest.approx(0.5)
    # d ℓ_0 / d log π_{0,1} = −A·s·(1/2) (the clipped token 0 carries none): −e^0.15 / 2
    loss[0, 0].backward()
    torch.testing.assert_close(x.logprobs.grad[0], torch.tensor([0.0, -math.exp(0.15) / 2], dtype=D))


@pytest.mark.parametrize("seed", [0, 1])
def test_gmpo_matches_verl(seed):
    logp, old, adv, mask = random_batch(seed)
    lp = logp.clone().requires_grad_(True)
    rows = []
    for i in range(mask.shape[0]):  # compute_policy_loss_geo_mean, one row at a time
        kept, advs, n = 0.0, 0.0, 0
        for j in range(mask.shape[1]):
            if mask[i, j] == 0:
                continue
            neg_kl = lp[i, j] - old[i, j]
            sgn = torch.sign(adv[i, j])
            clamped = torch.clamp(neg_kl, -0.4, 0.4)
            kept = kept + sgn * torch.minimum(sgn * neg_kl, sgn * clamped)
            advs, n = advs + adv[i, j], n + 1
        rows.append(-(advs / (n + 1e-8)) * torch.exp(kept / (n + 1e-8)))
    theirs = torch.stack(rows).mean()  # torch.mean(pg_losses)
    theirs.backward()
    assert_matches(unipo_loss(GMPO(), SeqMeanTokenMean(), logp, old, adv, mask), (theirs.detach(), lp.grad))


# ------------------------------------------------------------------ GPG's loss
@pytest.mark.parametrize("seed", [0, 1])
def test_logprob_pg_matches_verl_gpg(seed):
    # hand: A = 2, log π = −0.5 → ℓ = 1.0, ∂ℓ/∂log π = −2 whatever π_old is
    x = inputs([[-0.5]], [[-3.0]], [[2.0]])
    loss, _ = LogProbPG()(x)
    loss.sum().backward()
    assert loss.item() == 1.0 and x.logprobs.grad.item() == -2.0
    logp, old, adv, mask = random_batch(seed)
    ours = unipo_loss(LogProbPG(), TokenMean(), logp, old, adv, mask)
    assert_matches(ours, peer_loss(lambda lp, lo, a: -lp * a, "token-mean", logp, old, adv, mask))


# ------------------------------------------------------------------ DPPO
def test_dppo_hand_values():
    # π_old = 0.5, π_θ = 0.7: ρ = 1.4, Δ = 0.2.
    # TV: A = +1 → Δ > 0.15: dropped, ℓ = 0; A = −1 → Δ ≥ −0.15: kept, ℓ = −(−1)·1.4·log 0.7 = −0.499338
    # binary KL = 0.5·log(0.5/0.7) + 0.5·log(0.5/0.3) = −0.168236 + 0.255413 = 0.087177 > 0.05:
    #   A = +1 → π rose: dropped; A = −1 → π ≥ π_old passes the "moving back" test: kept, same −0.499338
    lp, lo = math.log(0.7), math.log(0.5)
    want = torch.tensor([[0.0, 1.4 * lp]], dtype=D)
    for part in (DPPOBinaryTV(), DPPOBinaryKL()):
        x = inputs([[lp, lp]], [[lo, lo]], [[1.0, -1.0]])
        loss, m = part(x)
        torch.testing.assert_close(loss, want)
        assert m["surrogate/dppo_masked_frac"].item() == pytest.approx(0.5)
        loss.sum().backward()  # the kept token: −A·sg(ρ) = 1.4; the dropped one: 0
        torch.testing.assert_close(x.logprobs.grad, torch.tensor([[0.0, 1.4]], dtype=D))
    # the ratio is truncated at c (TIS): ρ = 1.4 > c = 1.2 → weight 1.2
    x = inputs([[lp]], [[lo]], [[-1.0]])
    torch.testing.assert_close(DPPOBinaryTV(ratio_cap=1.2)(x)[0], torch.tensor([[1.2 * lp]], dtype=D))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dppo_matches_verl(seed):
    logp, old, adv, mask = random_batch(seed)

    def ratio_cap(lp, lo, c):
        return torch.clamp(torch.exp(torch.clamp(lp - lo, -20.0, 20.0)), max=c).detach()

    def tv(lp, lo, a, low=0.15, high=0.15, c=20.0):  # compute_policy_loss_dppo_tv
        p, po = torch.exp(lp), torch.exp(lo)
        valid = (p - po) <= high if a > 0 else (p - po) >= -low
        return -a * ratio_cap(lp, lo, c) * lp * float(valid)

    def kl(lp, lo, a, low=0.05, high=0.05, c=20.0):  # compute_policy_loss_dppo_kl
        p, po = torch.exp(lp), torch.exp(lo)
        bkl = po * (lo - lp) + (1 - po) * torch.log((1.0 - po + 1e-8) / (1.0 - p + 1e-8))
        valid = (bkl <= high) or (p <= po) if a > 0 else (bkl <= low) or (p >= po)
        return -a * ratio_cap(lp, lo, c) * lp * float(valid)

    for part, peer in ((DPPOBinaryTV(), tv), (DPPOBinaryKL(), kl)):
        x = LossInputs(logprobs=logp, old_logprobs=old, advantages=adv, mask=mask)
        masked = part(x)[1]["surrogate/dppo_masked_frac"].item()
        assert 0 < masked < 1  # the random batch exercises both branches
        ours = unipo_loss(part, SeqMeanTokenSumConst(), logp, old, adv, mask)
        assert_matches(ours, peer_loss(peer, "seq-mean-token-sum-norm", logp, old, adv, mask))


def test_presets_compose_the_peer_recipes():
    cispo, sapo, gmpo = get_algorithm("cispo"), get_algorithm("sapo"), get_algorithm("gmpo")
    assert (cispo.surrogate.eps_low, cispo.surrogate.eps_high) == (10.0, 0.2)
    assert cispo.regularizers[0].coef == 0.001 and cispo.regularizers[0].estimator == "k3"
    assert (sapo.surrogate.tau_pos, sapo.surrogate.tau_neg) == (1.0, 1.05)
    assert sapo.aggregate == SeqMeanTokenMean() and gmpo.aggregate == SeqMeanTokenMean()
    dppo = get_algorithm("dppo")
    assert not dppo.advantage.scale_by_std and dppo.aggregate == SeqMeanTokenSumConst()
    assert dppo.surrogate.ratio_cap == 10000.0 and dppo.surrogate.delta_high == 0.15
    gpg = get_algorithm("gpg")
    assert gpg.surrogate == LogProbPG() and not gpg.needs_reference
    # sequence-level losses refuse an aggregate that would weight sequences by length
    for name in ("sapo", "gmpo"):
        with pytest.raises(ValueError, match="seq_mean_token_mean"):
            get_algorithm(name).replace(aggregate=TokenMean())
    # a loss through the whole core: finite, and zero advantages give zero loss for the GMPO family
    x = inputs([[-1.0, -2.0]], [[-1.2, -1.8]], [[0.0, 0.0]])
    for name in ("cispo", "sapo", "gmpo", "gpg", "dppo"):
        loss, _ = policy_loss(get_algorithm(name).replace(regularizers=()), x)
        assert loss.item() == 0.0


def test_bad_parameters_are_refused_with_the_field():
    with pytest.raises(ValueError, match="cispo eps_low"):
        CISPO(eps_low=-1.0)
    with pytest.raises(ValueError, match="tau_pos"):
        SAPO(tau_pos=0.0)
    with pytest.raises(ValueError, match="gmpo"):
        GMPO(eps_high=-0.1)
    with pytest.raises(ValueError, match="dppo_tv needs"):
        DPPOBinaryTV(ratio_cap=0.0)
