"""Aggregations of a per-token loss [B, T] into the scalar that is differentiated.

Denominators count the *whole accumulated batch* (``x.num_tokens``, ``x.num_seqs``), so the
micro-batch losses add up to exactly the full-batch loss under gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unipo.parts.base import LossInputs
from unipo.parts.registry import register


@register("aggregate", "token_mean")
@dataclass(frozen=True)
class TokenMean:
    """L = Σ_{i,t} ℓ_{i,t}·m_{i,t} / Σ_{i,t} m_{i,t} over the accumulated batch
    (DAPO's token-level loss, arXiv 2503.14476; verl ``token-mean``; TRL ``loss_type="dapo"``)."""

    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor:
        return (loss * x.mask).sum() / x.num_tokens


@register("aggregate", "seq_mean_token_mean")
@dataclass(frozen=True)
class SeqMeanTokenMean:
    """L = (1/N_seq) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}: GRPO's objective (arXiv 2402.03300; verl
    ``seq-mean-token-mean``; TRL ``loss_type="grpo"``)."""

    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor:
        per_seq = (loss * x.mask).sum(dim=1) / x.mask.sum(dim=1).clamp(min=1)  # [B]
        return per_seq.sum() / x.num_seqs
