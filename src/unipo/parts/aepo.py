"""AEPO: Arbitrary-Entropy Policy Optimization (arXiv 2510.08141), an entropy-control method of the
T2 seeds (not Agentic Entropy-Balanced PO, which shares the acronym).

One part, the ``aepo`` advantage: it asks for a second rollout at an entropy-regulated temperature
(``extra_rollout``, see ``unipo.parts.base``), builds the trained batch from it and the main one
(``merge``), and gives the kept extra rows A = 1 (a one-sided REINFORCE term) beside GRPO's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unipo.batch import EXTRA_ROW_KEY, RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.base import ExtraRollout, Metrics, scalar
from unipo.parts.registry import register


@register("advantage", "aepo")
@dataclass(frozen=True)
class AEPOAdvantage:
    """AEPO: Arbitrary-Entropy Policy Optimization (arXiv 2510.08141; not Agentic Entropy-Balanced
    PO, which shares the acronym): GRPO on the batch sampled at the configured temperature (T = 1),
    plus a one-sided REINFORCE term on samples of a second rollout at an entropy-regulated T.

    Each step, as 597358816/AEPO@b353a05 verl/trainer/ray_trainer.py:RayPPOTrainer.fit
    (``algorithm == "AEPO"``) does it:

    1. H = the previous step's policy entropy (0 before the first). T = ``t_high`` (1.2) if
       H ≤ ``entropy_base`` (0.5), else ``t_low`` (0.8).
    2. ``extra_rollout``: the first ⌊``fraction``·P⌋ = ⌊P/4⌋ of the step's prompts, G samples each
       at T (``gen_batch_bak[:len // 4]``, ``meta_info["n"] = rollout.n``), scored.
    3. ``merge``: GRPO advantages within those extra groups; the extra rows with A > ``threshold``
       (0.05: the correct answers of mixed groups), in row order, are candidates
       (``_select_by_advantage``); n = min(``sample_num`` = 60, #candidates), halved when H > H_base;
       the first n replace the first n rows of the main batch (``concat([controller[:n],
       batch[n:]])``), which keeps its size.
    4. ``__call__``: GRPO (``group_norm``) on the main rows, A = 1 on every token of the extra rows
       (``torch.ones_like(advantages)``). Both go through the same surrogate and aggregate, the
       normal GRPO loss: the REINFORCE term's weight α is the replacement count.

    Deviations: H is ``policy/entropy`` (the update's mean full-vocabulary entropy of π_θ), the code's
    ``actor/entropy_loss`` is −mean log π of the sampled tokens (its one-sample estimate); at least
    one prompt is resampled (the code's ⌊P/4⌋ is 0 below 4 prompts); the GRPO advantages of a main
    group that the replacement cuts (n not a multiple of G) are computed over its remaining rows
    (the code computes them before the cut). Stateful: the last entropy is saved by ``state_dict()``.
    """

    scale_by_std: bool = True
    eps: float = 1e-6
    threshold: float = 0.05
    sample_num: int = 60
    entropy_base: float = 0.5
    t_high: float = 1.2
    t_low: float = 0.8
    fraction: float = 0.25
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.sample_num < 0:
            raise ValueError(f"aepo sample_num must be ≥ 0, got {self.sample_num}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"aepo fraction must be in (0, 1], got {self.fraction}")
        self._state["entropy"] = 0.0

    @property
    def entropy(self) -> float:
        return self._state["entropy"]

    def _high(self, metrics: dict[str, Any]) -> bool:  # H > H_base, H from the previous step
        return float(metrics.get("policy/entropy", self.entropy)) > self.entropy_base

    def extra_rollout(self, metrics: dict[str, Any]) -> ExtraRollout:
        high = self._high(metrics)
        return ExtraRollout(
            fraction=self.fraction,
            temperature=self.t_low if high else self.t_high,
            merge=functools.partial(self.merge, high=high),
        )

    def merge(self, main: RolloutBatch, extra: RolloutBatch, *, high: bool) -> tuple[RolloutBatch, Metrics]:
        """The first n extra rows with GRPO A > threshold, then the main rows from the n-th on."""
        if extra.size:
            adv, _ = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(extra)  # [E, T]
            mask = extra.completion_mask.float()
            seq = (adv * mask).sum(1) / mask.sum(1).clamp(min=1)  # [E]
            cand = (seq > self.threshold).nonzero(as_tuple=True)[0]  # [K] row order
        else:
            cand = torch.zeros(0, dtype=torch.long)
        n = min(self.sample_num, int(cand.numel()))
        n = n // 2 if high else n
        rest = main.select(torch.arange(min(n, main.size), main.size))
        kept = extra.select(cand[:n])
        out = RolloutBatch.concat([b for b in (kept, rest) if b.size] or [rest])
        return out, {
            "aepo/extra_positive": float(cand.numel()),
            "aepo/reinforce_rows": float(n),
            "aepo/replaced_rows": float(main.size - rest.size),
        }

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if "policy/entropy" in metrics:
            self._state["entropy"] = float(metrics["policy/entropy"])

    def state_dict(self) -> dict[str, Any]:
        return {"entropy": self.entropy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state["entropy"] = float(state["entropy"])

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        extra = batch.flags(EXTRA_ROW_KEY).to(adv.device)  # [B] the REINFORCE rows
        if extra.any():
            adv = torch.where(extra[:, None], batch.completion_mask.to(adv.dtype), adv)
        metrics["advantage/aepo_reinforce_frac"] = scalar(extra.float().mean())
        return adv, metrics
