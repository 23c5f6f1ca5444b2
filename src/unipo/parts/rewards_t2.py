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


@register("advantage", "pear")
@dataclass(frozen=True)
class PEARAdvantage:
    """PEAR, the phase entropy aware reward (Huang, Lu & Zhang, arXiv 2510.08026), carried as an
    advantage: the reward needs the policy's token entropies, which rewards never see.

        r̃_i = r_i − α · H̄_think(i) + γ · H̄_answer(i)          (α = think_coef, γ = answer_coef)
        A_i = (r̃_i − mean_G(r̃)) / (std_G(r̃) + ε)              (GRPO, unbiased std, ε = 1e-6)

    H̄_think / H̄_answer: mean entropy of π_old (at rollout, ``batch.entropies``; the part asks for
    the pass with ``needs_old_logprobs``) over the completion tokens before / after the first
    ``delimiter_ids`` (the token ids of ``</think>``; the delimiter itself counts in neither);
    without a delimiter (or with ``delimiter_ids=()``) the whole completion is the thinking phase.
    Entropy in the thinking phase is penalized; γ = 0 leaves the answer phase free ("moderate
    exploration at the final answer phase"). UNVERIFIED: the authors' code (iNLP-Lab/PEAR,
    ``entropy.py:compute_score``) and the paper's equation could not be retrieved here; this form
    follows the abstract and the README (the reward reads ``entropys`` split at ``</think>``).

    Verification tried (this session): ``fetch github:iNLP-Lab/PEAR`` has no snapshot, the file index
    lists no file of that repository, and the pages corpus holds arxiv/themoonlight/liner/papernotes
    pages on the paper only as their opening. Two secondary sources in the file index describe a
    *different* form, UNVERIFIED against the paper but consistent with each other: the ICLR 2026
    reviews (a max in Eq. 7, a coefficient α on H_answer, entropies of π_old in Eq. 5, k = T and
    H_answer = 0 without ``</think>``) and a paper note (papernotes, ICLR2026/llm_reasoning) that
    gives P = max(0, H̄_think − α·H̄_answer), r = min(1, s − P) for a correct answer and a fixed
    format score r_fmt otherwise (no entropy term on wrong answers), then GRPO; α = 1 (its ablation:
    α = 0 penalizes thinking only, α = −1 both phases), GSM8K train set, batch 128, lr 1e-6, verl.
    This part's r − α·H̄_think + γ·H̄_answer on every row has neither the max, the min nor the
    correct-only gate.
    """

    think_coef: float = 1.0
    answer_coef: float = 0.0
    delimiter_ids: tuple[int, ...] = ()
    eps: float = 1e-6

    needs_old_logprobs = True  # π_old's entropies at the sampled tokens must be in the batch
    min_group_size = 2

    def phases(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """([B, T] thinking-phase mask, [B, T] answer-phase mask) from the completion ids."""
        think = mask.bool().clone()
        answer = torch.zeros_like(think)
        k = len(self.delimiter_ids)
        if not k:
            return think, answer
        pattern = torch.tensor(self.delimiter_ids, device=ids.device)
        for i in range(ids.shape[0]):
            windows = ids[i].unfold(0, k, 1) if ids.shape[1] >= k else ids[i][None, :0]  # [T-k+1, k]
            hits = (windows == pattern).all(-1).nonzero()
            if hits.numel():
                start = int(hits[0])
                think[i, start:] = False
                answer[i, start + k :] = mask[i, start + k :].bool()
        return think, answer

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        if batch.entropies is None:
            raise ValueError("the pear advantage reads batch.entropies (π_old's); none were computed")
        mask = batch.completion_mask
        think, answer = self.phases(batch.completion_ids, mask)  # [B, T] each
        ent = torch.where(mask.bool(), batch.entropies.float(), torch.zeros_like(batch.entropies.float()))
        h_think = (ent * think).sum(1) / think.sum(1).clamp(min=1)  # [B]
        h_answer = (ent * answer).sum(1) / answer.sum(1).clamp(min=1)  # [B]
        r = torch.nan_to_num(batch.rewards.float(), nan=0.0) - self.think_coef * h_think
        r = r + self.answer_coef * h_answer  # [B]
        mean, std, count = group_stats(r, batch.group_ids, unbiased=True)
        adv = (r - mean) / (std + self.eps) * (count > 1)
        return broadcast_to_tokens(adv, mask), {
            "advantage/abs_mean": scalar(adv.abs().mean()),
            "pear/think_entropy": scalar(h_think.mean()),
            "pear/answer_entropy": scalar(h_answer.mean()),
        }
