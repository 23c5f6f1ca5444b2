"""Pairwise surrogates: P3O, a clipped policy gradient on the *difference* of two responses.

``s(x: LossInputs) -> (per-token loss [B, T], metrics)`` like every surrogate, but the loss of a
row depends on the other rows of its group (its pair partners), so the part declares
``micro_batch_statistics``: the update then keeps micro-batches in row order, and with
``optim.shared_prompt`` (the default) whole groups stay together. ``optim.micro_batch_size`` must
be a multiple of ``rollout.group_size`` so that no group is cut between micro-batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, group_index, scalar
from unipo.parts.registry import part_name, register

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm


def _pairs(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(pairs [B, B] bool: i < j in one group, the 1/(n_g − 1) weight of each row's pairs [B])."""
    idx, _ = group_index(group_ids)
    same = idx[:, None] == idx[None, :]  # [B, B]
    upper = torch.ones_like(same).triu(diagonal=1)
    size = same.sum(1).to(torch.float32)  # [B] rows of the group in this micro-batch
    return same & upper, 1.0 / (size - 1).clamp(min=1)


@register("surrogate", "p3o")
@dataclass(frozen=True)
class P3OClip:
    """Pairwise PPO (P3O; Wu, Zhu, Zhang, Wen, Ramchandran, Jiao 2023, arXiv:2310.00212), the
    authors' trlx loss. For two responses y_a, y_b of one prompt, sampled from π_old:

        ρ(y) = Σ_t log π_θ(y_t) − log π_ref(y_t)          Δ = ρ(y_a) − ρ(y_b)   (Δ_old: at π_old)
        q = sg[ (A_a − A_b)/2 − β·Δ ]                    KL-regularized reward difference
        w = sg[ clip( π_θ(y_a)π_θ(y_b) / (π_old(y_a)π_old(y_b)), 1/c, c ) ]   the pair's IS weight
        joint:  L = max( −q·w·Δ,  −q·w·clip(Δ, Δ_old − ε, Δ_old + ε) )

    Δ − Δ_old = log[π_θ(y_a)π_old(y_b) / (π_old(y_a)π_θ(y_b))] is the log of P3O's *joint* ratio,
    so ``mode="joint"`` clips it (the paper's V2); ``mode="token"`` is the code's
    ``clip_tokenwise``: per token, max(−q·w·log π_θ(y_a,t), −q·w·clip(log π_θ(y_a,t), log π_old ± ε))
    and the mirror term with +q·w for y_b. With the ``rloo`` advantage at G = 2, A_a = r_a − r_b, so
    (A_a − A_b)/2 = r_a − r_b; the gradient is the pairwise policy gradient
    (r_a − r_b)·∇(log π(y_a) − log π(y_b)) with the KL-regularized reward, importance-weighted.

    Normalization (the code's ``avg_tokenwise``): L_total = Σ_pairs L / (tokens of the batch); each
    pair's L is spread over its two responses' tokens, so ``token_mean`` reproduces it (``check``).
    A group of G > 2 rows gives every pair i < j, each weighted 1/(G − 1), so every row counts
    once, as at G = 2 (ours; the authors sample exactly two responses per prompt). A row alone in
    its group contributes nothing (``p3o/unpaired_rows``).

    Source: thwu1/trlx@a87c31e (first author's fork) trlx/trainer/accelerate_p3o_trainer.py:
    AccelerateP3OTrainer.p3o_loss and make_experience; examples/hh/p3o_hh.py (β = ``kl_coef`` =
    0.05, ε = ``cliprange`` = 0.2, c = ``cliprange_ratio`` = 10, 4 ``p3o_epochs``).
    """

    eps: float = 0.2
    ratio_clip: float = 10.0
    kl_coef: float = 0.05
    mode: Literal["joint", "token"] = "joint"

    micro_batch_statistics = True  # a row's loss reads its pair partners

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"p3o eps must be ≥ 0, got {self.eps}")
        if self.ratio_clip < 1:
            raise ValueError(
                f"p3o ratio_clip must be ≥ 1 (the weight is clipped to [1/c, c]), got {self.ratio_clip}"
            )
        if self.mode not in ("joint", "token"):
            raise ValueError(f"p3o mode must be 'joint' or 'token', got {self.mode!r}")

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef != 0

    def check(self, algorithm: Algorithm) -> str | None:
        agg = part_name(algorithm.aggregate)
        if agg != "token_mean":
            return (
                f"p3o spreads each pair's loss over the pair's tokens so that token_mean gives "
                f"Σ_pairs L / #tokens (the authors' avg_tokenwise); {agg} would reweight the pairs"
            )
        return None

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        m, lp, old = x.mask, x.logprobs, x.old_logprobs  # [B, T] each
        if x.ref_logprobs is None and self.kl_coef != 0:
            raise ValueError("p3o with kl_coef ≠ 0 needs LossInputs.ref_logprobs (log π_ref)")
        ref = x.ref_logprobs if x.ref_logprobs is not None else torch.zeros_like(old)
        if x.group_ids is None:
            raise ValueError("p3o pairs the rows of a group: LossInputs.group_ids is None")
        rho = ((lp - ref) * m).sum(1)  # [B] ρ(y), with grad
        rho_old = ((old - ref) * m).sum(1)  # [B]
        step = (x.log_ratio.detach() * m).sum(1)  # [B] log π_θ(y) − log π_old(y)
        adv = (x.advantages * m).sum(1) / m.sum(1).clamp(min=1)  # [B] the row's advantage
        pairs, inv = _pairs(x.group_ids)  # [B, B], [B]
        pairs_f = pairs.to(lp.dtype)
        d_adv = (adv[:, None] - adv[None, :]) / 2  # [B, B] (A_a − A_b)/2
        q = d_adv - self.kl_coef * (rho[:, None] - rho[None, :]).detach()  # [B, B]
        bound = math.log(self.ratio_clip)
        w = (step[:, None] + step[None, :]).clamp(-bound, bound).exp()  # [B, B], no grad
        coef = -q * w  # [B, B] the weight of ∇(log π(y_a) − log π(y_b))
        if self.mode == "joint":
            d = rho[:, None] - rho[None, :]  # [B, B] Δ, with grad
            d_old = (rho_old[:, None] - rho_old[None, :]).detach()
            d_clip = torch.minimum(torch.maximum(d, d_old - self.eps), d_old + self.eps)
            l1, l2 = coef * d, coef * d_clip
            pair_loss = torch.maximum(l1, l2) * pairs_f * inv[:, None]  # [B, B]
            n = m.sum(1)  # [B] tokens
            share = pair_loss / (n[:, None] + n[None, :]).clamp(min=1)  # [B, B] per token of the pair
            loss = (share.sum(1) + share.sum(0))[:, None] * m  # [B, T]
            clipped = ((l2 > l1) & pairs).float()
        else:
            signed = coef.detach() * pairs_f * inv[:, None]  # [B, B] +coef on y_a (row), −coef on y_b (col)
            pos = signed.clamp(min=0).sum(1) + (-signed).clamp(min=0).sum(0)  # [B] positive coefficients
            neg = signed.clamp(max=0).sum(1) + (-signed).clamp(max=0).sum(0)  # [B] negative ones
            hi = torch.maximum(lp, old - self.eps)  # [B, T] max(lp, clip(lp, old ± ε))
            lo = torch.minimum(lp, old + self.eps)  # [B, T] min(lp, clip(lp, old ± ε))
            loss = (pos[:, None] * hi + neg[:, None] * lo) * m  # [B, T]
            outside = ((lp < old - self.eps) | (lp > old + self.eps)).float()  # [B, T]
            clipped = (outside * m).sum() / m.sum().clamp(min=1)
        n_pairs = pairs_f.sum().clamp(min=1)
        single = (pairs.sum(1) + pairs.sum(0)) == 0  # [B] rows without a partner
        return loss, {
            "p3o/clip_frac": scalar(clipped.sum() / n_pairs if self.mode == "joint" else clipped),
            "p3o/weight_mean": scalar((w * pairs_f).sum() / n_pairs),
            "p3o/q_abs_mean": scalar((q.abs() * pairs_f).sum() / n_pairs),
            "p3o/unpaired_rows": scalar(single.float().sum()),
        }
