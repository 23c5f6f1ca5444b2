"""Entropy-modulated advantages of the T2 seeds: EMPG and ETTRL's entropy advantage reshaping.

Both read π_old's per-token entropies ``batch.entropies`` [B, T], which the old-logprob pass fills
before the advantage because the parts set ``needs_old_logprobs``. Both start from GRPO's
group-normalized outcome advantage (``group_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm, masked_whiten
from unipo.parts.base import Metrics, group_stats, masked_mean, scalar
from unipo.parts.registry import register


def old_entropies(batch: RolloutBatch, part: str) -> Tensor:  # [B, T] float
    if batch.entropies is None:
        raise ValueError(
            f"{part} needs batch.entropies (π_old's token entropies, filled by the old-logprob pass "
            "because the part sets needs_old_logprobs)"
        )
    return batch.entropies.float() * batch.completion_mask.float()


@register("advantage", "empg")
@dataclass(frozen=True)
class EMPG:
    """EMPG: entropy-modulated policy gradients (Wang et al., "Harnessing Uncertainty", arXiv 2509.09265).

    Each step's entropy H_t is min-max normalized over the batch's valid steps,
    H̃_t = (H_t − min H)/(max H − min H + ε); confident steps are amplified and uncertain ones damped
    by a self-calibrating scale whose batch mean is 1, and a step leading into a confident next
    step gets a future-clarity bonus:

        g_t = exp(−k·H̃_t) / mean_batch exp(−k·H̃)        f_t = exp(−k'·H̃_{t+1})  (0 at the last step)
        A_mod,t = g_t·A + ζ·f_t                          A_final = whiten(A_mod) over the batch

    with A the response's GRPO advantage and whiten = (x − mean)/sqrt(var + 1e-8) over the valid
    tokens (``masked_whiten``). Source: arXiv 2509.09265 abstract (self-calibrating gradient
    scaling by step uncertainty, a future-clarity bonus); FORMULAS-rlvr §13 (the formulas above).
    Deviations: a step is one token here (the paper's steps are an agent's turns, their entropy the
    turn's mean token entropy); k = k' = 1 and ζ = 0.1 are UNVERIFIED, as is the final
    normalization's form.
    """

    k: float = 1.0
    k_future: float = 1.0
    zeta: float = 0.1
    scale_by_std: bool = True
    eps: float = 1e-6

    needs_old_logprobs = True

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        mask = batch.completion_mask.float()  # [B, T]
        ent = old_entropies(batch, "empg")  # [B, T]
        valid = mask.bool()
        if not valid.any():
            return adv, metrics
        h_min, h_max = ent[valid].min(), ent[valid].max()
        h_norm = (ent - h_min) / (h_max - h_min + self.eps) * mask  # [B, T] in [0, 1)
        e = torch.exp(-self.k * h_norm)
        g = e / masked_mean(e, mask)  # [B, T], batch mean 1
        nxt = torch.zeros_like(h_norm)
        nxt[:, :-1] = torch.exp(-self.k_future * h_norm[:, 1:]) * mask[:, 1:]  # 0 when t+1 is padding
        modulated = (g * adv + self.zeta * nxt) * mask
        out = masked_whiten(modulated, mask)
        metrics.update(
            {
                "advantage/empg_scale_min": scalar(g[valid].min()),
                "advantage/empg_scale_max": scalar(g[valid].max()),
                "advantage/empg_bonus_mean": scalar(masked_mean(self.zeta * nxt, mask)),
                "advantage/abs_mean": scalar(masked_mean(out.abs(), mask)),
            }
        )
        return out, metrics


@register("advantage", "ettrl_ear")
@dataclass(frozen=True)
class EntropyAdvantageReshaping:
    """ETTRL's entropy-based advantage reshaping, EAR (Liu et al., arXiv 2508.11356).

    Against the overconfidence that early pseudo-label errors breed, a response's advantage is
    reshaped by its entropy relative to its group: with H_i the mean token entropy of π_old over
    o_i and z_i its group z-score (unbiased std; 0 in a constant or one-row group),

        w_i = clamp(1 + α·sign(A_i)·z_i, w_min, w_max)          Â_i = w_i·A_i

    so a correct-but-uncertain response is reinforced more and a confident wrong one is pushed
    down harder, while confident correct responses and uncertain wrong ones move less. A_i is
    GRPO's advantage. Source: arXiv 2508.11356 abstract (entropy-based advantage reshaping that
    balances exploration and exploitation in test-time RL). Deviations (neither the paper body nor
    code could be retrieved): the reshaping rule, α = 0.5 and the clamp [0.5, 1.5] are this
    library's reading, UNVERIFIED; rewards are the task's (ETTRL's are majority-vote pseudo-labels
    and its rollouts come from an entropy-fork tree, ETMR: the ``ettrl`` preset has both).

    ``rule="relative"`` is the form two survey notes of the paper give for its Adv-Res (both read
    2026-04; FORMULAS-preference.md §ETTRL): with H̄ the group mean of H_i,

        Y_i = clamp(1 + (H̄ − H_i)/H̄, w_min, w_max)          Â_i = Y_i·A_i

    so every confident (low-entropy) response's advantage grows and every uncertain one's shrinks,
    whatever its sign (Y_i = 1 when H̄ = 0). The formula's Y is ≤ 2 and < 0 for H_i > 2H̄ (a flipped
    advantage); the ``ettrl`` preset clamps it to [0, 2].

    Verification tried (this session) and failed to reach the paper's body or code: the stored pages
    corpus holds arxiv.org/html/2508.11356v1 and chatpaper.com/paper/180862 only as their opening
    (title, authors, abstract); the file index has no text of the paper (exact-string look-ups of
    "Entropy-based Advantage Reshaping", "Tree Majority Rollout", "Adv-Clip", "ETMR" find only the
    abstract and three secondary notes, no code), and no repository named like ETTRL or ETMR is
    stored. The secondary notes agree with ``rule="relative"`` (Y_i = 1 + (avg H − H_i)/avg H with H_i
    the response's mean token entropy, Â_{i,t} = Y_i·Â_{i,t}; one says the average is the group's) and
    add, unverified, an alternative Adv-Clip (clip Â to [−β, β], β = 2); none mentions a clamp of Y_i.
    """

    alpha: float = 0.5
    w_min: float = 0.5
    w_max: float = 1.5
    scale_by_std: bool = True
    eps: float = 1e-6
    rule: str = "zscore"

    needs_old_logprobs = True

    def __post_init__(self) -> None:
        if not 0 <= self.w_min <= 1 <= self.w_max:
            raise ValueError(
                f"ettrl_ear needs 0 ≤ w_min ≤ 1 ≤ w_max, got w_min={self.w_min}, w_max={self.w_max}"
            )
        if self.rule not in ("zscore", "relative"):
            raise ValueError(f"ettrl_ear rule must be 'zscore' or 'relative', got {self.rule!r}")

    def weights(self, batch: RolloutBatch, adv: Tensor) -> Tensor:  # [B]
        mask = batch.completion_mask.float()
        h = old_entropies(batch, "ettrl_ear").sum(1) / mask.sum(1).clamp(min=1)  # [B]
        mean, std, _ = group_stats(h, batch.group_ids.to(h.device), unbiased=True)
        if self.rule == "relative":  # Y = 1 + (H̄ − H)/H̄
            y = torch.where(mean > 0, 1 + (mean - h) / mean.clamp(min=1e-12), torch.ones_like(h))
            return y.clamp(self.w_min, self.w_max)
        z = torch.where(std > 0, (h - mean) / (std + self.eps), torch.zeros_like(h))
        return (1 + self.alpha * torch.sign(adv) * z).clamp(self.w_min, self.w_max)

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        mask = batch.completion_mask.float()
        seq_adv = (adv * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B] the row's A
        w = self.weights(batch, seq_adv)  # [B]
        out = adv * w[:, None].to(adv.dtype)
        metrics.update(
            {
                "advantage/ear_weight_mean": scalar(w.mean() if w.numel() else 0.0),
                "advantage/abs_mean": scalar(masked_mean(out.abs(), mask)),
            }
        )
        return out, metrics
