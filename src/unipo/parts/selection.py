"""Selections: ``sel(batch) -> (smaller or reweighted batch, metrics)``.

They run after rewards and before the advantage. A selection with ``refill = True`` asks the
trainer to keep generating groups until the batch is full again (DAPO dynamic sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.base import Metrics, group_index, scalar
from unipo.parts.registry import register


@register("selection", "drop_zero_variance")
@dataclass(frozen=True)
class DropZeroVariance:
    """DAPO dynamic sampling (arXiv 2503.14476): drop groups whose G scores are all equal.

    Keeps prompt q only if 0 < |{o_i correct}| < G, i.e. max_G(score) − min_G(score) > ``atol``.
    Such groups have zero GRPO advantage and only dilute the batch. ``refill = True``: the
    trainer generates more groups until the batch is full (verl ``filter_groups`` with
    ``max_num_gen_batches``). The score is ``batch.rewards`` by default; ``key`` names a
    per-item metadata entry instead (verl ``filter_groups.metric=acc`` filters on accuracy,
    before the overlong penalty is added).
    """

    atol: float = 0.0
    key: str | None = None

    refill = True

    def _scores(self, batch: RolloutBatch) -> Tensor:
        if self.key is None:
            if batch.rewards is None:
                raise ValueError("drop_zero_variance needs batch.rewards (or key= a metadata field)")
            return batch.rewards.float()
        if not batch.metadata or any(self.key not in m for m in batch.metadata):
            raise ValueError(
                f"drop_zero_variance key={self.key!r} must be present in every batch.metadata item"
            )
        return torch.tensor([float(m[self.key]) for m in batch.metadata], device=batch.group_ids.device)

    def keep_mask(self, batch: RolloutBatch) -> Tensor:  # [B] bool, True where the group has spread
        scores = self._scores(batch)  # [B]
        idx, n = group_index(batch.group_ids)
        hi = torch.full((n,), -torch.inf, device=scores.device).scatter_reduce(0, idx, scores, "amax")
        lo = torch.full((n,), torch.inf, device=scores.device).scatter_reduce(0, idx, scores, "amin")
        return ((hi - lo) > self.atol)[idx]

    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch, Metrics]:
        keep = self.keep_mask(batch)
        idx, n = group_index(batch.group_ids)
        kept_groups = int(torch.unique(idx[keep]).numel())
        return batch.select(keep), {
            "selection/kept_groups": scalar(float(kept_groups)),
            "selection/dropped_frac": scalar(1 - kept_groups / max(n, 1)),
        }
