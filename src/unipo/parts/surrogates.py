"""Surrogate policy losses: ``s(x: LossInputs) -> (per-token loss [B, T], metrics)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar
from unipo.parts.registry import register


@register("surrogate", "ppo_clip")
@dataclass(frozen=True)
class PPOClip:
    """PPO clipped surrogate with separate ε_low / ε_high (clip-higher, DAPO arXiv 2503.14476)
    and optional dual-clip c (arXiv 1912.09729).

        ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))
        if dual_clip c is set and A < 0:  ℓ = min(ℓ, −c·A)

    Source: verl ``compute_policy_loss_vanilla`` (core_algos.py). Defaults ε = 0.2 both sides.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"ppo_clip eps_low/eps_high must be ≥ 0, got {self.eps_low}, {self.eps_high}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"ppo_clip dual_clip must be > 1 (or None), got {self.dual_clip}")

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ratio, adv = x.ratio, x.advantages  # [B, T]
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1 - self.eps_low, 1 + self.eps_high)
        loss = torch.maximum(unclipped, clipped)
        metrics: Metrics = {
            "surrogate/clip_frac_low": scalar(masked_mean(((ratio < 1 - self.eps_low) & (adv < 0)).float(), x.mask)),
            "surrogate/clip_frac_high": scalar(
                masked_mean(((ratio > 1 + self.eps_high) & (adv > 0)).float(), x.mask)
            ),
        }
        if self.dual_clip is not None:
            capped = torch.minimum(loss, -self.dual_clip * adv)
            metrics["surrogate/dual_clip_frac"] = scalar(masked_mean(((capped < loss) & (adv < 0)).float(), x.mask))
            loss = torch.where(adv < 0, capped, loss)
        return loss, metrics
