"""Outcome advantages the peers (verl, TRL) carry beyond GRPO/RLOO: pass@k, OPO, GPG, GDPO.

``adv(batch) -> (advantages [B, T], metrics)``; each gives every token of a completion the same
value. Source: verl-project/verl@1dda039 verl/trainer/ppo/core_algos.py (``compute_<name>_outcome_
advantage``), and for GDPO also huggingface/trl@f2cd577 trl/trainer/grpo_trainer.py
(``multi_objective_aggregation="normalize_then_sum"``). As every unipo group estimator, a lone row
(group of size 1) gets A = 0 where verl gives it a mean-0 baseline (A = r): it has no baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import _rewards, masked_whiten
from unipo.parts.base import Metrics, broadcast_to_tokens, group_index, group_stats, scalar
from unipo.parts.registry import register

COMPONENTS_KEY = "reward_components"  # metadata: {name: value} per row when the reward set has several terms
WEIGHTS_KEY = "reward_weights"  # metadata: {name: weight} of those terms (train/collect.py)


def _per_group(values: Tensor, idx: Tensor, n: int) -> Tensor:  # [B] → [G] sums
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, idx, values)


@register("advantage", "grpo_passk")
@dataclass(frozen=True)
class PassKGroup:
    """Pass@k-optimized GRPO advantage (Chen et al., arXiv 2503.19595 as verl cites it): only the best
    response of a group learns, by how much it beats the runner-up.

        A_{i*} = (r_max − r_2nd) / (std_G(r) + ε)   for i* = argmax_G r (the first one on a tie)
        A_i = 0                                     for every other i

    (a tie for the maximum gives 0 whichever row is picked). ``scale_by_std=False`` drops the
    division (verl ``norm_adv_by_std_in_grpo``). Source: verl ``compute_grpo_passk_outcome_advantage``
    (unbiased ``torch.std``, ε = 1e-6). verl raises on a group of one row; here it gets A = 0.
    """

    scale_by_std: bool = True
    eps: float = 1e-6

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        _, std, _ = group_stats(r, batch.group_ids)  # [B]
        idx, n = group_index(batch.group_ids.to(r.device))
        adv = torch.zeros_like(r)
        for g in range(n):
            rows = (idx == g).nonzero(as_tuple=True)[0]  # [k] in batch order
            if rows.numel() < 2:
                continue
            top = torch.topk(r[rows], 2).values  # [2] r_max, r_2nd
            best = rows[int(torch.argmax(r[rows]))]  # the first maximum
            gap = top[0] - top[1]
            adv[best] = gap / (std[best] + self.eps) if self.scale_by_std else gap
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/passk_gap_mean": scalar(adv[adv != 0].mean() if (adv != 0).any() else 0.0),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }


@register("advantage", "opo")
@dataclass(frozen=True)
class OPO:
    """OPO, On-Policy RL with Optimal reward baseline (arXiv 2505.23585): the length-weighted group
    mean as the baseline, no std.

        b_G = Σ_{j∈G} |o_j|·r_j / Σ_{j∈G} |o_j|,     A_i = r_i − b_G

    Source: verl ``compute_opo_outcome_advantage``. (A group of one row: A = 0; verl A = r.)
    """

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        lengths = batch.completion_mask.float().sum(dim=1).to(r.device)  # [B]
        idx, n = group_index(batch.group_ids.to(r.device))
        count = _per_group(torch.ones_like(r), idx, n)  # [G]
        base = _per_group(lengths * r, idx, n) / _per_group(lengths, idx, n).clamp(min=1e-12)  # [G]
        adv = (r - base[idx]) * (count[idx] > 1)
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/opo_baseline_mean": scalar(base.mean() if n else 0.0),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }


@register("advantage", "gpg")
@dataclass(frozen=True)
class GPGAdvantage:
    """GPG's corrected advantage (Group Policy Gradient, arXiv 2504.02546): the group-centred reward
    rescaled by α to undo the dilution by groups that carry no signal.

        A_i = α·(r_i − mean_G(r))

    ``alpha="nonzero_rewards"``: α = B / max(#{i : r_i ≠ 0}, 1) over the batch (verl
    ``compute_gpg_outcome_advantage``, f_norm = 1). ``alpha="valid_groups"``: α = 1/(min(1, n_valid/n)
    + 1e-5) with n_valid the groups whose rewards differ (std > 1e-5) out of n, as the authors'
    AMAP-ML/GPG@e096da8 R1-V/src/r1-v/src/open_r1/trainer/grpo_trainer.py (``loss / (inverse_alpha +
    1e-5)``). ``alpha="none"``: α = 1.
    """

    alpha: Literal["nonzero_rewards", "valid_groups", "none"] = "nonzero_rewards"

    def __post_init__(self) -> None:
        if self.alpha not in ("nonzero_rewards", "valid_groups", "none"):
            raise ValueError(
                f"gpg alpha must be 'nonzero_rewards', 'valid_groups' or 'none', got {self.alpha!r}"
            )

    def scale(self, batch: RolloutBatch) -> float:
        """α for this batch."""
        r = _rewards(batch)
        if self.alpha == "nonzero_rewards":
            return r.numel() / max(int(torch.count_nonzero(r)), 1)
        if self.alpha == "valid_groups":
            _, std, _ = group_stats(r, batch.group_ids)  # [B]
            idx, n = group_index(batch.group_ids.to(r.device))
            valid = int((_per_group((std > 1e-5).float(), idx, n) > 0).sum())
            return 1.0 / (min(1.0, valid / max(n, 1)) + 1e-5)
        return 1.0

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        mean, _, count = group_stats(r, batch.group_ids)  # [B]
        alpha = self.scale(batch)
        adv = alpha * (r - mean) * (count > 1)
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/gpg_alpha": scalar(alpha),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }


@register("advantage", "gdpo")
@dataclass(frozen=True)
class GDPO:
    """GDPO, Group reward-Decoupled normalization PO (arXiv 2601.05242): normalize each reward term
    within the group before adding them, so a dominant term does not drown the others.

        A_i^k = (r_i^k − mean_G(r^k)) / (std_G(r^k) + ε)     for every reward term k
        S_i = Σ_k w_k·A_i^k
        A = whiten(S) over the batch

    ``whiten="tokens"``: verl ``compute_gdpo_outcome_advantage`` (``masked_whiten`` over every valid
    token: unbiased variance, + 1e-8 inside the root), ε = 1e-6. ``whiten="sequences"``: TRL
    ``normalize_then_sum``, (S − mean(S))/(std(S) + ε) over the completions, with ε = 1e-4 there
    (set ``eps=1e-4``). r^k and w_k are the reward set's terms: ``metadata["reward_components"]`` /
    ``["reward_weights"]`` (filled by collect when the run has several reward terms); with a single
    term the total reward is the one component, as verl's fallback. ``scale_by_std=False`` drops the
    per-term std (verl ``norm_adv_by_std_in_grpo``). A lone row's A^k is 0 (verl: r^k).
    """

    eps: float = 1e-6
    scale_by_std: bool = True
    whiten: Literal["tokens", "sequences"] = "tokens"

    def __post_init__(self) -> None:
        if self.whiten not in ("tokens", "sequences"):
            raise ValueError(f"gdpo whiten must be 'tokens' or 'sequences', got {self.whiten!r}")

    def components(self, batch: RolloutBatch) -> tuple[list[str], Tensor, Tensor]:
        """(term names, their values [B, K], their weights [K]) from the rows' metadata."""
        meta = batch.metadata or [{}] * batch.size
        rows = [m.get(COMPONENTS_KEY) for m in meta]
        if all(c is None for c in rows):
            return ["total"], _rewards(batch)[:, None], torch.ones(1)
        names = sorted(rows[0] or {})
        for i, c in enumerate(rows):
            if c is None or sorted(c) != names:
                raise ValueError(
                    f"gdpo: row {i} has reward components {sorted(c) if c else None}, row 0 has {names}: "
                    "every row needs the same metadata['reward_components'] (collect fills it when the "
                    "run has several reward terms)"
                )
            if any(c[k] is None for k in names):
                raise ValueError(f"gdpo: row {i} has a missing reward component {c}; drop it before")
        values = torch.tensor([[float(c[k]) for k in names] for c in rows], dtype=torch.float32)  # [B, K]
        given = meta[0].get(WEIGHTS_KEY) or {}
        weights = torch.tensor([float(given.get(k, 1.0)) for k in names])  # [K]
        return names, values, weights

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        names, values, weights = self.components(batch)
        values = values.to(batch.completion_mask.device)
        total = torch.zeros(batch.size, device=values.device)  # [B] S_i
        for k in range(len(names)):
            mean, std, count = group_stats(values[:, k], batch.group_ids.to(values.device))  # [B]
            a = values[:, k] - mean
            if self.scale_by_std:
                a = a / (std + self.eps)
            total = total + float(weights[k]) * a * (count > 1)
        mask = batch.completion_mask.float()
        if self.whiten == "tokens":
            adv = masked_whiten(broadcast_to_tokens(total, mask), mask)  # [B, T]
        else:
            std = total.std() if total.numel() > 1 else torch.zeros((), device=total.device)
            adv = broadcast_to_tokens((total - total.mean()) / (std + self.eps), mask)
        return adv, {
            "advantage/gdpo_terms": float(len(names)),
            "advantage/abs_mean": scalar(adv.abs().sum() / mask.sum().clamp(min=1)),
        }
