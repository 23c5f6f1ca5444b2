"""The parts of reward methods that act where rewards cannot: HBPO's budget-aware advantage and
AdaCoT's selective loss masking (the rewards themselves are in ``unipo.rewards.efficiency``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.base import LossInputs, Metrics, broadcast_to_tokens, group_stats, scalar
from unipo.parts.registry import register
from unipo.rewards.efficiency import BUDGET_PATTERN, hbpo_f2, parse_budget


@register("advantage", "hbpo")
@dataclass(frozen=True)
class HBPOAdvantage:
    """HBPO's hierarchical advantage (arXiv 2507.15844, Algorithm 1 and §3.3).

        A_inter_{i,j} = (R_{i,j} − mean_G(R)) / (std_G(R) + ε)       over the prompt's whole group
        A_intra_i     = μ_i − f2(b_i),   μ_i = mean reward of subgroup i (same prompt, same budget b_i)
        A_{i,j}       = A_intra_i + A_inter_{i,j}

    with f2(b) = β·cos(π b/(2 L_max)) (``unipo.rewards.efficiency.hbpo_f2``). Budgets are read from
    each completion (``metadata["completion"]``, the pattern of the ``hbpo`` reward); a completion
    without one is in the subgroup b = L_max (f2 = 0), as the code's default budget. Set
    ``max_length`` and ``scale`` to the reward's L_max and β. Std: unbiased, ε = 1e-6 (verl).
    Source: the paper's Algorithm 1; ZJU-REAL/HBPO@5c8991d6 verl/trainer/ppo/core_algos.py:
    compute_grpo_outcome_advantage. Deviation: the code adds A_intra twice (once in the budget
    branch, once after it); here once, as Algorithm 1. A lone completion gets A = 0 (unipo's GRPO rule).
    """

    max_length: int = 4096
    scale: float = 4.0
    eps: float = 1e-6
    pattern: str = BUDGET_PATTERN

    min_group_size = 2

    def __post_init__(self) -> None:
        if self.max_length <= 0:
            raise ValueError(f"hbpo max_length must be > 0, got {self.max_length}")

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = torch.nan_to_num(batch.rewards.float(), nan=0.0)  # [B]
        mean, std, count = group_stats(r, batch.group_ids, unbiased=True)  # [B] each
        inter = (r - mean) / (std + self.eps) * (count > 1)  # [B]
        meta = batch.metadata or [{}] * batch.size
        budgets = [parse_budget(str(m.get("completion", "")), self.pattern) for m in meta]
        keys = [
            (int(g), b if b is not None else self.max_length)
            for g, b in zip(batch.group_ids.tolist(), budgets)
        ]
        members: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            members[key].append(i)
        intra = torch.zeros_like(r)  # [B]
        for (_, budget), rows in members.items():
            sub_mean = r[rows].mean()
            intra[rows] = sub_mean - hbpo_f2(budget, self.max_length, self.scale)
        adv = (inter + intra) * (count > 1)  # [B]
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/abs_mean": scalar(adv.abs().mean()),
            "hbpo/intra_mean": scalar(intra.mean()),
            "hbpo/budgeted_frac": scalar(sum(b is not None for b in budgets) / max(len(budgets), 1)),
        }


@register("token_weight", "adacot_slm")
@dataclass(frozen=True)
class SelectiveLossMask:
    """AdaCoT Selective Loss Masking (arXiv 2505.11896, §SLM): on the rows of prompts marked for
    it, the loss of the decision token — whether to think, the first token after ``<think>`` — is
    masked, so RL on data without a triggering signal does not move the decision boundary.

        w_{i,t} = 0 if row i is flagged and position ≤ t < position + width, else 1

    The flag is the example column ``key`` (default ``adacot_slm``, true on the rows to mask), read
    as a row flag (``row_flags``: collect copies it into each row's metadata). ``position`` is the
    decision token's index in the completion: 0 when the prompt ends with ``<think>`` (the
    paper's template); ``width`` > 1 covers a decision spelled over several tokens (the character
    tokenizer of the tiny models). Deviation: the position is fixed, not found by token id (parts
    never see token ids); no public code.
    """

    key: str = "adacot_slm"
    position: int = 0
    width: int = 1

    def __post_init__(self) -> None:
        if self.position < 0 or self.width < 1:
            raise ValueError(
                f"adacot_slm needs position >= 0 and width >= 1, got {self.position}, {self.width}"
            )

    @property
    def row_flags(self) -> tuple[str, ...]:
        return (self.key,)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        flagged = x.row_flags.get(self.key)
        weight = torch.ones_like(x.mask)  # [B, T]
        if flagged is None or not bool(flagged.any()):
            return weight, {"adacot/masked_tokens": scalar(0.0)}
        cols = torch.arange(x.mask.shape[1], device=x.mask.device)  # [T]
        at_decision = (cols >= self.position) & (cols < self.position + self.width)  # [T]
        masked = flagged.bool()[:, None] & at_decision[None, :] & x.mask.bool()  # [B, T]
        weight = torch.where(masked, torch.zeros_like(weight), weight)
        return weight, {"adacot/masked_tokens": scalar(masked.sum().float())}
