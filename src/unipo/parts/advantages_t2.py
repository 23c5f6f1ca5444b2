"""Advantage estimators of the T2 seeds: HAPO's token-level group average.

``adv(batch) -> (advantages [B, T], metrics)``; the entropy-adaptive parts of HAPO (clipping,
advantage redistribution, rollout temperature) are the ``hapo_clip`` surrogate
(``unipo.parts.clipping_t2``), which reads these advantages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.base import Metrics, group_index, scalar
from unipo.parts.registry import register


@register("advantage", "token_group_average")
@dataclass(frozen=True)
class TokenGroupAverage:
    """HAPO Token Level Group Average (Liu et al., "From Uniform to Heterogeneous: Tailoring Policy
    Optimization to Every Token's Nature", arXiv 2509.16591).

    Every valid token of group g carries its response's reward r_i, and the baseline and scale
    are the mean and the population std over those tokens, so a response counts |o_i| times
    (the sequence length enters as in a token-mean loss):

        μ_g = Σ_i |o_i|·r_i / Σ_i |o_i|        σ_g² = Σ_i |o_i|·(r_i − μ_g)² / Σ_i |o_i|
        A_i = (r_i − μ_g) / (σ_g + ε)          (``scale_by_std=False``: A_i = r_i − μ_g)

    on every token of o_i. Smoothing: when some valid token of a group has |A| ≥
    ``fallback_abs`` (5), the whole group takes the GRPO advantage instead (``group_norm``:
    sequence-level mean, unbiased std, the same ε). A two-reward group with N₁ tokens at r = 1 and
    N₀ at r = 0 gets A = +√(N₀/N₁) and −√(N₁/N₀), so it falls back when one side has ≥ 25×
    the other's tokens.

    Source: starriver030515/HAPO@7671dde3e268779a949954ec75ed3edda45f7e0a
    verl/trainer/ppo/core_algos.py:compute_hapo_outcome_advantage (``adv_estimator=hapo`` in
    every recipe; ε = 1e-6, ``valid_vals.std(unbiased=False)``, threshold 5) and recipe/train.md;
    the paper's abstract ("normalizes advantages at token level, jointly accounting for
    sequence-length as in token-mean loss"). Deviations: the code also tests the padding
    positions, whose value is (0 − μ_g)/(σ_g + ε) (verl pads every response to the maximum
    length); that changes the outcome only for groups whose rewards all lie on one side of 0.
    ``repo_padding_check=True`` reproduces it for every group with a row that stopped before the
    limit (a row that hit it has no padding in verl). A lone row (group of size 1) gets A = 0,
    as ``group_norm`` (the code falls back to verl's GRPO there, which gives A = r).
    """

    scale_by_std: bool = True
    eps: float = 1e-6
    fallback_abs: float | None = 5.0
    repo_padding_check: bool = False

    def __post_init__(self) -> None:
        if self.eps < 0 or (self.fallback_abs is not None and self.fallback_abs <= 0):
            raise ValueError(
                f"token_group_average needs eps ≥ 0 and fallback_abs > 0 (or None), got eps={self.eps}, "
                f"fallback_abs={self.fallback_abs}"
            )

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        if batch.rewards is None:
            raise ValueError("token_group_average needs batch.rewards; compute rewards before advantages")
        mask = batch.completion_mask.float()  # [B, T]
        r = batch.rewards.double()  # [B]; float64: a constant group gives r − μ = 0 exactly
        lengths = mask.sum(1).double().to(r.device)  # [B] valid tokens per row
        idx, n = group_index(batch.group_ids.to(r.device))

        def per_group(values: Tensor) -> Tensor:  # [B] → [G] sums
            return torch.zeros(n, dtype=torch.float64, device=r.device).index_add_(0, idx, values.double())

        tokens = per_group(lengths).clamp(min=1)  # [G] valid tokens per group
        mean = per_group(lengths * r) / tokens  # [G] token-level mean reward
        std = (per_group(lengths * (r - mean[idx]) ** 2) / tokens).sqrt()  # [G] population std
        scale = std + self.eps if self.scale_by_std else torch.ones_like(std)
        count = per_group(torch.ones_like(r))  # [G] rows per group
        adv = (r - mean[idx]) / scale[idx] * (count[idx] > 1)  # [B]
        fallback = torch.zeros(n, dtype=torch.bool, device=r.device)  # [G]
        if self.fallback_abs is not None:
            big = (adv.abs() >= self.fallback_abs) & (lengths > 0)  # [B] a valid token over the bound
            fallback = per_group(big) > 0
            if self.repo_padding_check:  # verl's padding positions hold (0 − μ_g)/(σ_g + ε)
                padded = per_group(~batch.truncated.bool().to(r.device)) > 0  # [G] a row stopped early
                fallback |= padded & ((0 - mean) / scale).abs().ge(self.fallback_abs) & (count > 1)
        out = adv.float().to(mask.device)[:, None] * mask  # [B, T]
        if fallback.any():
            grpo, _ = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
            out = torch.where(fallback[idx].to(mask.device)[:, None], grpo, out)
        return out, {
            "advantage/hapo_fallback_frac": scalar(fallback.float().mean() if n else 0.0),
            "advantage/zero_std_frac": scalar((std == 0).float().mean() if n else 0.0),
            "advantage/abs_mean": scalar((out.abs() * mask).sum() / mask.sum().clamp(min=1)),
        }
