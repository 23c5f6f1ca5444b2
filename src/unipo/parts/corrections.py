"""Rollout corrections: ``corr(batch: RolloutBatch) -> (weights [B, T] ≥ 0, keep [B, T] bool, metrics)``.

The sampler μ (vLLM, or any engine whose numerics differ from the trainer's) and the trainer's own
π_old disagree a little even at the same weights; a correction reweights or rejects tokens by

    log ρ_t = log π_old(y_t) − log μ(y_t)          (clamped to ±20 before any exp, as verl)
    token:     ρ_t                                   per token
    sequence:  ρ_seq = exp(Σ_t log ρ_t)             one per row, on every token of it
    geometric: ρ_geo = exp(mean_t log ρ_t)          one per row (length-invariant)

reading ``batch.old_logprobs`` (π_old), ``batch.rollout_logprobs`` (μ) and ``batch.completion_mask``.
The trainer runs every correction once per rollout batch, after the π_old pass (they read no π_θ, so
they are fixed over the μ epochs) and stores

    correction_weights = Π_parts weights          multiplies the surrogate, as a token weight does
    loss_mask          = mask · Π_parts keep      rejected tokens leave the loss *and* its
                                                  denominators (token counts; rows left with no
                                                  token leave the row count)

which is verl's split (``rollout_is_weights`` scale ``pg_losses``; ``rollout_rs`` rewrites
``response_mask``): verl-project/verl@1dda039 verl/trainer/ppo/rollout_corr_helper.py:
compute_rollout_correction_and_rejection_mask. Regularizers (KL to π_ref, entropy) are not weighted
but skip rejected tokens. A part with ``old_from_rollout`` (``bypass``) makes the trainer set
π_old := μ and skip the π_old pass. The metrics are ``rollout_corr/...``; ``mismatch_metrics`` adds
the sampler–trainer KL and ratio range every step (trainer.py / update.py).

Sources: Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
(fengyao.notion.site/off-policy-rl: TIS, min(ρ_t, C) on the PPO term); Liu, Li et al., "When Speed
Kills Stability" (richardli.xyz/rl-collapse: MIS, rejection, Geo-RS); verl's docs/algo/rollout_corr.md
and rollout_corr_math.md; TRL's ``vllm_importance_sampling_mode`` (huggingface/trl@f2cd577
trl/trainer/grpo_trainer.py, ``_generate_and_score_completions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from unipo.parts.base import LOG_RATIO_CLAMP, Metrics, scalar
from unipo.parts.registry import part_name, register

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm
    from unipo.batch import RolloutBatch

Level = Literal["token", "sequence"]


def _inputs(batch: RolloutBatch, part: str) -> tuple[Tensor, Tensor]:
    """(log ρ_t [B, T] clamped, 0 on padding; mask [B, T] float) or a clear error."""
    if batch.rollout_logprobs is None:
        raise ValueError(
            f"correction {part!r} reads the sampler's log-probs (RolloutBatch.rollout_logprobs), which this "
            "batch lacks: the rollout engine returned none, or some rows were not sampled (demonstrations)"
        )
    if batch.old_logprobs is None:
        raise ValueError(
            f"correction {part!r} needs the trainer's π_old log-probs (RolloutBatch.old_logprobs)"
        )
    mask = batch.completion_mask.float()
    log_ratio = (batch.old_logprobs.float() - batch.rollout_logprobs.float()).clamp(
        -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP
    )
    return log_ratio * mask, mask  # [B, T] each


def sequence_log_ratio(log_ratio: Tensor, mask: Tensor, mean: bool = False) -> Tensor:
    """[B]: Σ_t log ρ_t over valid tokens (``mean``: divided by their count), clamped to ±20."""
    total = (log_ratio * mask).sum(dim=1)
    if mean:
        total = total / mask.sum(dim=1).clamp(min=1)
    return total.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _frac(flags: Tensor, mask: Tensor) -> Tensor:
    return (flags.float() * mask).sum() / mask.sum().clamp(min=1)


def _row_frac(rows: Tensor, mask: Tensor) -> Tensor:
    valid = mask.sum(dim=1) > 0  # [B]
    return (rows & valid).float().sum() / valid.float().sum().clamp(min=1)


def mismatch_from_log_ratio(log_ratio: Tensor) -> dict[str, float]:
    """Sampler–trainer mismatch from the valid tokens' log ρ = log π − log μ ([N], any shape flattened):

        kl_k1 = mean(−log ρ)            k1 estimate of KL(μ ‖ π) (samples from μ)
        kl_k3 = mean(ρ − 1 − log ρ)     k3 estimate of the same, ≥ 0 token by token
        ratio_min / ratio_mean / ratio_max of ρ, and max |log ρ|

    verl's ``compute_offpolicy_metrics`` (``kl``, ``k3_kl``); TRL logs mean/max |Δ log p| and ρ's
    min/mean/max (``sampling/importance_sampling_ratio/*``).
    """
    lr = log_ratio.detach().float().flatten().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if lr.numel() == 0:
        return {}
    rho = lr.exp()
    return {
        "rollout_corr/kl_k1": float((-lr).mean()),
        "rollout_corr/kl_k3": float((rho - 1 - lr).mean()),
        "rollout_corr/ratio_min": float(rho.min()),
        "rollout_corr/ratio_mean": float(rho.mean()),
        "rollout_corr/ratio_max": float(rho.max()),
        "rollout_corr/abs_log_ratio_max": float(lr.abs().max()),
    }


def mismatch_metrics(trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """``mismatch_from_log_ratio`` over the tokens where ``mask`` [B, T] is 1."""
    valid = mask.bool()
    return mismatch_from_log_ratio((trainer_logprobs.float() - rollout_logprobs.float())[valid])


def apply_corrections(
    corrections: tuple, batch: RolloutBatch
) -> tuple[Tensor | None, Tensor | None, dict[str, float]]:
    """Run every correction part: (product of weights [B, T] or None, loss mask [B, T] or None, metrics).

    None for the weights when no part reweights (all 1) and for the mask when none rejects; the
    metrics hold each part's and ``rollout_corr/loss_token_frac`` (tokens the loss still counts).
    """
    mask = batch.completion_mask.float()
    weights = torch.ones_like(mask)
    keep = mask.bool()
    metrics: dict[str, float] = {}
    for part in corrections:
        w, k, m = part(batch)
        weights = weights * w.detach()
        keep = keep & k
        metrics.update({key: float(v) for key, v in m.items()})
    reweights = bool(((weights != 1) & mask.bool()).any())
    rejects = bool((mask.bool() & ~keep).any())
    metrics["rollout_corr/loss_token_frac"] = float(_frac(keep, mask)) if mask.sum() > 0 else 1.0
    return (weights * mask if reweights else None), (keep.float() if rejects else None), metrics


# ------------------------------------------------------------------ the parts
class _NeedsOld:
    needs_old_logprobs = True  # the trainer runs the π_old pass even for a single on-policy step


@register("correction", "tis")
@dataclass(frozen=True)
class TIS(_NeedsOld):
    """Truncated importance sampling: w = clip(ρ, floor, cap) with ρ = ρ_t (``level="token"``) or
    ρ_seq (``"sequence"``); no token is rejected.

        ∇J ≈ E_{y∼μ}[ min(ρ_t, C) · ∇_θ min(r_t A_t, clip(r_t, 1−ε, 1+ε) A_t) ],  r_t = π_θ/π_old

    Yao et al. (fengyao.notion.site/off-policy-rl) with C = 2 (verl ``rollout_is_threshold: 2.0``;
    TRL ``vllm_importance_sampling_cap`` 3.0). Sequence level as verl's ``rollout_is="sequence"``
    (exp of the clamped log-sum) and TRL's ``sequence_truncate``; ``floor`` is TRL's two-sided
    ``clip_min`` (None: no lower clip). Follows verl@1dda039 rollout_corr_helper.py:
    compute_rollout_correction_weights (without ``rollout_is_batch_normalize``).
    """

    level: Level = "token"
    cap: float = 2.0
    floor: float | None = None

    def __post_init__(self) -> None:
        if self.level not in ("token", "sequence"):
            raise ValueError(f"tis level must be 'token' or 'sequence', got {self.level!r}")
        if not self.cap > 0:
            raise ValueError(f"tis cap must be > 0, got {self.cap}")
        if self.floor is not None and not 0 <= self.floor <= self.cap:
            raise ValueError(f"tis floor must be in [0, cap={self.cap}] (or None), got {self.floor}")

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Tensor, Metrics]:
        log_ratio, mask = _inputs(batch, "tis")
        if self.level == "sequence":
            rho = sequence_log_ratio(log_ratio, mask).exp()[:, None].expand_as(mask)  # [B, T]
        else:
            rho = log_ratio.exp()  # [B, T]
        w = rho.clamp(min=self.floor, max=self.cap) if self.floor is not None else rho.clamp(max=self.cap)
        clipped = (w != rho) & mask.bool()
        return w * mask, mask.bool(), {
            "rollout_corr/tis_clipped_frac": scalar(_frac(clipped, mask)),
            "rollout_corr/tis_weight_mean": scalar((w * mask).sum() / mask.sum().clamp(min=1)),
        }


@register("correction", "mis")
@dataclass(frozen=True)
class MIS(_NeedsOld):
    """Masked importance sampling: tokens (``level="token"``) or whole rows (``"sequence"``, Seq-MIS)
    whose ratio leaves [low, high] are rejected: out of the loss and of its denominators.

        keep = 1[low ≤ ρ ≤ high]       w = ρ on kept tokens (``weight="ratio"``) or 1 (``"one"``)

    Liu, Li et al., "When Speed Kills Stability" (richardli.xyz/rl-collapse): MIS, w = ρ·1[ρ ≤ C],
    sequence level recommended; IcePop is the token level with both bounds. Defaults: verl's Seq-MIS
    preset (``decoupled_seq_is_rs``: ``rollout_rs="seq_sum_k1"``, bounds 0.5_2.0). Deviations:
    verl keeps 1/ρ in [low, high] (its k1 = −log ρ) where this keeps ρ, the same for bounds
    symmetric in log (0.5, 2); TRL's ``token_mask`` / ``sequence_mask`` zero the weight but keep the
    rejected tokens in the denominator, verl's ``rollout_rs`` (and this part) remove them (slime PR
    #657, verl #3915).
    """

    level: Level = "sequence"
    low: float = 0.5
    high: float = 2.0
    weight: Literal["ratio", "one"] = "ratio"

    def __post_init__(self) -> None:
        if self.level not in ("token", "sequence"):
            raise ValueError(f"mis level must be 'token' or 'sequence', got {self.level!r}")
        if not 0 <= self.low < self.high:
            raise ValueError(f"mis needs 0 ≤ low < high, got low={self.low}, high={self.high}")
        if self.weight not in ("ratio", "one"):
            raise ValueError(f"mis weight must be 'ratio' or 'one', got {self.weight!r}")

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Tensor, Metrics]:
        log_ratio, mask = _inputs(batch, "mis")
        if self.level == "sequence":
            rho = sequence_log_ratio(log_ratio, mask).exp()[:, None].expand_as(mask)  # [B, T]
        else:
            rho = log_ratio.exp()  # [B, T]
        keep = (rho >= self.low) & (rho <= self.high) & mask.bool()
        w = torch.where(keep, rho if self.weight == "ratio" else torch.ones_like(rho), torch.zeros_like(rho))
        rejected = mask.bool() & ~keep
        return w, keep, {
            "rollout_corr/mis_masked_frac": scalar(_frac(rejected, mask)),
            "rollout_corr/mis_seq_masked_frac": scalar(_row_frac(rejected.any(dim=1), mask)),
        }


@register("correction", "geo_rs")
@dataclass(frozen=True)
class GeoRS(_NeedsOld):
    """Geometric-mean sequence rejection: rows with ρ_geo = exp(mean_t log ρ_t) ∉ [low, high] are
    rejected (out of the loss and its denominators); kept rows have weight 1.

    Length-invariant, unlike ρ_seq (the "length trap" of long sequences). verl's Geo-RS
    (docs/algo/rollout_corr_math.md §3.3.3: 𝟙(C_low ≤ ρ_geo ≤ C_high); ``rollout_rs="seq_mean_k1"``,
    preset ``decoupled_geo_rs`` with bounds 0.999_1.001, the defaults here). Deviation: verl's code
    compares mean(−log ρ) with [log low, log high], i.e. keeps 1/ρ_geo in the bounds; this follows the
    doc's ρ_geo (identical for bounds symmetric in log, 1e-6 apart in log for 0.999_1.001).
    Combine with ``tis`` for verl's Geo-RS-Token-TIS.
    """

    low: float = 0.999
    high: float = 1.001

    def __post_init__(self) -> None:
        if not 0 < self.low <= 1 <= self.high:
            raise ValueError(f"geo_rs needs 0 < low ≤ 1 ≤ high, got low={self.low}, high={self.high}")

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Tensor, Metrics]:
        log_ratio, mask = _inputs(batch, "geo_rs")
        geo = sequence_log_ratio(log_ratio, mask, mean=True).exp()  # [B]
        keep_row = (geo >= self.low) & (geo <= self.high)  # [B]
        keep = keep_row[:, None] & mask.bool()  # [B, T]
        valid = mask.sum(dim=1) > 0
        return torch.ones_like(mask) * mask, keep, {
            "rollout_corr/geo_rs_seq_masked_frac": scalar(_row_frac(~keep_row, mask)),
            "rollout_corr/geo_ratio_min": scalar(geo[valid].min() if valid.any() else 1.0),
            "rollout_corr/geo_ratio_max": scalar(geo[valid].max() if valid.any() else 1.0),
        }


@register("correction", "bypass")
@dataclass(frozen=True)
class Bypass:
    """Bypass mode: π_old := μ. The trainer takes the sampler's log-probs as π_old and skips its own
    π_old pass (one forward pass less per step), so the surrogate's ratio r_t = π_θ/μ corrects the
    mismatch and its clip bounds it (PPO-clip against the sampler).

    verl's ``bypass_mode`` with ``loss_type="ppo_clip"`` (verl@1dda039 rollout_corr_helper.py:
    apply_bypass_mode; preset ``bypass_ppo_clip``) and TRL's AsyncGRPOTrainer, whose ratio is
    π_θ/π_inference. Its own weights are 1: with π_old = μ, ρ ≡ 1, so other corrections would do
    nothing beside it (``check`` refuses them), and parts that read statistics of π_old beyond its
    log-probs (``old_token_stats``, π_old entropies) cannot be used. The mismatch is logged from the
    first minibatch's forward pass, before the first optimizer step (update.py).
    """

    old_from_rollout = True  # the trainer sets old_logprobs := rollout_logprobs, no π_old pass

    def check(self, algorithm: Algorithm) -> str | None:
        others = [part_name(c) for c in algorithm.corrections if c is not self]
        if others:
            return f"with π_old := μ every ratio π_old/μ is 1, so {others} would do nothing: drop them"
        if algorithm.old_token_stats:
            stats = list(algorithm.old_token_stats)
            return f"parts read statistics of π_old {stats}, which need the π_old pass"
        return None

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Tensor, Metrics]:
        mask = batch.completion_mask.float()
        if batch.rollout_logprobs is None:
            _inputs(batch, "bypass")  # the same clear error
        return mask.clone(), mask.bool(), {}


@register("correction", "decoupled")
@dataclass(frozen=True)
class Decoupled(_NeedsOld):
    """Decoupled PPO's behaviour weight, for rows sampled by an older policy (asynchronous rollouts):

        L = −E_{y∼μ}[ w_t · min(r_t A_t, clip(r_t, 1−ε, 1+ε) A_t) ],   r_t = π_θ/π_prox,
        w_t = π_prox(y_t)/μ(y_t),   w_t := 0 where w_t > cap

    π_prox (the *proximal* policy) is the trainer's π_old pass at the weights the update starts
    from, μ the behaviour policy that sampled (``rollout_logprobs``, possibly versions behind), so the
    PPO trust region is measured against a recent policy while the data stays off-policy-corrected
    (Hilton et al., "Batch size-invariance for policy optimization", arXiv 2110.00641, §3; AReaL,
    arXiv 2505.24298). As AReaL's ``ppo_actor_loss_fn`` (``use_decoupled_loss``,
    ``behav_imp_weight_cap``; read in a copy of inclusionAI/AReaL's code in the index, commit not
    known): tokens whose weight exceeds ``cap`` get weight 0 but stay in the loss denominator.
    ``cap=None`` keeps every weight; 5 is AReaL's usual setting for stale data. Deviation: none in
    the formula; AReaL's sequence-level variant is not carried.
    """

    cap: float | None = 5.0

    def __post_init__(self) -> None:
        if self.cap is not None and not self.cap > 1.0:
            raise ValueError(f"decoupled cap must be > 1 (AReaL's rule) or None, got {self.cap}")

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Tensor, Metrics]:
        log_ratio, mask = _inputs(batch, "decoupled")
        w = log_ratio.exp()  # [B, T] π_prox / μ
        over = mask.bool() & (w > self.cap) if self.cap is not None else torch.zeros_like(mask.bool())
        w = torch.where(over | ~mask.bool(), torch.zeros_like(w), w)  # padding: 0, also where it holds NaN
        return w, mask.bool(), {
            "rollout_corr/decoupled_capped_frac": scalar(_frac(over, mask)),
            "rollout_corr/decoupled_weight_mean": scalar(w.sum() / mask.sum().clamp(min=1)),
        }
