"""Advantage estimators: ``adv(batch) -> (advantages [B, T], metrics)``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.base import Metrics, broadcast_to_tokens, group_stats, scalar
from unipo.parts.registry import register


def _rewards(batch: RolloutBatch) -> Tensor:
    if batch.rewards is None:
        raise ValueError("advantage needs batch.rewards; compute rewards before advantages")
    return batch.rewards.float()


@register("advantage", "group_norm")
@dataclass(frozen=True)
class GroupNorm:
    """GRPO group-normalized outcome advantage (DeepSeekMath, arXiv 2402.03300).

    A_i = (r_i − mean_G(r)) / (std_G(r) + ε), the same value on every token of o_i.

    Std convention: unbiased (N−1) ``torch.std`` with ε = 1e-6, as verl
    ``compute_grpo_outcome_advantage`` (TRL uses ε = 1e-4). ``scale_by_std=False`` gives
    Dr. GRPO's A_i = r_i − mean_G(r) (arXiv 2503.20783). A group of size 1 gets A = 0
    (verl instead gives A ≈ r; a lone sample has no baseline, so unipo gives it no signal).
    """

    scale_by_std: bool = True
    eps: float = 1e-6

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        mean, std, count = group_stats(r, batch.group_ids, unbiased=True)  # [B] each
        adv = r - mean
        if self.scale_by_std:
            adv = adv / (std + self.eps)
        adv = adv * (count > 1)
        zero_var = (std == 0).float()
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/zero_std_frac": scalar(zero_var.mean()),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }
