"""Group-statistic advantage estimators of the T2 seeds: BNPO, CANON, OBLR-PO's weighted baseline.

``adv(batch) -> (advantages [B, T], metrics)``; every value is one per completion, broadcast to
its valid tokens. A group of one row gets A = 0, as ``group_norm`` (it has no baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.base import Metrics, broadcast_to_tokens, group_index, scalar
from unipo.parts.registry import register


def rewards_of(batch: RolloutBatch, part: str) -> Tensor:  # [B] float64
    if batch.rewards is None:
        raise ValueError(f"{part} needs batch.rewards; compute rewards before advantages")
    return batch.rewards.double()


def group_sums(values: Tensor, idx: Tensor, n: int) -> Tensor:  # [B] → [G]
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, idx, values)


def beta_pdf(p: Tensor, a: float, b: float) -> Tensor:
    """The Beta(a, b) density at p ∈ [0, 1], with 0·log 0 = 0 (so Beta(1, b) is finite at p = 0)."""
    a_t = torch.tensor(a, dtype=torch.float64)
    b_t = torch.tensor(b, dtype=torch.float64)
    log_norm = torch.lgamma(a_t) + torch.lgamma(b_t) - torch.lgamma(a_t + b_t)
    return torch.exp(torch.xlogy(a_t - 1, p) + torch.xlogy(b_t - 1, 1 - p) - log_norm)


@register("advantage", "bnpo")
@dataclass(frozen=True)
class BNPO:
    """BNPO: Beta-normalized policy optimization (Xiao et al., arXiv 2506.02864).

    Rewards are mapped to [0, 1] (r̃ = (r − r_min)/(r_max − r_min)); per prompt p_q = mean_G(r̃).
    Over the batch's prompts μ = mean(p_q) and σ² = var(p_q) (unbiased) fit a Beta by moments,
    a = (μ(1−μ)/σ² − 1)·μ, b = (μ(1−μ)/σ² − 1)·(1−μ), and the normalizing Beta takes the paper's
    variance-minimizing parameters α = max(1 + a/3, 1), β = max(1 + b/3, 1) (adapted every batch):

        A_i = (r̃_i − p_q) / f_Beta(α, β)(p_q),     1/f clamped to [0, 1e6]

    Source: changyi7231/BNPO@a9c51b98 recipe/bnpo/src/bnpo_ray_trainer.py:
    compute_bnpo_outcome_advantage (min_value 0, max_value 1). With fewer than two prompts the code
    uses μ = 0, σ² = 1 (so α = β = 1, f = 1); unipo does the same when σ² = 0, where the code
    divides by zero. Deviation: a group of one row gets A = 0 and stays out of the fit (the code
    gives it p = 0, in the fit too, and A = r̃/f(0)).
    """

    r_min: float = 0.0
    r_max: float = 1.0
    max_weight: float = 1e6

    def __post_init__(self) -> None:
        if not self.r_max > self.r_min or self.max_weight <= 0:
            raise ValueError(
                f"bnpo needs r_max > r_min and max_weight > 0, got r_min={self.r_min}, r_max={self.r_max}, "
                f"max_weight={self.max_weight}"
            )

    def beta_parameters(self, p: Tensor) -> tuple[float, float]:
        """(α, β) from the per-prompt success rates p [G] (groups of ≥ 2 rows)."""
        mu, var = (p.mean(), p.var()) if p.numel() > 1 else (torch.tensor(0.0), torch.tensor(1.0))
        if float(var) <= 0:
            mu, var = torch.tensor(0.0), torch.tensor(1.0)
        scale = float(mu * (1 - mu) / var - 1)
        return max(1 + scale * float(mu) / 3, 1.0), max(1 + scale * float(1 - mu) / 3, 1.0)

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = rewards_of(batch, "bnpo")  # [B]
        lo, hi = float(r.min()), float(r.max())
        if lo < self.r_min - 1e-9 or hi > self.r_max + 1e-9:
            raise ValueError(
                f"bnpo maps rewards to [0, 1] with r_min={self.r_min}, r_max={self.r_max}, but batch.rewards "
                f"spans [{lo}, {hi}]; set bnpo's r_min / r_max to the reward's range"
            )
        s = (r - self.r_min) / (self.r_max - self.r_min)  # [B] in [0, 1]
        idx, n = group_index(batch.group_ids.to(s.device))
        count = group_sums(torch.ones_like(s), idx, n)  # [G]
        p = group_sums(s, idx, n) / count  # [G]
        a, b = self.beta_parameters(p[count > 1])
        weight = (1 / beta_pdf(p, a, b)).clamp(0, self.max_weight)  # [G]
        adv = weight[idx] * (s - p[idx]) * (count[idx] > 1)  # [B]
        return broadcast_to_tokens(adv.float(), batch.completion_mask), {
            "advantage/bnpo_alpha": scalar(a),
            "advantage/bnpo_beta": scalar(b),
            "advantage/bnpo_weight_mean": scalar(weight[count > 1].mean() if (count > 1).any() else 0.0),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }


@register("advantage", "canon")
@dataclass(frozen=True)
class CANON:
    """CANON: conditional advantage estimation (Chen et al., arXiv 2509.23962).

    Each group is sorted by a metric (``split="entropy"``: the mean token entropy of π_old over
    the response; ``"length"``: its length), stable, and cut at ⌊G/2⌋ into a lower half S and an
    upper half L with mean rewards r̄_S, r̄_L. With μ the inter-group share (Eq. 5) and α Eq. 8's
    weight (β a shift, 0):

        entropy, i ∈ L:  A_i = μ(r_i − α·r̄_S + β) + (1−μ)(r_i − r̄_L)
        entropy, i ∈ S:  A_i = μ(α·r_i − r̄_L − β) + (1−μ)(r_i − r̄_S)
        length,  i ∈ L:  A_i = μ(α·r_i − r̄_S + β) + (1−μ)(r_i − r̄_L)
        length,  i ∈ S:  A_i = μ(r_i − α·r̄_L − β) + (1−μ)(r_i − r̄_S)

    μ = 1 compares each response with the other half only (inter-group), μ = 0 within its own half;
    Dr. GRPO's r_i − mean(r) is the average of the two halves' estimates. Source:
    biuboomc/CANON@7d6f814f verl/trainer/ppo/core_algos.py:compute_dr_entropy_per_token_group_
    outcome_advantage and compute_dr_length_on_mean_group_outcome_advantage (defaults α = 1, β = 0,
    λ = μ = 1). The code also divides by max_response_length when the loss is seq-mean-token-sum;
    here that constant is the ``seq_mean_token_sum_const`` aggregate's. Deviation: a group of one
    row gets A = 0 (the code: A = r).
    """

    split: Literal["entropy", "length"] = "entropy"
    alpha: float = 1.0
    beta: float = 0.0
    mu: float = 1.0

    def __post_init__(self) -> None:
        if self.split not in ("entropy", "length"):
            raise ValueError(f"canon split must be 'entropy' or 'length', got {self.split!r}")
        if not 0 <= self.mu <= 1:
            raise ValueError(f"canon mu (the inter-group share) must be in [0, 1], got {self.mu}")

    @property
    def needs_old_logprobs(self) -> bool:  # the old-logprob pass fills batch.entropies
        return self.split == "entropy"

    def metric(self, batch: RolloutBatch) -> Tensor:  # [B]
        mask = batch.completion_mask.double()
        if self.split == "length":
            return mask.sum(1)
        if batch.entropies is None:
            raise ValueError(
                "canon split='entropy' needs batch.entropies (π_old's token entropies, filled by the "
                "old-logprob pass when a part sets needs_old_logprobs)"
            )
        return (batch.entropies.double() * mask).sum(1) / mask.sum(1).clamp(min=1)

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = rewards_of(batch, "canon")  # [B]
        metric = self.metric(batch).to(r.device)  # [B]
        idx, n = group_index(batch.group_ids.to(r.device))
        adv = torch.zeros_like(r)
        upper = torch.zeros_like(r, dtype=torch.bool)
        a, b, mu = self.alpha, self.beta, self.mu
        for g in range(n):
            rows = torch.nonzero(idx == g, as_tuple=True)[0]  # batch order
            if rows.numel() < 2:
                continue
            order = rows[torch.sort(metric[rows], stable=True).indices]
            low, high = order[: rows.numel() // 2], order[rows.numel() // 2 :]
            r_low, r_high = r[low].mean(), r[high].mean()
            upper[high] = True
            if self.split == "entropy":
                adv[high] = mu * (r[high] - a * r_low + b) + (1 - mu) * (r[high] - r_high)
                adv[low] = mu * (a * r[low] - r_high - b) + (1 - mu) * (r[low] - r_low)
            else:
                adv[high] = mu * (a * r[high] - r_low + b) + (1 - mu) * (r[high] - r_high)
                adv[low] = mu * (r[low] - a * r_high - b) + (1 - mu) * (r[low] - r_low)
        return broadcast_to_tokens(adv.float(), batch.completion_mask), {
            "advantage/canon_upper_reward": scalar(r[upper].mean() if upper.any() else 0.0),
            "advantage/canon_lower_reward": scalar(r[~upper].mean() if (~upper).any() else 0.0),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }


@register("advantage", "oblr_baseline")
@dataclass(frozen=True)
class OBLRBaseline:
    """OBLR-PO's variance-optimal, gradient-weighted baseline (Huang et al., arXiv 2511.23310).

    The baseline minimizing the variance of ∇log π(o)·(r − b) weights each response's reward by
    its squared score norm: b* = Σ_i ‖∇_θ log π(o_i)‖²·r_i / Σ_i ‖∇_θ log π(o_i)‖² over the group.
    ‖∇_θ log π(o_i)‖² is taken in logit space, token by token, with π_old's sampled-token
    probabilities p_t:

        w_i = Σ_t (1 − p_t)²       b_q = Σ_{i∈q} w_i·r_i / Σ_{i∈q} w_i       A_i = r_i − b_q

    (divided by the group's std + ε when ``scale_by_std``). The logit gradient of log p_t is
    e_{o_t} − π_t with squared norm 1 − 2p_t + Σ_v π_t(v)², which lies in [(1−p_t)², 2(1−p_t)²];
    the batch carries only the sampled-token log-probs, so the lower bound stands in for it.
    Source: arXiv 2511.23310 abstract (the variance-optimal baseline is gradient-weighted; the
    learning rate follows the gradient SNR). Deviations (the paper body was not available,
    UNVERIFIED): the logit-space proxy (hidden-state norms and cross-token terms dropped, Σπ²
    bounded); the SNR-governed learning-rate schedule is not an advantage and is not carried; a
    group whose weights are all 0 falls back to the plain mean; a group of one row gets A = 0.
    """

    scale_by_std: bool = False
    eps: float = 1e-6

    needs_old_logprobs = True  # π_old's log-probs of the sampled tokens before the advantage

    def weights(self, batch: RolloutBatch) -> Tensor:  # [B] float64
        if batch.old_logprobs is None:
            raise ValueError(
                "oblr_baseline needs batch.old_logprobs before the advantage (the trainer computes them "
                "because this part sets needs_old_logprobs)"
            )
        mask = batch.completion_mask.double()
        p = batch.old_logprobs.double().exp()  # [B, T]
        return ((1 - p) ** 2 * mask).sum(1)

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = rewards_of(batch, "oblr_baseline")  # [B]
        w = self.weights(batch).to(r.device)  # [B]
        idx, n = group_index(batch.group_ids.to(r.device))
        count = group_sums(torch.ones_like(r), idx, n)  # [G]
        w_sum = group_sums(w, idx, n)  # [G]
        mean = group_sums(r, idx, n) / count  # [G]
        weighted = group_sums(w * r, idx, n) / w_sum.clamp(min=1e-300)
        base = torch.where(w_sum > 0, weighted, mean)  # [G]
        adv = (r - base[idx]) * (count[idx] > 1)  # [B]
        if self.scale_by_std:
            var = group_sums((r - mean[idx]) ** 2, idx, n) / (count - 1).clamp(min=1)  # [G] unbiased
            adv = adv / (var.sqrt()[idx] + self.eps)
        return broadcast_to_tokens(adv.float(), batch.completion_mask), {
            "advantage/oblr_baseline_shift": scalar(
                (base - mean)[count > 1].abs().mean() if (count > 1).any() else 0.0
            ),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }
