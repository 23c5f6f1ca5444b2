"""Surrogate policy losses: ``s(x: LossInputs) -> (per-token loss [B, T], metrics)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar
from unipo.parts.registry import part_name, register

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm

SEQ_LOG_RATIO_MAX = 10.0  # GSPO: log s ≤ 10 before exp, as verl ``compute_policy_loss_gspo``


def _clip_metrics(ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float) -> Metrics:
    """Fractions of valid tokens where the lower / upper clip is active (the gradient is cut)."""
    return {
        "surrogate/clip_frac_low": scalar(masked_mean(((ratio < 1 - eps_low) & (adv < 0)).float(), mask)),
        "surrogate/clip_frac_high": scalar(masked_mean(((ratio > 1 + eps_high) & (adv > 0)).float(), mask)),
    }


@register("surrogate", "ppo_clip")
@dataclass(frozen=True)
class PPOClip:
    """PPO clipped surrogate with separate ε_low / ε_high (clip-higher, DAPO arXiv 2503.14476)
    and optional dual-clip c (arXiv 1912.09729).

        ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))
        if dual_clip c is set and A < 0:  ℓ = min(ℓ, −c·A)

    Source: verl ``compute_policy_loss_vanilla`` (volcengine/verl@b178a3c
    verl/trainer/ppo/core_algos.py). Defaults ε = 0.2 both sides and **no** dual clip, as the PPO
    paper and TRL's GRPO; verl's vanilla loss always dual-clips, with ``clip_ratio_c`` = 3.0
    unless a script sets it (10.0 in the DAPO-family scripts): pass ``dual_clip=3.0`` to match
    verl's default. Losses that verl registers separately (clip_cov, kl_cov, gspo, ...) and
    some forks' own losses (Entropy-Mechanism, Lp-Reg) never apply it, whatever
    ``clip_ratio_c`` says. ``clipped(x)`` is the [B, T] bool mask of tokens whose loss the clip
    replaced (verl's ``pg_losses2 > pg_losses1``), which Clip-Cov excludes from its candidates.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"ppo_clip eps_low/eps_high must be ≥ 0, got {self.eps_low}, {self.eps_high}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"ppo_clip dual_clip must be > 1 (or None), got {self.dual_clip}")

    def clipped(self, x: LossInputs) -> Tensor:  # [B, T] bool
        ratio, adv = x.ratio.detach(), x.advantages
        return (-adv * ratio.clamp(1 - self.eps_low, 1 + self.eps_high)) > (-adv * ratio)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ratio, adv = x.ratio, x.advantages  # [B, T]
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1 - self.eps_low, 1 + self.eps_high)
        loss = torch.maximum(unclipped, clipped)
        metrics = _clip_metrics(ratio.detach(), adv, x.mask, self.eps_low, self.eps_high)
        if self.dual_clip is not None:
            capped = torch.minimum(loss, -self.dual_clip * adv)
            metrics["surrogate/dual_clip_frac"] = scalar(
                masked_mean(((capped < loss) & (adv < 0)).float(), x.mask)
            )
            loss = torch.where(adv < 0, capped, loss)
        return loss, metrics


@register("surrogate", "policy_gradient")
@dataclass(frozen=True)
class PolicyGradient:
    """Plain (unclipped) policy gradient: ℓ = −A·ρ with ρ = exp(log π_θ − log π_old).

    On-policy (one update per rollout) ρ = 1 in value, and ∇ℓ = −A·ρ·∇log π_θ = −A·∇log π_θ:
    REINFORCE with the advantage as the baseline-corrected return ("Group-Relative REINFORCE
    Is Secretly an Off-Policy Algorithm", Trinity-RFT ``rec`` with ``clip_mode=none``). Off-policy
    (several updates per rollout) it is the unclipped importance-weighted gradient, which is
    also what KL-Cov (arXiv 2505.22617) uses: no PPO clipping.
    """

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        return -x.advantages * x.ratio, {}


def _check_seq_aggregate(name: str, algorithm: Algorithm) -> str | None:
    agg = part_name(algorithm.aggregate)
    if agg != "seq_mean_token_mean":
        return (
            f"{name} optimizes (1/G)·Σ_i of one clipped term per sequence, so it needs aggregate="
            f"seq_mean_token_mean; {agg} would weight each sequence by its token count "
            "(verl forces seq-mean-token-mean for GSPO)"
        )
    return None


def _seq_log_ratio(x: LossInputs) -> Tensor:  # [B] (1/|o_i|) Σ_t log ρ_{i,t}
    m = x.mask
    return (x.log_ratio * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


@register("surrogate", "gspo")
@dataclass(frozen=True)
class GSPO:
    """GSPO sequence-level clipped surrogate (Zheng et al., arXiv 2507.18071).

        s_i = (π_θ(o_i)/π_old(o_i))^{1/|o_i|} = exp((1/|o_i|) Σ_t (log π_θ − log π_old))
        ℓ_i = max(−A_i·s_i, −A_i·clip(s_i, 1−ε_low, 1+ε_high)),  the same on every token of o_i

    A_i is the token-mean of ``x.advantages`` over o_i (the GRPO advantage is constant per
    sequence). log s_i ≤ 10 as verl. Defaults ε = 3e-4 / 4e-4 (paper §5.1, verl
    examples/gspo_trainer). With seq_mean_token_mean the loss is −(1/G) Σ_i min(s_i A_i, ...).
    """

    eps_low: float = 3e-4
    eps_high: float = 4e-4

    def check(self, algorithm: Algorithm) -> str | None:
        return _check_seq_aggregate("gspo", algorithm)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        s = torch.exp(_seq_log_ratio(x).clamp(max=SEQ_LOG_RATIO_MAX))  # [B]
        adv = (x.advantages * x.mask).sum(dim=1) / x.mask.sum(dim=1).clamp(min=1)  # [B]
        loss = torch.maximum(-adv * s, -adv * s.clamp(1 - self.eps_low, 1 + self.eps_high))  # [B]
        loss = loss[:, None].expand_as(x.logprobs)  # [B, T]
        s_tok = s.detach()[:, None].expand_as(x.logprobs)
        adv_tok = adv[:, None].expand_as(x.logprobs)
        metrics = _clip_metrics(s_tok, adv_tok, x.mask, self.eps_low, self.eps_high)
        metrics["surrogate/seq_ratio_mean"] = scalar(s.detach().mean())
        return loss, metrics


@register("surrogate", "gspo_token")
@dataclass(frozen=True)
class GSPOToken:
    """GSPO-token (arXiv 2507.18071 §4.3): per-token advantages with the sequence ratio's value.

        s_{i,t} = sg[s_i]·π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]     (value s_i, gradient s_i·∇log π_θ)
        ℓ_{i,t} = max(−A_{i,t}·s_{i,t}, −A_{i,t}·clip(s_{i,t}, 1−ε_low, 1+ε_high))

    Equal to ``gspo`` in value and gradient when A is constant per sequence. Source: verl
    ``compute_policy_loss_gspo`` (which is this token variant; log s ≤ 10).
    """

    eps_low: float = 3e-4
    eps_high: float = 4e-4

    def check(self, algorithm: Algorithm) -> str | None:
        return _check_seq_aggregate("gspo_token", algorithm)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        log_s = x.logprobs - x.logprobs.detach() + _seq_log_ratio(x).detach()[:, None]  # [B, T]
        s = torch.exp(log_s.clamp(max=SEQ_LOG_RATIO_MAX))
        adv = x.advantages
        loss = torch.maximum(-adv * s, -adv * s.clamp(1 - self.eps_low, 1 + self.eps_high))
        return loss, _clip_metrics(s.detach(), adv, x.mask, self.eps_low, self.eps_high)
