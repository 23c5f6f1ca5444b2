"""Typed batch containers shared by every stage of the pipeline.

Shape letters used throughout unipo:
    B  completions in the batch (prompts × G samples per prompt)
    P  prompt length (left-padded)
    T  completion length (right-padded)

Multi-turn trajectories (``unipo.envs``) are rows like any other: the completion is the whole
trajectory after the prompt, model turns and environment tokens (tool results, observations)
interleaved as the sampler saw them. ``completion_mask`` is the *loss* mask (1 on the model's own
tokens, 0 on environment tokens and padding), so every part, aggregate and denominator sees model
tokens only and environment tokens never get gradient; ``context_mask`` is 1 on every real token of
the trajectory (the attention mask of the completion); ``turn_index`` numbers the model turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

SFT_KEY = "sft_target_ids"  # metadata key: an item's demonstration token ids (collect.py → HPT's switch)
SFT_TRUNCATED_KEY = "sft_target_truncated"  # metadata key: True when those ids were cut at max_new_tokens
SFT_ROW_KEY = "hpt_sft"  # metadata key: True on a row whose completion is a demonstration, not a sample
EXTRA_ROW_KEY = "extra_rollout"  # metadata key: True on a row of a part's extra rollout (collect.py, AEPO)
# metadata key: True on a row a part took from an earlier step (a buffer's or SPEAR's replay), kept with its
# sampler log-probs and weight version; the staleness check of freshly sampled rows leaves it alone
REPLAYED_ROW_KEY = "replayed"
EXAMPLE_KEY = "example_id"  # metadata key: the row's prompt, an index into the training examples (schedulers)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that ignore left padding, as ``generate`` uses: cumsum(mask) − 1, ≥ 0.

    attention_mask [B, L] (1 = token) → position ids [B, L]; 0 on left padding. Shared by the
    rollout engine's prefill and every training / reference / critic pass, so that a token's
    position is the same when it is sampled and when it is scored.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


_PER_ITEM_TENSORS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "group_ids",
    "rewards",
    "truncated",
    "old_logprobs",
    "ref_logprobs",
    "entropies",
    "advantages",
    "values",
    "context_mask",
    "turn_index",
    "token_rewards",
    "rollout_logprobs",
    "weight_version",
    "correction_weights",
    "loss_mask",
)


@dataclass
class RolloutBatch:
    """One batch of sampled completions and everything computed about them.

    Rows are completions; completions of the same prompt share a ``group_id``. Optional
    fields are filled in as the pipeline runs (rewards → advantages → log-probs).
    """

    prompt_ids: Tensor  # [B, P] long, left-padded with the pad token
    prompt_mask: Tensor  # [B, P] long, 1 on real prompt tokens
    completion_ids: Tensor  # [B, T] long, right-padded
    completion_mask: Tensor  # [B, T] float, 1 on generated tokens (EOS included), 0 on padding
    group_ids: Tensor  # [B] long, one id per prompt
    truncated: Tensor  # [B] bool, hit max_new_tokens before EOS / a stop string
    rewards: Tensor | None = None  # [B] float, total scalar reward per completion
    old_logprobs: Tensor | None = None  # [B, T] log π_old (the policy that sampled), no grad
    ref_logprobs: Tensor | None = None  # [B, T] log π_ref (reference model), no grad
    entropies: Tensor | None = None  # [B, T] full-vocabulary entropy of π_old at each token
    advantages: Tensor | None = None  # [B, T] per-token advantage
    values: Tensor | None = None  # [B, T] critic values (PPO) when a value head exists
    # multi-turn rows (unipo.envs): 1 on every real completion token the model reads (its own and the
    # environment's); None: completion_mask (single-turn rows, where the two are the same)
    context_mask: Tensor | None = None  # [B, T] float
    # index k of the model turn each completion token belongs to, −1 on environment tokens and padding;
    # None: single-turn (every completion token is turn 0)
    turn_index: Tensor | None = None  # [B, T] long
    token_rewards: Tensor | None = None  # [B, T] dense per-token reward added to the sequence reward (RTO)
    rollout_logprobs: Tensor | None = None  # [B, T] log μ: the sampler's processed log-probs, no grad
    weight_version: Tensor | None = None  # [B] long: the weight version that sampled each row
    correction_weights: Tensor | None = None  # [B, T] ≥ 0 rollout-correction IS weights (None: 1)
    loss_mask: Tensor | None = None  # [B, T] float: tokens the loss counts (None: completion_mask);
    # a rollout correction's rejected tokens are 0 here, so they leave the loss and its denominators
    metadata: list[dict[str, Any]] = field(default_factory=list)  # per item: texts, answer, task entry
    # name -> [B, T] per-token statistic of π_old (``TOKEN_STATS`` names an Advantage part lists in
    # ``old_token_stats``, e.g. "sum_pi_squared" for the optimal token baseline), no grad
    old_stats: dict[str, Tensor] = field(default_factory=dict)
    # name -> [B, K] per-row feature of π_old (``SEQUENCE_STATS`` names an Advantage part lists in
    # ``old_sequence_stats``, e.g. "lm_head_sensitivity" for G2RL), no grad
    old_sequence_stats: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- structure
    @property
    def size(self) -> int:
        return int(self.completion_ids.shape[0])

    def __len__(self) -> int:
        return self.size

    @property
    def input_ids(self) -> Tensor:  # [B, P+T]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:  # [B, P+T]: the prompt, and every completion token the model reads
        seen = self.context_mask if self.context_mask is not None else self.completion_mask
        return torch.cat([self.prompt_mask.long(), seen.long()], dim=1)

    def turns(self) -> Tensor:  # [B, T] long
        """``turn_index``, or for single-turn rows 0 on completion tokens and −1 elsewhere."""
        if self.turn_index is not None:
            return self.turn_index
        return torch.where(self.completion_mask.bool(), 0, -1).long()

    @property
    def completion_lengths(self) -> Tensor:  # [B] long
        return self.completion_mask.sum(dim=1).long()

    def flags(self, key: str) -> Tensor:
        """[B] bool: the rows whose ``metadata[key]`` is true (none without metadata)."""
        meta = self.metadata or [{}] * self.size
        return torch.tensor([bool(m.get(key)) for m in meta], dtype=torch.bool)

    def validate(self) -> None:
        """Check that every present tensor agrees with the documented shapes."""
        b, t = self.completion_ids.shape
        p = self.prompt_ids.shape[1]
        expect = {
            "prompt_ids": (b, p),
            "prompt_mask": (b, p),
            "completion_mask": (b, t),
            "group_ids": (b,),
            "truncated": (b,),
            "rewards": (b,),
            "old_logprobs": (b, t),
            "ref_logprobs": (b, t),
            "entropies": (b, t),
            "advantages": (b, t),
            "values": (b, t),
            "context_mask": (b, t),
            "turn_index": (b, t),
            "token_rewards": (b, t),
            "rollout_logprobs": (b, t),
            "weight_version": (b,),
            "correction_weights": (b, t),
            "loss_mask": (b, t),
        }
        for name, shape in expect.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"RolloutBatch.{name} has shape {tuple(value.shape)}, expected {shape} "
                    f"(B={b} completions, P={p} prompt tokens, T={t} completion tokens)"
                )
        for name, value in self.old_stats.items():
            if tuple(value.shape) != (b, t):
                raise ValueError(
                    f"RolloutBatch.old_stats[{name!r}] has shape {tuple(value.shape)}, expected {(b, t)}"
                )
        for name, value in self.old_sequence_stats.items():
            if value.dim() != 2 or value.shape[0] != b:
                raise ValueError(
                    f"RolloutBatch.old_sequence_stats[{name!r}] has shape {tuple(value.shape)}, expected "
                    f"({b}, K): one feature row per completion"
                )
        if self.metadata and len(self.metadata) != b:
            raise ValueError(f"RolloutBatch.metadata has {len(self.metadata)} items, expected {b}")
        seen = self.context_mask
        if seen is not None and bool((self.completion_mask.bool() & ~seen.bool()).any()):
            raise ValueError(
                "RolloutBatch.context_mask must be 1 wherever completion_mask is 1 (a loss token the model "
                "does not read)"
            )

    # ---------------------------------------------------------------- transforms
    def select(self, index: Tensor | list[int]) -> RolloutBatch:
        """Rows ``index`` (a list of ints, a long tensor, or a bool mask [B]) as a new batch."""
        idx = torch.as_tensor(index, device=self.completion_ids.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero(as_tuple=True)[0]
        kept = {
            name: (getattr(self, name)[idx] if getattr(self, name) is not None else None)
            for name in _PER_ITEM_TENSORS
        }
        meta = [self.metadata[i] for i in idx.tolist()] if self.metadata else []
        stats = {k: v[idx.to(v.device)] for k, v in self.old_stats.items()}
        seq = {k: v[idx.to(v.device)] for k, v in self.old_sequence_stats.items()}
        return RolloutBatch(**kept, metadata=meta, old_stats=stats, old_sequence_stats=seq)

    def replace(self, **changes: Any) -> RolloutBatch:
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor) else None)
            for f in fields(self)
            if f.name in _PER_ITEM_TENSORS
        }
        return RolloutBatch(
            **moved, metadata=self.metadata, old_stats={k: v.to(device) for k, v in self.old_stats.items()},
            old_sequence_stats={k: v.to(device) for k, v in self.old_sequence_stats.items()},
        )  # fmt: skip

    def trim(self) -> RolloutBatch:
        """Drop all-padding columns: leading prompt columns and trailing completion columns."""
        keep_p = self.prompt_mask.bool().any(dim=0).nonzero()
        p0 = int(keep_p[0]) if len(keep_p) else self.prompt_ids.shape[1]
        keep_t = self.completion_mask.bool().any(dim=0).nonzero()
        t1 = int(keep_t[-1]) + 1 if len(keep_t) else 0
        out = {}
        for name in _PER_ITEM_TENSORS:
            v = getattr(self, name)
            if v is None or v.dim() == 1:
                out[name] = v
            elif name.startswith("prompt"):
                out[name] = v[:, p0:]
            else:
                out[name] = v[:, :t1]
        stats = {k: v[:, :t1] for k, v in self.old_stats.items()}
        seq = dict(self.old_sequence_stats)  # [B, K]: no token columns to drop
        return RolloutBatch(**out, metadata=self.metadata, old_stats=stats, old_sequence_stats=seq)

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_token_id: int = 0) -> RolloutBatch:
        """Stack batches row-wise, re-padding prompts on the left and completions on the right."""
        if not batches:
            raise ValueError("RolloutBatch.concat needs at least one batch")
        if len(batches) == 1:
            return batches[0]
        p = max(b.prompt_ids.shape[1] for b in batches)
        t = max(b.completion_ids.shape[1] for b in batches)
        out: dict[str, Any] = {}
        multi = {"context_mask": lambda b: b.completion_mask.float(), "turn_index": lambda b: b.turns()}
        for name in _PER_ITEM_TENSORS:
            vals = [getattr(b, name) for b in batches]
            if name in multi and any(v is not None for v in vals):  # single-turn rows among multi-turn ones
                vals = [v if v is not None else multi[name](b) for v, b in zip(vals, batches)]
            if any(v is None for v in vals):
                out[name] = None
                continue
            if vals[0].dim() == 1:
                out[name] = torch.cat(vals)
                continue
            width = p if name.startswith("prompt") else t
            fill = -1 if name == "turn_index" else 0
            fill = pad_token_id if name in ("prompt_ids", "completion_ids") else fill
            padded = []
            for v in vals:
                extra = width - v.shape[1]
                pad = (extra, 0) if name.startswith("prompt") else (0, extra)
                padded.append(torch.nn.functional.pad(v, pad, value=fill))
            out[name] = torch.cat(padded)
        meta = [m for b in batches for m in (b.metadata or [{}] * b.size)]
        shared = set.intersection(*(set(b.old_stats) for b in batches))  # one some batch lacks: dropped
        right = torch.nn.functional.pad
        stats = {
            k: torch.cat([right(b.old_stats[k], (0, t - b.old_stats[k].shape[1])) for b in batches])
            for k in sorted(shared)
        }
        shared_seq = set.intersection(*(set(b.old_sequence_stats) for b in batches))
        seq = {k: torch.cat([b.old_sequence_stats[k] for b in batches]) for k in sorted(shared_seq)}
        return RolloutBatch(**out, metadata=meta, old_stats=stats, old_sequence_stats=seq)
