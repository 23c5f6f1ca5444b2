"""Token weights of the T2 seeds: D³S token-level down-sampling, the CAPO curvature mask and
ARES high-window-entropy tokens (the ``ares_tokens`` variant).
``w(x: LossInputs) -> (weights [B, T] ≥ 0, metrics)``, chosen within the micro-batch the loss is
computed on (as ``forking_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, scalar, token_stat
from unipo.parts.registry import register
from unipo.parts.selection_t2 import linear_schedule


def _entropies(x: LossInputs, name: str) -> Tensor:  # [B, T], no grad
    ent = x.entropies if x.entropies is not None else x.old_entropies
    if ent is None:
        raise ValueError(f"{name} needs token entropies (LossInputs.entropies or old_entropies)")
    return ent.detach().float()


def top_fraction_weights(
    score: Tensor, mask: Tensor, frac: float, denominator: str
) -> tuple[Tensor, int, int]:
    """Weights [B, T]: 1 (or N/k for "selected") on the top k = ⌈frac·N⌉ valid tokens by ``score``.

    Returns (weights, k, N). "selected" makes token_mean average over the kept tokens only.
    """
    valid = mask.bool()
    w = torch.zeros_like(mask)
    n = int(valid.sum())
    if n == 0:
        return w, 0, 0
    k = max(1, math.ceil(n * frac - 1e-9))
    picked = torch.zeros(n, device=mask.device, dtype=mask.dtype)
    picked[torch.topk(score[valid], k).indices] = 1.0
    w[valid] = picked * (n / k if denominator == "selected" else 1.0)
    return w, k, n


@register("token_weight", "d3s_tokens")
@dataclass(frozen=True)
class D3STokens:
    """D³S token-level down-sampling (Learning More with Less, arXiv 2509.22115).

    Keep the top ⌈f·N⌉ of the micro-batch's N valid tokens by |A_t|·H_t (uncertain *and*
    impactful tokens), f scheduled linearly from ``keep_start`` to ``keep_end`` over
    ``schedule_steps`` steps (``x.step``). ``denominator`` as ``forking_tokens``: "selected"
    averages over the kept tokens. H: current entropy (else the rollout's), detached.
    UNVERIFIED: the score is the abstract's ("prioritizes ... tokens across groups": the paper
    may rank the whole batch's tokens; here the micro-batch's, as verl computes such top-k); the
    schedule (0.5 → 1.0 over 100 steps) and the denominator are this library's choices.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    keep_start: float = 0.5
    keep_end: float = 1.0
    schedule_steps: int = 100
    denominator: Literal["all", "selected"] = "selected"

    def __post_init__(self) -> None:
        if not (0 < self.keep_start <= 1 and 0 < self.keep_end <= 1) or self.denominator not in (
            "all",
            "selected",
        ):
            raise ValueError(
                f"d3s_tokens needs keep fractions in (0, 1] and denominator all|selected, got {self}"
            )

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        frac = linear_schedule(self.keep_start, self.keep_end, self.schedule_steps, x.step)
        score = x.advantages.detach().abs() * _entropies(x, "d3s_tokens")  # [B, T]
        w, k, n = top_fraction_weights(score, x.mask, frac, self.denominator)
        return w, {"token_weight/d3s_keep_frac": scalar(k / max(n, 1))}


@register("token_weight", "capo")
@dataclass(frozen=True)
class CAPOMask:
    """Curvature-aware token masking after CAPO (Melo, Abate & Gal, "Stabilizing Policy Gradients
    for Sample-Efficient RL in LLM Reasoning", arXiv 2510.00819).

        κ_t = A_t²·gᵀF g,   g = e_{o_t} − π_θ(·|s_t),   F = diag(π) − ππᵀ   (statistic ``logit_fisher_self``)

    κ_t is the second-order change of π_θ(·|s_t), in the last layer's logit space, that the
    token's own policy-gradient step would cause. The k = ⌊ratio·N⌋ valid tokens of the
    micro-batch with the largest κ (and κ > ``threshold``) get weight 0; the rest 1.
    What was verified: the abstract (a tractable curvature model, masking of samples that make
    updates unstable, < 8 % of tokens rejected) and a third-party summary ("last-layer
    curvature model", "local trust region"). The paper's exact criterion (it models the whole
    batch's update and its interactions) could not be retrieved: UNVERIFIED. This is a
    per-token, interaction-free proxy of it; ratio = 0.05 is this library's default.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    ratio: float = 0.05
    threshold: float = 0.0

    token_stats = ("logit_fisher_self",)

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError(f"capo ratio is a fraction in [0, 1), got {self.ratio}")

    def curvature(self, x: LossInputs) -> Tensor:  # [B, T], no grad
        fisher = token_stat(x.stats, "logit_fisher_self", "capo").detach()
        return x.advantages.detach() ** 2 * fisher * x.mask

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        kappa = self.curvature(x)
        valid = x.mask.bool()
        w = torch.ones_like(x.mask)
        n = int(valid.sum())
        k = int(n * self.ratio)
        if k > 0:
            idx = valid.nonzero()
            vals, top = torch.topk(kappa[valid], k)
            top = top[vals > self.threshold]
            w[idx[top, 0], idx[top, 1]] = 0.0
        rejected = float((w[valid] == 0).sum())
        return w, {
            "token_weight/capo_reject_frac": scalar(rejected / max(n, 1)),
            "token_weight/capo_curvature_max": scalar(kappa.max() if n else 0.0),
        }


def window_entropy(ent: Tensor, mask: Tensor, window: int) -> Tensor:
    """ARES window entropy [B, T]: W_t = mean(H_{t+1..t+w}) while a full window follows t; the
    positions without one get the mean of the row's full windows (the token's own H when there
    is none). Completion tokens are contiguous from column 0 (right padding)."""
    b, t = ent.shape
    lengths = mask.sum(1).long()  # [B]
    cs = torch.cat([ent.new_zeros(b, 1), torch.cumsum(ent * mask, dim=1)], dim=1)  # [B, T+1]
    pos = torch.arange(t, device=ent.device)
    hi = (pos + 1 + window).clamp(max=t)
    full = (pos[None, :] + window) <= (lengths[:, None] - 1)  # [B, T] a full window follows
    w = (cs[:, hi] - cs[:, pos + 1]) / window  # [B, T], valid where ``full``
    n_full = full.sum(1)
    mean_full = (w * full).sum(1) / n_full.clamp(min=1)  # [B]
    tail = torch.where(n_full > 0, mean_full, ent[:, 0])  # [B]
    return torch.where(full, w, tail[:, None]) * mask


@register("token_weight", "high_window_entropy")
@dataclass(frozen=True)
class HighWindowEntropy:
    """ARES high-window-entropy (HWE) tokens (arXiv 2510.08457).

    W_t = mean entropy of the ``window`` tokens that follow t (``window_entropy``); HWE_t =
    W_t ≥ the ``quantile`` of W over the same response. Weight 1 on HWE tokens, ``floor``
    elsewhere (0: only HWE tokens are updated, as forking tokens with a smoothed entropy).
    Source: shawn0728/ARES vllm_rollout_spmd.py ``get_window_average_entropy_percentile_
    threshold_list`` (window of the *following* tokens, tail filled with the mean, per-sample
    95th percentile; window 4 from ``compute_reasoning_token_window_entropy``). ARES itself counts
    HWE triggers for a difficulty-aware entropy reward and a per-bucket dynamic KL (the ``ares``
    preset: ``unipo.parts.ares_t2``); using HWE as a token weight is this library's composition,
    kept as the ``ares_tokens`` preset.
    """

    window: int = 4
    quantile: float = 0.95
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 <= self.quantile <= 1 or self.floor < 0:
            raise ValueError(
                f"high_window_entropy needs window ≥ 1, quantile in [0, 1], floor ≥ 0, got {self}"
            )

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ent = _entropies(x, "high_window_entropy")
        valid = x.mask.bool()
        wnd = window_entropy(ent, x.mask, self.window)
        q = torch.nanquantile(wnd.masked_fill(~valid, math.nan), self.quantile, dim=1, keepdim=True)  # [B, 1]
        hwe = valid & (wnd >= q)
        w = torch.where(hwe, torch.ones_like(x.mask), torch.full_like(x.mask, self.floor)) * x.mask
        return w, {"token_weight/hwe_frac": scalar(hwe.sum() / valid.sum().clamp(min=1))}
