"""Regularizers: ``r(x: LossInputs) -> (per-token loss term [B, T], metrics)``.

Regularizer terms are added to the (token-weighted) surrogate before aggregation and are not
multiplied by token weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar
from unipo.parts.registry import register
from unipo.parts.weights import token_covariance

KLEstimator = Literal["k1", "k2", "k3", "k3+"]
KL_ESTIMATORS = ("k1", "k2", "k3", "k3+")


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman, "Approximating KL").

    With ℓ = log π_θ − log π_ref:  k1 = ℓ,  k2 = ½ℓ²,  k3 = exp(−ℓ) − 1 + ℓ.
    k3 follows verl ``low_var_kl``: ℓ clamped to ±20 and the value to [−10, 10].
    "k3+" is verl's straight-through variant: the value of k3 with the gradient of k2
    (k2 − sg[k2] + sg[k3]), since ∇k2 is the gradient of the true reverse KL.
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator in ("k3", "k3+"):
        neg = (-log_ratio).clamp(-20, 20)  # log(π_ref/π_θ)
        k3 = (torch.exp(neg) - neg - 1).clamp(-10, 10)
        if estimator == "k3":
            return k3
        k2 = 0.5 * log_ratio**2
        return k2 - k2.detach() + k3.detach()
    raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")


@register("regularizer", "kl")
@dataclass(frozen=True)
class KLPenalty:
    """β·KL(π_θ ‖ π_ref) per token as a loss term (GRPO, arXiv 2402.03300, uses k3, β = 0.04).

    Needs the reference model's log-probs. ``estimator`` ∈ {k1, k2, k3, k3+}. (KL in the
    *reward* instead is the ``kl_coef`` of the reinforce_pp / gae advantages.)
    """

    coef: float = 0.04
    estimator: KLEstimator = "k3"

    def __post_init__(self) -> None:
        if self.estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl estimator must be one of {', '.join(KL_ESTIMATORS)}, got {self.estimator!r}"
            )

    @property
    def needs_reference(self) -> bool:
        return self.coef != 0

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if self.coef == 0:
            return torch.zeros_like(x.logprobs), {}
        if x.ref_logprobs is None:
            raise ValueError("kl regularizer needs ref_logprobs (the trainer computes them when coef != 0)")
        kl = kl_estimate(x.logprobs, x.ref_logprobs, self.estimator)  # [B, T]
        return self.coef * kl, {"regularizer/kl_ref": scalar(masked_mean(kl.detach(), x.mask))}


@register("regularizer", "entropy")
@dataclass(frozen=True)
class EntropyBonus:
    """Entropy bonus: loss term −c·H(π_θ(·|s_t)) per token (maximizes entropy for c > 0).

    ``token_mean=True`` makes it a term of its own, −c·Σ_{i,t} H_{i,t}·m_{i,t} / N_tokens over
    the accumulated batch (a 0-dim ``aggregated`` term), whatever the algorithm's aggregate: verl's
    ``entropy_loss = masked_mean(entropy, response_mask)`` next to a policy loss normalized
    otherwise (HPT's token-sum RL loss).
    """

    coef: float = 0.001
    token_mean: bool = False

    needs_entropy_grad = True

    @property
    def aggregated(self) -> bool:
        return self.token_mean

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.entropies is None:
            raise ValueError("entropy regularizer needs current-policy entropies with grad")
        if self.token_mean:  # 0-dim: −c·Σ H·m / N over the accumulated batch
            h = torch.where(x.mask.bool(), x.entropies, torch.zeros_like(x.entropies))
            term = -self.coef * h.sum() / x.num_tokens
        else:
            term = -self.coef * x.entropies
        return term, {
            "regularizer/entropy": scalar(masked_mean(x.entropies.detach(), x.mask))
        }


@register("regularizer", "adaptive_entropy")
@dataclass(frozen=True)
class AdaptiveEntropy:
    """Entropy bonus −α·H per token with α steered toward a target entropy H*.

    Once per optimizer step (``on_step_end(metrics)``, from the step's mean entropy metric
    ``regularizer/entropy``):

        α ← clamp(α + lr·(H* − H), 0, α_max)

    This is the dual-gradient step on α of SAC's automatic entropy tuning (Haarnoja et al.,
    arXiv 1812.05905 §5: ∂/∂α of α·(H − H*)), taken on α itself and clamped to [0, α_max]
    so it only ever *adds* entropy. Skywork-OR1 (arXiv 2505.22312) uses the same idea with a
    fixed step; "The Policy Cliff" motivates entropy regularization for stability. No paper
    default for H*: choose it from the entropy of a healthy run (``unipo report``).
    Stateful: α is saved by ``state_dict()`` and restored by ``load_state_dict()``.
    """

    target: float = 0.3
    lr: float = 1e-3
    coef_init: float = 0.0
    coef_max: float = 0.01
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    needs_entropy_grad = True

    def __post_init__(self) -> None:
        if self.coef_max < 0 or not 0 <= self.coef_init <= self.coef_max:
            raise ValueError(
                f"adaptive_entropy needs 0 ≤ coef_init ≤ coef_max, got {self.coef_init}, {self.coef_max}"
            )
        self._state["coef"] = float(self.coef_init)

    @property
    def coef(self) -> float:
        return self._state["coef"]

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        h = metrics.get("regularizer/entropy")
        if h is None:
            return
        new = self.coef + self.lr * (self.target - float(h))
        self._state["coef"] = min(max(new, 0.0), self.coef_max)

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state["coef"] = float(state["coef"])

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.entropies is None:
            raise ValueError("adaptive_entropy regularizer needs current-policy entropies with grad")
        return -self.coef * x.entropies, {
            "regularizer/entropy": scalar(masked_mean(x.entropies.detach(), x.mask)),
            "regularizer/entropy_coef": scalar(self.coef),
        }


@register("regularizer", "kl_cov")
@dataclass(frozen=True)
class KLCov:
    """KL-Cov (Cui et al., arXiv 2505.22617): a |log-ratio| penalty on the highest-covariance tokens.

    Over the N valid tokens of the micro-batch, Cov_i = (log π_i − mean log π)(A_i − mean A);
    the top k = max(1, ⌊ratio·N⌋) tokens by Cov get the term β·|log π_θ − log π_old|, all others 0.
    With the ``policy_gradient`` surrogate this gives the paper's ℓ = −Aρ + β|log ρ| on the
    selected tokens and ℓ = −Aρ elsewhere: KL-Cov uses **no PPO clipping**.

    Source: PRIME-RL/Entropy-Mechanism-of-RL@8850579 verl/trainer/ppo/core_algos.py
    ``compute_policy_loss_kl_cov`` (= verl's).
    Defaults: ratio = 2e-3 (7B; 2e-4 for 32B), β = 1.
    Pitfall: ``ratio`` is a **fraction**. The official scripts' ``k_percent`` is a percentage
    (0.2 means 0.2 % = 2e-3); verl's ``kl_cov_ratio`` is a fraction (default 2e-4); verl's
    actor.yaml ``ppo_kl_coef: 0.1`` differs from the paper's β = 1.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    ratio: float = 2e-3
    coef: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"kl_cov ratio is a fraction in (0, 1] (2e-3 = 0.2 %), got {self.ratio}")

    def select(self, x: LossInputs) -> Tensor:  # [B, T] float, 1 on the top-k tokens by covariance
        valid = x.mask.bool()
        cov = token_covariance(x)[valid]  # [N]
        sel = torch.zeros_like(x.mask)
        if cov.numel() == 0:
            return sel
        k = max(1, int(cov.numel() * self.ratio))
        picked = torch.zeros_like(cov)
        picked[torch.topk(cov, k).indices] = 1.0
        sel[valid] = picked.to(sel.dtype)
        return sel

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        sel = self.select(x)
        abs_kl = (x.logprobs - x.old_logprobs).abs()  # [B, T]
        n_sel = sel.sum().clamp(min=1)
        return self.coef * abs_kl * sel, {
            "regularizer/kl_cov_frac": scalar(sel.sum() / x.mask.sum().clamp(min=1)),
            "regularizer/kl_cov_abs_kl": scalar((abs_kl.detach() * sel).sum() / n_sel),
        }
