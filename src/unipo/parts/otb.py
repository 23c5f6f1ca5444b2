"""The optimal token baseline (OTB, arXiv 2602.07078): a per-token baseline for each prompt group,
weighted by how much gradient energy a path has accumulated up to the token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import token_rewards
from unipo.parts.base import Metrics, group_index, masked_mean, scalar
from unipo.parts.registry import register

STAT = "sum_pi_squared"  # unipo.train.token_stats: Σ_v π_old(v)² at each completion token


@register("advantage", "optimal_token_baseline")
@dataclass(frozen=True)
class OptimalTokenBaseline:
    """Optimal Token Baseline: A_{i,t} = G_{i,t} − B_t, with B_t the W-weighted mean return of the group.

        w_{i,j} = 1 − 2·π_old(o_{i,j}) + Σ_v π_old(v | s_{i,j})²       (= ‖e_{o_{i,j}} − π_old‖²)
        W_{i,t} = Σ_{j ≤ t} w_{i,j}                                       (realized energy)
        G_{i,t} = Σ_{s ≥ t} r_{i,s}                                       (return to go)
        B_t = Σ_{i∈G} G_{i,t}·W_{i,t}·m_{i,t} / (Σ_{i∈G} W_{i,t}·m_{i,t} + ε)

    B_t minimizes the variance of Σ_t ∇log π·(G − B) under the logit-gradient proxy ‖∇log π‖² ≈ W.
    With ``handle_zero_tail``, the one longest row of a group (when strictly longer than the
    second) gets B = 0 past the second-longest length, where it has no company. Rewards are the
    sequence reward on the last valid token (``token_rewards``, no KL).

    Needs π_old's log-probs and its per-token Σπ² (``old_token_stats``) *before* the advantage, in
    ``batch.old_logprobs`` / ``batch.old_stats["sum_pi_squared"]``. Source: verl-project/verl@1dda039
    verl/trainer/ppo/core_algos.py:compute_optimal_token_baseline_advantage (ε = 1e-8,
    ``handle_zero_tail=True``), docs/algo/otb.md. Deviations: a group of one row gets A = 0 (verl: A = G,
    no baseline); verl's rollout-IS rescaling of w (ρ̄²) is not carried (unipo has no rollout IS).
    """

    handle_zero_tail: bool = True
    eps: float = 1e-8

    needs_old_logprobs = True
    old_token_stats = (STAT,)

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        if batch.old_logprobs is None or STAT not in batch.old_stats:
            raise ValueError(
                "optimal_token_baseline needs batch.old_logprobs and batch.old_stats['sum_pi_squared'] "
                "([B, T], π_old's Σπ² per token) before the advantage: the old-logprob pass computes "
                "them for parts that set needs_old_logprobs / old_token_stats"
            )
        mask = batch.completion_mask.float()  # [B, T]
        returns = (token_rewards(batch) * mask).flip(-1).cumsum(-1).flip(-1)  # [B, T]
        old_lp = batch.old_logprobs.float().to(mask.device)
        w = 1 - 2 * torch.exp(old_lp) + batch.old_stats[STAT].float().to(mask.device)  # [B, T]
        energy = (w * mask).cumsum(dim=-1)  # [B, T] W_t
        baseline = torch.zeros_like(returns)  # [B, T]
        idx, n = group_index(batch.group_ids.to(mask.device))
        lone = torch.zeros(batch.size, dtype=torch.bool, device=mask.device)
        for g in range(n):
            rows = (idx == g).nonzero(as_tuple=True)[0]  # [N]
            if rows.numel() < 2:
                lone[rows] = True
                continue
            wm = energy[rows] * mask[rows]  # [N, T]
            b_t = (returns[rows] * wm).sum(0) / (wm.sum(0) + self.eps)  # [T]
            baseline[rows] = b_t
            if self.handle_zero_tail:
                lengths = mask[rows].sum(-1)  # [N]
                top = torch.sort(lengths).values
                longest, second = int(top[-1]), int(top[-2])
                at_max = (lengths == longest).nonzero(as_tuple=True)[0]
                if at_max.numel() == 1 and longest > second:
                    baseline[rows[at_max[0]], second:] = 0.0
        adv = (returns - baseline) * mask * (~lone)[:, None]  # [B, T]
        return adv, {
            "advantage/otb_energy_mean": scalar(masked_mean(energy, mask)),
            "advantage/abs_mean": scalar(masked_mean(adv.abs(), mask)),
        }
