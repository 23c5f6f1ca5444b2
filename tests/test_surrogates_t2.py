"""PACS's supervised objective and ReMix's KL-Convex constraint: hand-worked values, and PACS against its
authors' ``compute_pacs_loss`` (ritzz-ai/PACS@bbe1dc6 src/pacs/pacs_core_algos.py) rewritten here."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm, policy_loss
from unipo.parts.aggregate import SeqMeanTokenMean, TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.surrogates_t2 import PACS, KLConvex

D = torch.float64


def pacs_inputs(logp, old, rewards, groups, mask=None) -> LossInputs:
    logp = torch.tensor(logp, dtype=D).requires_grad_(True)
    old = torch.tensor(old, dtype=D)
    return LossInputs(
        logprobs=logp, old_logprobs=old, advantages=torch.zeros_like(old),
        mask=torch.ones_like(old) if mask is None else torch.tensor(mask, dtype=D),
        rewards=torch.tensor(rewards, dtype=D), group_ids=torch.tensor(groups),
    )  # fmt: skip


def test_pacs_hand_values_on_policy():
    # on-policy ψ = 0 for every row, so ψ̂ = 0 and each row's BCE is log 2; group r = [1, 0] has balanced
    # weights 2/(2·1) = 1: L = (1/2)(log 2 + log 2) = log 2.
    # ψ̂_0 = ψ_0 − ψ_1, ψ̂_1 = ψ_1 − ψ_0, ∂BCE/∂ψ̂ = σ(ψ̂) − r:
    # ∂L/∂ψ_0 = ½[(0.5 − 1)·1 + (0.5 − 0)·(−1)] = −0.5, ∂L/∂ψ_1 = +0.5; ψ = Σ_t log π → every token
    x = pacs_inputs([[-1.0, -2.0], [-0.5, -0.7]], [[-1.0, -2.0], [-0.5, -0.7]], [1.0, 0.0], [0, 0])
    algo = get_algorithm("pacs")
    loss, m = policy_loss(algo, x)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    torch.testing.assert_close(x.logprobs.grad, torch.tensor([[-0.5, -0.5], [0.5, 0.5]], dtype=D))
    assert m["surrogate/pacs_prob_mean"].item() == pytest.approx(0.5)


def test_pacs_class_weights_and_lone_rows():
    # r = [1, 0, 0, 0]: balanced weights n/(k·n_c): 4/(2·1) = 2 for the 1, 4/(2·3) = 2/3 for the 0s;
    # a group that agrees keeps 1; ψ̂ = 0 → L = mean of w·log 2 = (2 + 3·2/3 + 1 + 1)/6·log 2
    part = PACS()
    r = torch.tensor([1.0, 0, 0, 0, 1, 1])
    idx = torch.tensor([0, 0, 0, 0, 1, 1])
    torch.testing.assert_close(part.weights(r, idx), torch.tensor([2, 2 / 3, 2 / 3, 2 / 3, 1, 1]))
    same = [[-1.0]] * 6
    x = pacs_inputs(same, same, r.tolist(), idx.tolist())
    loss, _ = policy_loss(get_algorithm("pacs"), x)
    assert loss.item() == pytest.approx(6 / 6 * math.log(2))
    # a group with one row in the micro-batch has no leave-one-out baseline: ψ̂ = ψ = 1·(−1 − (−2)) = 1,
    # r = 1 → BCE = softplus(1) − 1 = log(1 + e^−1) = 0.313262
    x = pacs_inputs([[-1.0]], [[-2.0]], [1.0], [7])
    loss, m = PACS()(x)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert m["surrogate/pacs_lone_rows"].item() == 1.0


def _pacs_code(logp, old, mask, scores, rollout_n, beta=1.0, estimator="rloo", use_weight=True):
    """compute_pacs_loss with reward_method "1", written as its loops: rows in chunks of rollout_n."""
    reward = beta * ((logp - old) * mask).sum(dim=-1, keepdim=True)  # (bsz, 1)
    if estimator == "rloo":  # compute_rloo_outcome_advantage
        grouped = reward.reshape(-1, rollout_n, 1)
        total = grouped.sum(dim=1, keepdim=True).repeat(1, rollout_n, 1)
        advantage = (grouped - (total - grouped) / (rollout_n - 1)).reshape(-1, 1)
    else:  # compute_grpo_outcome_advantage
        grouped = reward.reshape(-1, rollout_n, 1)
        mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)
        advantage = ((grouped - mean) / (std + 1e-6)).reshape(-1, 1)
    score = scores[:, None]
    weight = torch.ones(len(scores), dtype=reward.dtype)
    if use_weight:  # compute_weight(mode="question") with sklearn's "balanced" n/(k·bincount)
        for i in range(0, len(scores), rollout_n):
            chunk = scores[i : i + rollout_n].tolist()
            classes = sorted(set(chunk))
            if len(classes) > 1:
                for j, label in enumerate(chunk):
                    weight[i + j] = len(chunk) / (len(classes) * chunk.count(label))
    return torch.nn.BCEWithLogitsLoss(weight=weight[:, None])(advantage, score)


@pytest.mark.parametrize(
    ("seed", "baseline", "weights"), [(0, "rloo", True), (1, "rloo", False), (2, "grpo", True)]
)
def test_pacs_matches_the_authors_loss(seed, baseline, weights):
    g = torch.Generator().manual_seed(seed)
    n_groups, n, t = 3, 4, 5
    b = n_groups * n
    mask = (torch.arange(t)[None] < torch.randint(1, t + 1, (b,), generator=g)[:, None]).to(D)
    old = -2 * torch.rand(b, t, generator=g, dtype=D)
    logp = old + 0.3 * torch.randn(b, t, generator=g, dtype=D)  # off-policy: ψ ≠ 0
    scores = torch.randint(0, 2, (b,), generator=g).to(D)
    lp = logp.clone().requires_grad_(True)
    theirs = _pacs_code(lp, old, mask, scores, n, estimator=baseline, use_weight=weights)
    theirs.backward()
    part = PACS(beta=1.0, baseline=baseline, class_weights="question" if weights else "none")
    ours_lp = logp.clone().requires_grad_(True)
    x = LossInputs(
        logprobs=ours_lp, old_logprobs=old, advantages=torch.zeros_like(old), mask=mask,
        rewards=scores, group_ids=torch.arange(n_groups).repeat_interleave(n),
    )  # fmt: skip
    ours = SeqMeanTokenMean()(part(x)[0], x)
    ours.backward()
    torch.testing.assert_close(ours.detach(), theirs.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours_lp.grad, lp.grad, atol=1e-6, rtol=1e-6)


def test_pacs_refuses_non_label_rewards_and_other_aggregates():
    x = pacs_inputs([[-1.0]], [[-1.0]], [2.0], [0])
    with pytest.raises(ValueError, match=r"label in \[0, 1\]"):
        PACS()(x)
    with pytest.raises(ValueError, match="seq_mean_token_mean"):
        get_algorithm("pacs").replace(aggregate=TokenMean())
    with pytest.raises(ValueError, match="pacs baseline"):
        PACS(baseline="mean")
    assert PACS.micro_batch_statistics


def test_kl_convex_hand_values():
    # log π = −1, log π_old = −1.5, log π_ref = −2; k1: λ·(−1 + 2) + (1 − λ)·(−1 + 1.5) = 0.5 + 0.25 = 0.75
    # ×β = 0.1 → 0.075; ∂/∂log π = β·(λ + 1 − λ) = 0.1
    logp = torch.tensor([[-1.0]], requires_grad=True)
    x = LossInputs(
        logprobs=logp, old_logprobs=torch.tensor([[-1.5]]), advantages=torch.zeros(1, 1),
        mask=torch.ones(1, 1), ref_logprobs=torch.tensor([[-2.0]]),
    )  # fmt: skip
    term, m = KLConvex(coef=0.1, mix=0.5, estimator="k1")(x)
    assert term.item() == pytest.approx(0.075)
    term.sum().backward()
    assert logp.grad.item() == pytest.approx(0.1)
    # k3(ℓ) = e^−ℓ − 1 + ℓ: ℓ_ref = 1 → 0.367879, ℓ_prev = 0.5 → 0.106531; λ = 0.5 → 0.237205
    term, m = KLConvex(coef=1.0, mix=0.5)(x)
    assert term.item() == pytest.approx(0.5 * (math.exp(-1) + math.exp(-0.5) - 0.5), abs=1e-6)
    assert m["regularizer/kl_prev"].item() == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)
    # λ = 0: a trust region on π_old alone, no reference needed; λ = 1: GRPO's KL loss
    assert not KLConvex(mix=0.0).needs_reference and KLConvex(mix=1.0).needs_reference
    x.ref_logprobs = None
    term, _ = KLConvex(coef=1.0, mix=0.0)(x)
    assert term.item() == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        KLConvex(mix=0.5)(x)
    with pytest.raises(ValueError, match="mix"):
        KLConvex(mix=1.5)


def test_remix_preset_is_clipped_pg_plus_kl_convex():
    remix = get_algorithm("remix")
    assert remix.surrogate.part_name == "ppo_clip" and remix.surrogate.dual_clip is None
    assert remix.regularizers == (KLConvex(coef=0.001, mix=0.5, estimator="k3"),) and remix.needs_reference
    assert remix.aggregate == TokenMean() and len(remix.deviations) == 3
