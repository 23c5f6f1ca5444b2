"""Regularizers: ``r(x: LossInputs) -> (per-token loss term [B, T], metrics)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar
from unipo.parts.registry import register

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman, "Approximating KL").

    With ℓ = log π_θ − log π_ref:  k1 = ℓ,  k2 = ½ℓ²,  k3 = exp(−ℓ) − 1 + ℓ.
    k3 follows verl ``low_var_kl``: ℓ clamped to ±20 and the value to [−10, 10].
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        neg = (-log_ratio).clamp(-20, 20)  # log(π_ref/π_θ)
        return (torch.exp(neg) - neg - 1).clamp(-10, 10)
    raise ValueError(f"unknown KL estimator {estimator!r}; allowed: k1, k2, k3")


@register("regularizer", "kl")
@dataclass(frozen=True)
class KLPenalty:
    """β·KL(π_θ ‖ π_ref) per token as a loss term (GRPO, arXiv 2402.03300, uses k3, β = 0.04).

    Needs the reference model's log-probs. ``estimator`` ∈ {k1, k2, k3}.
    """

    coef: float = 0.04
    estimator: KLEstimator = "k3"

    def __post_init__(self) -> None:
        if self.estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl estimator must be one of k1, k2, k3, got {self.estimator!r}")

    @property
    def needs_reference(self) -> bool:
        return self.coef != 0

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if self.coef == 0:
            return torch.zeros_like(x.logprobs), {}
        if x.ref_logprobs is None:
            raise ValueError("kl regularizer needs ref_logprobs (the trainer computes them when coef != 0)")
        kl = kl_estimate(x.logprobs, x.ref_logprobs, self.estimator)  # [B, T]
        return self.coef * kl, {"regularizer/kl_ref": scalar(masked_mean(kl, x.mask))}


@register("regularizer", "entropy")
@dataclass(frozen=True)
class EntropyBonus:
    """Entropy bonus: loss term −c·H(π_θ(·|s_t)) per token (maximizes entropy for c > 0)."""

    coef: float = 0.001

    needs_entropy_grad = True

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.entropies is None:
            raise ValueError("entropy regularizer needs current-policy entropies with grad")
        return -self.coef * x.entropies, {"regularizer/entropy": scalar(masked_mean(x.entropies, x.mask))}
