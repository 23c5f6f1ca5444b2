"""Aggregations of a per-token loss [B, T] into the scalar that is differentiated.

Denominators count the *whole accumulated batch* (``x.num_tokens``, ``x.num_seqs``), so the
micro-batch losses add up to exactly the full-batch loss under gradient accumulation.
Padding is selected away (``zero_padding``), never multiplied by 0, so a NaN or ±inf there
cannot reach the loss. Sequence means count only rows with at least one valid token
(``x.num_seqs``; an all-padding row adds 0 to the sum and nothing to N_seq), as verl's
``agg_loss`` (volcengine/verl@b178a3cd verl/trainer/ppo/core_algos.py:agg_loss).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unipo.parts.base import LossInputs, zero_padding
from unipo.parts.registry import register


@register("aggregate", "token_mean")
@dataclass(frozen=True)
class TokenMean:
    """L = Σ_{i,t} ℓ_{i,t}·m_{i,t} / Σ_{i,t} m_{i,t} over the accumulated batch
    (DAPO's token-level loss, arXiv 2503.14476; verl ``token-mean``; TRL ``loss_type="dapo"``)."""

    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor:
        return zero_padding(loss, x.mask).sum() / x.num_tokens


@register("aggregate", "seq_mean_token_mean")
@dataclass(frozen=True)
class SeqMeanTokenMean:
    """L = (1/N_seq) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}: GRPO's objective (arXiv 2402.03300; verl
    ``seq-mean-token-mean``; TRL ``loss_type="grpo"``). N_seq counts the rows with |o_i| ≥ 1
    (verl ``agg_loss``: fully masked rows are excluded); an empty row contributes 0."""

    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor:
        per_seq = zero_padding(loss, x.mask).sum(dim=1) / x.mask.sum(dim=1).clamp(min=1)  # [B]
        return per_seq.sum() / x.num_seqs


@register("aggregate", "seq_mean_token_sum")
@dataclass(frozen=True)
class SeqMeanTokenSum:
    """L = (1/N_seq) Σ_i Σ_t ℓ_{i,t}: per-sequence token *sum*, then mean over sequences
    (verl ``seq-mean-token-sum``; CANON's aggregation). Longer sequences weigh more. N_seq
    counts the rows with at least one valid token (verl ``agg_loss``)."""

    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor:
        return zero_padding(loss, x.mask).sum() / x.num_seqs


@register("aggregate", "seq_mean_token_sum_const")
@dataclass(frozen=True)
class SeqMeanTokenSumConst:
    """Dr. GRPO's constant normalizer (arXiv 2503.20783): L = Σ_i Σ_t ℓ_{i,t} / (L_max·N_seq).

    L_max is ``constant`` when set, else ``x.max_len`` (the trainer sets it to the generation
    limit ``max_new_tokens``; left at its default it is the micro-batch's padded width, which
    varies). Source: sail-sg/understand-r1-zero ``masked_sum(..., constant_normalizer=
    generate_max_length)`` then a batch mean; TRL ``loss_type="dr_grpo"`` is the same. verl's
    ``seq-mean-token-sum-norm`` divides by the padded length and does not divide by N_seq.
    N_seq counts the rows with at least one valid token, as the other sequence means (verl
    ``agg_loss``); the reference's batch mean would also count an all-padding row, which a
    sampled completion (≥ 1 token) never is.
    """

    constant: int | None = None

    def __post_init__(self) -> None:
        if self.constant is not None and self.constant <= 0:
            raise ValueError(f"seq_mean_token_sum_const constant must be > 0 (or None), got {self.constant}")

    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor:
        norm = self.constant if self.constant is not None else x.max_len
        return zero_padding(loss, x.mask).sum() / (norm * x.num_seqs)


@register("aggregate", "token_sum_norm")
@dataclass(frozen=True)
class TokenSumNorm:
    """A token *sum* over a constant: L = Σ_{i,t} ℓ_{i,t}·m_{i,t} / (divisor · L_max), no mean over rows.

    verl's ``loss_remove_token_mean`` / ``seq-mean-token-sum-norm``: ``(loss·mask).sum() /
    mask.shape[-1]`` with responses padded to the generation limit, so L_max is ``constant`` when
    set, else ``x.max_len`` (the trainer's ``max_new_tokens``). ``divisor`` folds in a further
    constant, e.g. the data-parallel ranks over which verl averages per-rank sums (HPT: 8).
    Source: TsinghuaC3I/Unify-Post-Training@ae332f5 hpt/verl/verl/trainer/ppo/core_algos.py:
    compute_policy_loss (``loss_remove_token_mean=True``).
    """

    constant: int | None = None
    divisor: float = 1.0

    def __post_init__(self) -> None:
        if self.constant is not None and self.constant <= 0:
            raise ValueError(f"token_sum_norm constant must be > 0 (or None), got {self.constant}")
        if self.divisor <= 0:
            raise ValueError(f"token_sum_norm divisor must be > 0, got {self.divisor}")

    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor:
        norm = self.constant if self.constant is not None else x.max_len
        return zero_padding(loss, x.mask).sum() / (self.divisor * norm)
