"""ARES (arXiv 2510.08457): the difficulty-aware entropy reward (an advantage part) and the
per-difficulty dynamic KL (a regularizer), linked by a ``DifficultyBook``.

Both follow shawn0728/ARES@146620e3d7166281ffb14634c580c6dcd3a5943d (the paper's text beyond its
abstract could not be retrieved). Each group is bucketed by its accuracy p (the fraction of
rows with reward > ``correct_above``): easy p ≥ 2/3, medium 1/3 ≤ p < 2/3, hard p < 1/3
(verl/trainer/ray_trainer.py:update_difficulty_and_skip_gid_set). The advantage part writes
each group's bucket into the book before the update; the KL part reads it in the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.base import LossInputs, Metrics, group_index, masked_mean, scalar
from unipo.parts.registry import part_name, register
from unipo.parts.regularizers import KL_ESTIMATORS, KLEstimator, kl_estimate
from unipo.parts.tokens_t2 import window_entropy

BUCKETS = ("easy", "medium", "hard")
EASY, MEDIUM, HARD = 0, 1, 2


class DifficultyBook:
    """Group id → difficulty bucket (0 easy, 1 medium, 2 hard) of the batch being trained on.

    ``ares_advantage`` fills it once per step (it sees whole groups); ``ares_kl`` reads it per
    row in the loss, where a micro-batch may hold only part of a group. Not checkpointed: it is
    rebuilt from each batch before that batch's update.
    """

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"DifficultyBook({len(self.buckets)} groups)"


def difficulty_buckets(correct: Tensor, group_ids: Tensor) -> Tensor:
    """Bucket per row [B] (long) from correctness [B] (bool): with k of the group's G rows correct,
    easy if 3k ≥ 2G, medium if 3k ≥ G, else hard (integer test of p ≥ 2/3, p ≥ 1/3)."""
    idx, n = group_index(group_ids)
    k = torch.zeros(n, dtype=torch.long, device=correct.device).index_add_(0, idx, correct.long())
    g = torch.zeros(n, dtype=torch.long, device=correct.device).index_add_(0, idx, torch.ones_like(idx))
    per_group = torch.where(3 * k >= 2 * g, EASY, torch.where(3 * k >= g, MEDIUM, HARD))
    return per_group[idx]


def hwe_counts(
    ent: Tensor, mask: Tensor, window: int, threshold: float, triggers: Tensor | None = None
) -> Tensor:
    """High-window-entropy trigger count per row [B]: positions t with a full window of ``window``
    tokens after t (t + window ≤ L − 1) whose mean entropy mean(H_{t+1..t+window}) ≥ threshold,
    counted only where ``triggers`` [B, T] is true when given (vllm_rollout_spmd.py:
    compute_reasoning_token_window_entropy, its ``valid_high_entropy_token_num``)."""
    b, t = ent.shape
    lengths = mask.sum(1).long()  # [B]
    cs = torch.cat([ent.new_zeros(b, 1), torch.cumsum(ent * mask, dim=1)], dim=1)  # [B, T+1]
    pos = torch.arange(t, device=ent.device)
    following = (cs[:, (pos + 1 + window).clamp(max=t)] - cs[:, pos + 1]) / window  # [B, T]
    full = (pos[None, :] + window) <= (lengths[:, None] - 1)  # [B, T]
    hit = full & (following >= threshold)
    if triggers is not None:
        hit = hit & triggers
    return hit.sum(1)


def window_percentile(ent: Tensor, mask: Tensor, window: int, q: float) -> Tensor:
    """Per-row q-quantile [B] of the window entropy (``window_entropy``: following-window means,
    the tail filled with their mean), NaN for an empty row (vllm_rollout_spmd.py:
    get_window_average_entropy_percentile_threshold_list, np.percentile's linear rule)."""
    wnd = window_entropy(ent, mask, window).masked_fill(~mask.bool(), math.nan)  # [B, T]
    return torch.nanquantile(wnd.float(), q, dim=1)


def _huber(x: float, kappa: float) -> float:
    x = max(x, 0.0)
    return 0.5 * x * x / kappa if x <= kappa else x - 0.5 * kappa


def _saturate(x: float, temp: float) -> float:
    return 1.0 / (1.0 + math.exp(-x / max(temp, 1e-6)))


@register("advantage", "ares_advantage")
@dataclass(frozen=True)
class ARESAdvantage:
    """ARES difficulty-aware entropy reward, then the GRPO advantage of the shaped reward.

    Per row: n = HWE trigger count (``hwe_counts``, window w = 4) at the threshold τ. Per bucket d
    of this batch: target n*_d = round(mean over its groups of the group-mean n) and
    α_d ← clip(α_d + η·δ_d, 0, α_max), δ = mean − n* (easy, medium) or n* − mean (hard). With
    Δ = n − n*_d, margin m = max(1, f_d·max(n*_d, 1)), cap c = α_d·s_d, huber_κ and
    σ_T(x) = 1/(1 + e^{−x/T}) (κ_d, T_d per bucket), the entropy score S is
        easy, correct:     −min(c, huber_κ((Δ − m)₊)/(m + κ)·c)
        medium, correct:   −min(c, huber_κ((|Δ| − m)₊)/(m + κ)·c)
        hard, correct:     σ_T(Δ + m)·c if Δ ≥ −m, else −min(c, ½·huber_κ(−Δ − m)/(m + κ)·c)
        incorrect:         σ_T((Δ − m)₊)·c·g_d     (g = 0.6 easy, 0.8 medium, 1 hard)
    and A = group_norm(r + S) (unbiased std, ε = 1e-6). τ: the EMA τ ← 0.99·τ + 0.01·median_i(q95_i)
    of the batch median of each row's 95th-percentile window entropy, the count using the
    previous step's τ (the first step uses its own median). α and τ are state: computed in the
    call, committed by ``on_step_end``, saved by ``state_dict``.

    Source: shawn0728/ARES@146620e3 examples/reward_function/aepo.py:compute_score (the score and
    its constants f = .15/.25/.35, κ = 2/3/4, T = 2/2.5/3, s = 1/1/1.2), verl/trainer/
    ray_trainer.py:fit and update_difficulty_and_skip_gid_set (buckets, n*, α: init 0.5, η 0.05,
    [0, 2]; τ's EMA), vllm_rollout_spmd.py (counts, percentiles; config window_size 4).
    Deviations: the code counts only tokens on a 174-word trigger list (matching the top-1
    token); unipo cannot know words, so every token is a trigger unless ``trigger_ids`` (token
    ids of such words, matched against the sampled tokens) are given. H is π_old's full-vocabulary
    entropy from the old-log-prob pass (the code: vLLM's top-10 log-probs with a tail bucket). The
    first τ comes from the first batch (the code: a validation pass). In the released config
    (online filtering on) the training reward is the one computed for the filter, before
    difficulty is attached, so every row is scored as easy with n* = 0; this part applies the
    difficulty-aware reward the paper describes and the code's non-filtering path computes.
    Correctness is r > ``correct_above`` (the code's accuracy reward is 0/1).
    """

    needs_old_logprobs = True  # batch.entropies (π_old's, from the old-log-prob pass) before the advantage

    window: int = 4
    quantile: float = 0.95
    threshold_ema: float = 0.99
    correct_above: float = 0.5
    alpha_init: float = 0.5
    alpha_lr: float = 0.05
    alpha_max: float = 2.0
    margin_frac: tuple[float, float, float] = (0.15, 0.25, 0.35)
    kappa: tuple[float, float, float] = (2.0, 3.0, 4.0)
    temp: tuple[float, float, float] = (2.0, 2.5, 3.0)
    cap_scale: tuple[float, float, float] = (1.0, 1.0, 1.2)
    incorrect_gain: tuple[float, float, float] = (0.6, 0.8, 1.0)
    trigger_ids: tuple[int, ...] | None = None
    eps: float = 1e-6
    _book: DifficultyBook = field(default_factory=DifficultyBook, repr=False, compare=False, hash=False)
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 <= self.quantile <= 1 or not 0 <= self.threshold_ema < 1:
            raise ValueError(
                f"ares_advantage needs window ≥ 1, quantile in [0, 1] and threshold_ema in [0, 1), got "
                f"window={self.window}, quantile={self.quantile}, threshold_ema={self.threshold_ema}"
            )
        for name in ("margin_frac", "kappa", "temp", "cap_scale", "incorrect_gain"):
            if len(getattr(self, name)) != 3:
                raise ValueError(
                    f"ares_advantage {name} takes 3 values (easy, medium, hard), got {getattr(self, name)}"
                )
        if not 0 <= self.alpha_init <= self.alpha_max:
            raise ValueError(
                f"ares_advantage needs 0 ≤ alpha_init ≤ alpha_max, got {self.alpha_init}, {self.alpha_max}"
            )
        self._state.update(threshold=None, alpha=[float(self.alpha_init)] * 3, pending=None)

    @property
    def book(self) -> DifficultyBook:
        return self._book

    def entropy_score(self, n: float, target: float, bucket: int, correct: bool, alpha: float) -> float:
        """S for one row (see the class docstring; aepo.py:compute_score)."""
        delta = n - target
        margin = max(1.0, self.margin_frac[bucket] * max(target, 1.0))
        kappa, temp = self.kappa[bucket], self.temp[bucket]
        cap = alpha * self.cap_scale[bucket]
        if not correct:
            return _saturate(max(delta - margin, 0.0), temp) * cap * self.incorrect_gain[bucket]
        if bucket == HARD:
            if delta >= -margin:
                return _saturate(delta + margin, temp) * cap
            return -min(cap, 0.5 * _huber(-delta - margin, kappa) / (margin + kappa) * cap)
        excess = delta - margin if bucket == EASY else abs(delta) - margin
        return -min(cap, _huber(max(excess, 0.0), kappa) / (margin + kappa) * cap)

    def entropy_scores(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, Any]]:
        """S [B] and what it was computed from (bucket [B], counts [B], τ, the next τ, α, n*); no
        state changes."""
        if batch.rewards is None or batch.entropies is None:
            raise ValueError(
                "ares_advantage needs batch.rewards and batch.entropies (π_old's token entropies, which "
                "the old-log-prob pass fills because this part sets needs_old_logprobs)"
            )
        mask = batch.completion_mask.float()  # [B, T]
        ent = batch.entropies.float() * mask  # [B, T]
        correct = batch.rewards > self.correct_above  # [B]
        bucket = difficulty_buckets(correct, batch.group_ids)  # [B]
        rows = window_percentile(ent, mask, self.window, self.quantile)  # [B], NaN when empty
        batch_tau = float(torch.nanquantile(rows, 0.5)) if (~rows.isnan()).any() else 0.0
        last_tau = self._state["threshold"]
        tau = last_tau if last_tau is not None else batch_tau
        ema = self.threshold_ema
        next_tau = batch_tau if last_tau is None else ema * tau + (1 - ema) * batch_tau
        triggers = None
        if self.trigger_ids is not None:
            ids = torch.tensor(self.trigger_ids, dtype=batch.completion_ids.dtype, device=mask.device)
            triggers = torch.isin(batch.completion_ids, ids)
        counts = hwe_counts(ent, mask, self.window, tau, triggers).double().cpu()  # [B]
        idx, n = group_index(batch.group_ids)
        idx = idx.cpu()
        zeros = torch.zeros(n, dtype=torch.float64)
        size = zeros.index_add(0, idx, torch.ones(idx.numel(), dtype=torch.float64))  # [G] rows
        group_count = zeros.index_add(0, idx, counts) / size  # [G] mean trigger count
        group_bucket = torch.zeros(n, dtype=torch.long).index_copy_(0, idx, bucket.cpu())  # [G]
        alpha, target = list(self._state["alpha"]), [0.0, 0.0, 0.0]
        for d in range(3):
            members = group_count[group_bucket == d]  # this batch's groups of bucket d
            if members.numel() == 0:
                continue
            mean = float(members.mean())
            target[d] = float(torch.round(members.mean()))  # half to even, as Python's round
            step = mean - target[d] if d != HARD else target[d] - mean
            alpha[d] = min(max(alpha[d] + self.alpha_lr * step, 0.0), self.alpha_max)
        rows_in = zip(counts.tolist(), bucket.tolist(), correct.tolist())
        score = torch.tensor(
            [self.entropy_score(k, target[d], d, c, alpha[d]) for k, d, c in rows_in], dtype=torch.float32
        )  # [B]
        info = {"bucket": bucket, "counts": counts, "tau": tau, "next_tau": next_tau}
        info.update(alpha=alpha, target=target)
        return score.to(batch.rewards.device), info

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        score, info = self.entropy_scores(batch)  # [B]
        shaped = batch.rewards.float() + score  # [B]
        adv, metrics = GroupNorm(scale_by_std=True, eps=self.eps)(batch.replace(rewards=shaped))
        self._state["pending"] = {"threshold": info["next_tau"], "alpha": info["alpha"]}
        self._book.buckets = dict(zip(batch.group_ids.tolist(), info["bucket"].tolist()))
        metrics["advantage/ares_entropy_score"] = scalar(score.mean())
        metrics["advantage/ares_hwe_count"] = scalar(info["counts"].float().mean())
        metrics["advantage/ares_hwe_threshold"] = scalar(info["tau"])
        for d, name in enumerate(BUCKETS):
            metrics[f"advantage/ares_{name}_frac"] = scalar((info["bucket"] == d).float().mean())
            metrics[f"advantage/ares_alpha_{name}"] = scalar(info["alpha"][d])
        return adv, metrics

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        pending = self._state["pending"]
        if pending is not None:
            self._state.update(threshold=pending["threshold"], alpha=list(pending["alpha"]), pending=None)

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self._state["threshold"], "alpha": list(self._state["alpha"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        threshold = state["threshold"]
        self._state.update(
            threshold=None if threshold is None else float(threshold),
            alpha=[float(a) for a in state["alpha"]],
            pending=None,
        )


@register("regularizer", "ares_kl")
@dataclass(frozen=True)
class ARESDynamicKL:
    """ARES dynamic KL: c·β_d·KL(π_θ ‖ π_ref) per token, β_d the coefficient of the row's bucket.

    β_d adapts once per training step toward a per-bucket KL target D_d, from K_d = the mean over
    the step's rows of bucket d of their sequence-mean KL estimate:
        K̄_d ← (1 − λ)·K_d + λ·K̄_d   (K̄_d = K_d the first time),   e_d = K̄_d/D_d − 1
        if |e_d| ≥ dead-zone (and every ``update_every`` steps):
            ē_d ← (1 − λ)·e_d + λ·ē_d,   log β_d ← clip(log β_d + η·clip(ē_d, ±e_max), log β_min, log β_max)
    β_d, K̄_d, ē_d and the step count are state (``state_dict``). The row's bucket comes from the
    ``DifficultyBook`` the ``ares_advantage`` part fills (``check`` requires the two to share one);
    rows of a group it has not bucketed (LossInputs built by hand) use the medium β, as the code
    does for an unknown level.

    Source: shawn0728/ARES@146620e3 verl/workers/actor/dp_actor.py (``_update_beta_per_bucket``,
    ``_beta_for_levels``, ``update_policy``: kl_loss = β_row·low_var_kl, × kl_coef) with the
    actor defaults (β₀ 1, D 0.01 per bucket, λ 0.97, η 0.05, e_max 0.2, dead-zone 0.02, β ∈
    [1e-4, 100]) and experiments/AEPO/config.yaml (kl_coef 0.01, low_var_kl = k3,
    dynamic_kl_loss true). Deviation: the code updates inside each micro-batch, its EMAs and its
    100-call interval counted in micro-batches (per device; about one rollout step at the
    recipe's 8 GPUs, 512×8 rollouts, mini-batch 128 and micro-batch 4); here once per training
    step on the step's per-bucket mean (every step by default), so K̄'s EMA is slower per
    rollout. The code's "second-chance" relaxation of easy wrong rows needs a soft-cost field its
    actor never receives, so it never triggers there; not carried.
    """

    coef: float = 0.01
    estimator: KLEstimator = "k3"
    beta_init: float = 1.0
    target_kl: tuple[float, float, float] = (0.01, 0.01, 0.01)
    ema_decay: float = 0.97
    lr: float = 0.05
    error_clip: float = 0.2
    deadzone: float = 0.02
    beta_min: float = 1e-4
    beta_max: float = 100.0
    update_every: int = 1
    _book: DifficultyBook = field(default_factory=DifficultyBook, repr=False, compare=False, hash=False)
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"ares_kl estimator must be one of {', '.join(KL_ESTIMATORS)}, got {self.estimator!r}"
            )
        if not 0 < self.beta_min <= self.beta_init <= self.beta_max or self.update_every < 1:
            raise ValueError(
                f"ares_kl needs 0 < beta_min ≤ beta_init ≤ beta_max and update_every ≥ 1, got "
                f"{self.beta_min}, {self.beta_init}, {self.beta_max}, {self.update_every}"
            )
        if len(self.target_kl) != 3 or min(self.target_kl) <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(
                f"ares_kl needs 3 targets > 0 (easy, medium, hard) and ema_decay in [0, 1), got "
                f"{self.target_kl}, {self.ema_decay}"
            )
        self._state.update(beta=[float(self.beta_init)] * 3, last_kl=[None] * 3, e_ema=[0.0] * 3, calls=0)

    @property
    def needs_reference(self) -> bool:
        return self.coef != 0

    @property
    def beta(self) -> list[float]:
        return list(self._state["beta"])

    def check(self, algorithm: Any) -> str | None:
        if getattr(algorithm.advantage, "_book", None) is not self._book:
            return (
                f"ares_kl reads each row's difficulty from the DifficultyBook of the ares_advantage part "
                f"(advantage is {part_name(algorithm.advantage)!r}); build both with one _book= "
                "(as the ares preset does)"
            )
        return None

    def buckets(self, group_ids: Tensor) -> Tensor:  # [B] long; medium where the book has no entry
        book = self._book.buckets
        return torch.tensor([book.get(g, MEDIUM) for g in group_ids.tolist()], dtype=torch.long)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if self.coef == 0:
            return torch.zeros_like(x.logprobs), {}
        if x.ref_logprobs is None:
            raise ValueError("ares_kl needs ref_logprobs (the trainer computes them when coef != 0)")
        b = x.mask.shape[0]
        bucket = self.buckets(x.group_ids) if x.group_ids is not None else torch.full((b,), MEDIUM)
        beta = torch.tensor(self._state["beta"], dtype=x.logprobs.dtype)[bucket]  # [B]
        beta = beta.to(x.logprobs.device)
        kl = kl_estimate(x.logprobs, x.ref_logprobs, self.estimator)  # [B, T]
        seq_kl = (kl.detach() * x.mask).sum(1) / x.mask.sum(1).clamp(min=1)  # [B]
        metrics: Metrics = {"regularizer/kl_ref": scalar(masked_mean(kl.detach(), x.mask))}
        bucket = bucket.to(seq_kl.device)
        # sums and counts per bucket: their means over the step's micro-batches give the step's mean
        for d, name in enumerate(BUCKETS):
            rows = bucket == d
            metrics[f"regularizer/ares_kl_sum_{name}"] = scalar(seq_kl[rows].sum())
            metrics[f"regularizer/ares_kl_rows_{name}"] = scalar(rows.sum())
            metrics[f"regularizer/ares_beta_{name}"] = scalar(self._state["beta"][d])
        return self.coef * beta[:, None] * kl, metrics

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        s = self._state
        s["calls"] += 1
        for d, name in enumerate(BUCKETS):
            rows = float(metrics.get(f"regularizer/ares_kl_rows_{name}", 0.0))
            if rows <= 0:
                continue
            cur = float(metrics[f"regularizer/ares_kl_sum_{name}"]) / rows
            last = s["last_kl"][d] if s["last_kl"][d] is not None else cur
            mean_kl = (1 - self.ema_decay) * cur + self.ema_decay * last
            s["last_kl"][d] = mean_kl
            err = mean_kl / self.target_kl[d] - 1.0
            if abs(err) < self.deadzone or s["calls"] % self.update_every != 0:
                continue
            s["e_ema"][d] = (1 - self.ema_decay) * err + self.ema_decay * s["e_ema"][d]
            step = self.lr * min(max(s["e_ema"][d], -self.error_clip), self.error_clip)
            log_beta = math.log(min(max(s["beta"][d], self.beta_min), self.beta_max)) + step
            s["beta"][d] = math.exp(min(max(log_beta, math.log(self.beta_min)), math.log(self.beta_max)))

    def state_dict(self) -> dict[str, Any]:
        s = self._state
        return {
            "beta": list(s["beta"]),
            "last_kl": list(s["last_kl"]),
            "e_ema": list(s["e_ema"]),
            "calls": s["calls"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state.update(
            beta=[float(v) for v in state["beta"]],
            last_kl=[None if v is None else float(v) for v in state["last_kl"]],
            e_ema=[float(v) for v in state["e_ema"]],
            calls=int(state["calls"]),
        )
