"""Clipping and importance-ratio surrogates of the T2 seeds: BAPO (paper and code rules), HAPO
asymmetric adaptive clipping with differential advantage redistribution, a GRPO-Guard style
ratio normalization for LLM tokens, and OPMD / AsymRE regularized REINFORCE.

All are ``s(x: LossInputs) -> (per-token loss [B, T], metrics)``; adaptive bounds are chosen
per micro-batch, where the loss is computed (as the official verl codes do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, group_index, masked_mean, scalar
from unipo.parts.registry import register


def bounded_clip_loss(
    ratio: Tensor, adv: Tensor, lo: Tensor | float, hi: Tensor | float, dual: float | None
) -> Tensor:
    """ℓ = max(−A·ρ, −A·clamp(ρ, lo, hi)); for A < 0 and a dual clip c: ℓ = min(ℓ, −c·A).

    ``lo``/``hi`` are absolute ratio bounds (floats or [B, T] tensors), as verl's
    ``compute_policy_loss`` with (1 − ε_low, 1 + ε_high).
    """
    clipped = torch.minimum(
        torch.maximum(ratio, torch.as_tensor(lo, device=ratio.device)),
        torch.as_tensor(hi, device=ratio.device),
    )
    loss = torch.maximum(-adv * ratio, -adv * clipped)
    if dual is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual * adv), loss)
    return loss


def _bound_metrics(
    ratio: Tensor, adv: Tensor, mask: Tensor, lo: Tensor | float, hi: Tensor | float
) -> Metrics:
    return {
        "surrogate/clip_frac_low": scalar(masked_mean(((ratio < lo) & (adv < 0)).float(), mask)),
        "surrogate/clip_frac_high": scalar(masked_mean(((ratio > hi) & (adv > 0)).float(), mask)),
    }


# ------------------------------------------------------------------ BAPO
_BOUND_TOL = 1e-9  # float slack in Algorithm 1's "c + δ ≤ b" tests (0.6 + 15·0.02 must reach 0.9)


@register("surrogate", "bapo")
@dataclass(frozen=True)
class BAPO:
    """BAPO adaptive clipping, the paper's rule (Xi et al., arXiv 2510.18927, Eq. 8, Algorithm 1).

    Bounds are absolute ratio bounds. Objective values, clip included (Eq. 8's min(ρA, clip·A)):

        o_t = A_t·min(ρ_t, c_high)  if A_t > 0,     o_t = A_t·max(ρ_t, c_low)  if A_t < 0
        s   = Σ_{A>0} |o_t| / Σ_t |o_t|    (the paper's ρ; 1 when every A is 0: nothing to balance)

    Search (Algorithm 1, lines 9-17): start at (c_low, c_high) = (a⁻, a⁺); while s < ρ₀ and
    c_low + δ₂ ≤ b⁻: raise c_high by δ₁ if c_high + δ₁ ≤ b⁺, else raise c_low by δ₂. Then
    ℓ = max(−Aρ, −A·clip(ρ, c_low, c_high)) (no dual clip in the paper's J_BAPO).
    Defaults: §5, ρ₀ = 0.4, [a⁻, b⁻] = [0.6, 0.9], [a⁺, b⁺] = [1.2, 3.0], δ₁ = 0.05, δ₂ = 0.02
    (the README's ρ₀ = 0.5 is the released script's value, see ``bapo_code``).

    Reading of Eq. 8 (paper.pdf, WooooDyy/BAPO@58f8008): its denominator is printed as
    |Σ_t π_rollout(y_t)·o_t|, the magnitude of the *signed* sum, which is not a share (it exceeds 1
    and diverges as the two sides cancel); the text calls it "the contribution of positive signals",
    so the denominator here is Σ_t |o_t|. π_rollout(y_t) is the sampling weight of the expectation:
    sampled tokens enter unweighted, as in the released code. Consequence of measuring objective
    values: raising c_low never raises s (a negative token under c_low counts at c_low·|A| ≥ ρ|A|),
    so c_low ends at a⁻ when raising c_high reaches ρ₀, else at its last step ≤ b⁻. Bounds are
    chosen per micro-batch (the code's granularity; Algorithm 1 chooses them per update).
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    target: float = 0.4
    low_start: float = 0.6
    low_max: float = 0.9
    high_start: float = 1.2
    high_max: float = 3.0
    high_step: float = 0.05
    low_step: float = 0.02
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        if not (self.low_start <= self.low_max <= 1 <= self.high_start <= self.high_max):
            raise ValueError(f"bapo needs low_start ≤ low_max ≤ 1 ≤ high_start ≤ high_max, got {self}")
        if self.low_step <= 0 or self.high_step <= 0:
            raise ValueError(
                f"bapo low_step and high_step must be > 0 (Algorithm 1 would not end), got "
                f"{self.low_step}, {self.high_step}"
            )

    def candidates(self) -> list[tuple[float, float]]:
        """The bounds Algorithm 1 visits, in order, if s stays below ρ₀ all the way."""
        lo, hi = self.low_start, self.high_start
        out = [(lo, hi)]
        while lo + self.low_step <= self.low_max + _BOUND_TOL:
            if hi + self.high_step <= self.high_max + _BOUND_TOL:
                hi = min(hi + self.high_step, self.high_max)
            else:
                lo = min(lo + self.low_step, self.low_max)
            out.append((lo, hi))
        return out

    def shares(self, ratio: Tensor, adv: Tensor, mask: Tensor, bounds: list[tuple[float, float]]) -> Tensor:
        """s at each (c_low, c_high) of ``bounds`` → [K], from the valid tokens' objective values."""
        valid = mask.bool() & (adv != 0)
        r, a = ratio[valid].float(), adv[valid].float()  # [N]
        if r.numel() == 0:
            return torch.ones(len(bounds), device=ratio.device)
        lo = torch.tensor([b[0] for b in bounds], device=r.device)[:, None]  # [K, 1]
        hi = torch.tensor([b[1] for b in bounds], device=r.device)[:, None]
        pos = (a.clamp(min=0) * torch.minimum(r, hi)).sum(-1)  # [K] Σ_{A>0} |o|
        neg = ((-a).clamp(min=0) * torch.maximum(r, lo)).sum(-1)  # [K] Σ_{A<0} |o|
        return pos / (pos + neg)

    def bounds(self, x: LossInputs) -> tuple[float, float, float]:
        """(c_low, c_high, s at those bounds) for this micro-batch."""
        cands = self.candidates()
        share = self.shares(x.ratio.detach(), x.advantages, x.mask, cands).tolist()
        k = next((i for i, s in enumerate(share) if s >= self.target), len(cands) - 1)
        return cands[k][0], cands[k][1], share[k]

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        lo, hi, share = self.bounds(x)
        metrics = _bound_metrics(x.ratio.detach(), x.advantages, x.mask, lo, hi)
        metrics.update(
            {"surrogate/bapo_clip_low": lo, "surrogate/bapo_clip_high": hi, "surrogate/bapo_pos_share": share}
        )
        return bounded_clip_loss(x.ratio, x.advantages, lo, hi, self.dual_clip), metrics


@register("surrogate", "bapo_code")
@dataclass(frozen=True)
class BAPOCode:
    """BAPO adaptive clipping, the released code's rule (WooooDyy/BAPO recipe/bapo/policy_loss.py).

        eff_t = min(ρ, c_high)·A if A ≥ 0 else max(ρ, c_low)·A     (objective value, clip included)
        R     = Σ max(eff, 0) / (Σ max(−eff, 0) + 1e-8)            (∞ when there is no negative part)

    First raise c_low by ``low_step`` up to ``low_max`` while R < target; if still unmet, raise
    c_high by ``high_step`` up to ``high_max``. Then the dual-clip loss with clamp(ρ, c_low,
    c_high) and c = 3 (``clip_ratio_c``, verl's default). The target is a *ratio* P/N (1.0 ≈ a
    share of 0.5). Source: WooooDyy/BAPO@7287044 recipe/bapo/policy_loss.py
    (``compute_policy_loss_bapo``, ``_compute_effective_advantage``). Defaults: the recipe yaml
    (target 1.0, c_low 0.6 → 0.8, c_high 1.2 → 2.0, steps 0.05); run_bapo_example.sh passes
    ``target_pos_ratio=0.5`` (as the ratio P/N), c_low 0.8 → 0.95 and an upper step 0.1. Caution:
    measured on objective values, raising c_low *increases* the negative part, so R rarely
    improves until c_high moves. The code all-reduces P and N over data-parallel ranks; here
    they are the micro-batch's (one process).
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    target: float = 1.0
    low_start: float = 0.6
    low_max: float = 0.8
    high_start: float = 1.2
    high_max: float = 2.0
    low_step: float = 0.05
    high_step: float = 0.05
    dual_clip: float | None = 3.0
    eps: float = 1e-8

    def pos_neg_ratio(self, ratio: Tensor, adv: Tensor, mask: Tensor, lo: float, hi: float) -> float:
        eff = torch.where(adv >= 0, ratio.clamp(max=hi), ratio.clamp(min=lo)) * adv * mask  # [B, T]
        pos, neg = eff.clamp(min=0).sum(), (-eff).clamp(min=0).sum()
        return float("inf") if float(neg) <= 0 else float(pos / (neg + self.eps))

    def bounds(self, x: LossInputs) -> tuple[float, float, float]:
        """(c_low, c_high, P/N at those bounds) for this micro-batch."""
        ratio, adv, mask = x.ratio.detach(), x.advantages, x.mask
        lo, hi = self.low_start, self.high_start
        r = self.pos_neg_ratio(ratio, adv, mask, lo, hi)
        while r < self.target and lo < self.low_max and self.low_step > 0:
            lo = min(lo + self.low_step, self.low_max)
            r = self.pos_neg_ratio(ratio, adv, mask, lo, hi)
        while r < self.target and hi < self.high_max and self.high_step > 0:
            hi = min(hi + self.high_step, self.high_max)
            r = self.pos_neg_ratio(ratio, adv, mask, lo, hi)
        return lo, hi, r

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        lo, hi, r = self.bounds(x)
        metrics = _bound_metrics(x.ratio.detach(), x.advantages, x.mask, lo, hi)
        metrics.update({"surrogate/bapo_clip_low": lo, "surrogate/bapo_clip_high": hi,
                        "surrogate/bapo_pos_neg_ratio": min(r, 1e6)})  # fmt: skip
        return bounded_clip_loss(x.ratio, x.advantages, lo, hi, self.dual_clip), metrics


# ------------------------------------------------------------------ HAPO
@register("surrogate", "hapo_clip")
@dataclass(frozen=True)
class HAPOClip:
    """HAPO asymmetric adaptive clipping + differential advantage redistribution
    ("From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
    Liu et al., arXiv 2509.16591).

    Normalized entropy over the micro-batch's valid tokens, from H = current entropy (detached):
        h = (log H − q_pivot(log H)) / sqrt(mean (log H − q_pivot)²),  q "nearest"-interpolated
        ĥ = h / max(h) for h > 0,   ĥ = h / |min(h)| for h ≤ 0       → ĥ ∈ [−1, 1]
    Clipping:  ε_low,t = ε_low(1 − αĥ) if ĥ ≤ 0;   ε_high,t = ε_high(1 + αĥ) if ĥ > 0
    Advantage: A_ent = A(1 + βĥ); band = (1 − ε_low,t/2 < ρ < 1 + ε_high,t/2);
               ĥ > 0: A_ent outside the band, A inside;  ĥ ≤ 0: A_ent inside, A outside
    Loss: dual-clip PPO with the per-token bounds [1 − ε_low,t, 1 + ε_high,t]. A is the batch's
    advantage: in the ``hapo`` preset HAPO's token-level group average (``token_group_average``).

    Source: starriver030515/HAPO core_algos.py (``compute_entropy_h``, ``ada_clip``,
    ``ada_advantage``, ``compute_policy_loss``) and recipe/qwen3_8b.sh: α = β = 1, pivot 0.8,
    ε 0.2/0.2, dual clip c = 10, on the DAPO recipe. The released code scales h ≤ 0 by 1/min(h)
    (a negative number), which flips low-entropy tokens to ĥ > 0; ``repo_sign=True`` reproduces
    that, the default follows the paper's ĥ ∈ [−1, 1].

    Adaptive temperature sampling (``adaptive_temperature``, on in the recipes), per token at
    generation time: T_t = T₀(1 + clamp(ĥ_t, −1, 1)·τ), τ = 0.05, with ĥ_t from the entropy of
    the next-token distribution normalized by the last step's pivot/scale/max/min (state, saved
    with checkpoints; T₀ before the first step). The trainer hands ``token_temperature`` to the
    rollout engine for training rollouts only (``SamplingParams.token_temperature``; evaluation
    samples at its own fixed temperature). The code (vllm/v1/sample/sampler.py) takes the entropy
    of the raw logits (T = 1) and its normalization from the old-log-prob pass of the previous
    step, whose entropies are at T₀; this part uses the entropy at T₀ for both (the same at the
    recipes' T₀ = 1) and the normalization the update's micro-batches computed, averaged.
    Old log-probs: the code recomputes π_old with the actor at the one rollout temperature T₀
    (dp_actor.compute_log_prob, ``meta_info["temperature"]``; vLLM's rollout log-probs, taken
    from the raw logits, enter only a logged difference), so ρ = π_θ/π_old is not the exact
    importance ratio to the per-token-tempered sampling distribution; unipo does the same
    (π_old and π_θ at T₀), which keeps ρ = 1 on-policy.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    eps_low: float = 0.2
    eps_high: float = 0.2
    pivot: float = 0.8
    clip_alpha: float = 1.0
    adv_beta: float = 1.0
    dual_clip: float | None = 10.0
    temperature_tau: float = 0.05
    adaptive_temperature: bool = True
    repo_sign: bool = False
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not 0 <= self.pivot <= 1:
            raise ValueError(f"hapo_clip pivot is a quantile in [0, 1], got {self.pivot}")
        if not 0 <= self.temperature_tau < 1:
            raise ValueError(
                f"hapo_clip temperature_tau must be in [0, 1) (T > 0), got {self.temperature_tau}"
            )
        self._state.update(pivot=None, scale=1.0, pos_max=1.0, neg_min=-1.0)

    def _scale_h(self, h: Tensor, pos_max: Tensor | float, neg_min: Tensor | float) -> Tensor:
        neg_scale = 1.0 / neg_min if self.repo_sign else 1.0 / abs(neg_min)
        return torch.where(h > 0, h / pos_max, h * neg_scale)

    def h_hat(self, ent: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """ĥ [B, T] (no grad) and the normalization (log-H pivot, scale, max h, min h)."""
        valid = mask.bool()
        le = ent.detach().float().clamp(min=1e-8).log()
        piv = (
            torch.quantile(le[valid], self.pivot, interpolation="nearest")
            if valid.any()
            else le.new_zeros(())
        )
        h = le - piv
        scale = ((h**2 * valid).sum() / valid.sum().clamp(min=1)).clamp(min=1e-8).sqrt()
        h = h / scale
        pos_max = h.masked_fill(~(valid & (h > 0)), 0.0).max().clamp(min=1e-8)
        neg_min = h.masked_fill(~(valid & (h < 0)), 0.0).min().clamp(max=-1e-8)
        norm = {
            "pivot": float(piv),
            "scale": float(scale),
            "pos_max": float(pos_max),
            "neg_min": float(neg_min),
        }
        return self._scale_h(h, pos_max, neg_min) * mask, norm

    def token_temperature(self, entropy: Tensor, base_temperature: float) -> Tensor:
        """T_t = T₀·(1 + clamp(ĥ_t, −1, 1)·τ) for next-token entropies [n], with the last step's
        normalization (T₀ unchanged before the first step)."""
        s = self._state
        if s["pivot"] is None:
            return torch.full_like(entropy, base_temperature)
        h = (entropy.clamp(min=1e-8).log() - s["pivot"]) / s["scale"]
        return base_temperature * (
            1 + self._scale_h(h, s["pos_max"], s["neg_min"]).clamp(-1, 1) * self.temperature_tau
        )

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        keys = ("pivot", "scale", "pos_max", "neg_min")
        if all(f"surrogate/hapo_{k}" in metrics for k in keys):
            self._state.update({k: float(metrics[f"surrogate/hapo_{k}"]) for k in keys})

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state.update(state)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ent = x.entropies if x.entropies is not None else x.old_entropies
        if ent is None:
            raise ValueError("hapo_clip needs token entropies (LossInputs.entropies or old_entropies)")
        hh, norm = self.h_hat(ent, x.mask)  # [B, T]
        ratio, adv = x.ratio, x.advantages
        eps_lo = torch.where(
            hh <= 0, self.eps_low * (1 - self.clip_alpha * hh), torch.full_like(hh, self.eps_low)
        )
        eps_hi = torch.where(
            hh > 0, self.eps_high * (1 + self.clip_alpha * hh), torch.full_like(hh, self.eps_high)
        )
        r = ratio.detach()
        band = (r > 1 - eps_lo / 2) & (r < 1 + eps_hi / 2)
        adv_ent = adv * (1 + self.adv_beta * hh)
        new_adv = torch.where(hh > 0, torch.where(band, adv, adv_ent), torch.where(band, adv_ent, adv))
        loss = bounded_clip_loss(ratio, new_adv, 1 - eps_lo, 1 + eps_hi, self.dual_clip)
        metrics = _bound_metrics(r, new_adv, x.mask, 1 - eps_lo, 1 + eps_hi)
        metrics.update({f"surrogate/hapo_{k}": v for k, v in norm.items()})
        metrics["surrogate/hapo_h_hat_mean"] = scalar(masked_mean(hh, x.mask))
        return loss, metrics


# ------------------------------------------------------------------ GRPO-Guard
@register("surrogate", "ratio_norm_clip")
@dataclass(frozen=True)
class RatioNormClip:
    """GRPO-Guard RatioNorm adapted to LLM tokens, then the PPO clip (arXiv 2510.22319).

        log ρ̂_t = (log ρ_t − sg[μ_u])·s_u,    ρ̂ = exp(log ρ̂),    ℓ = max(−Aρ̂, −A·clip(ρ̂, 1−ε_l, 1+ε_h))

    with μ_u the mean log-ratio over the valid tokens of the unit u (``over``: the sequence, or
    the group's rows in the micro-batch). ``standardize`` also rescales every unit to the
    micro-batch's pooled spread: s_u = sg[(σ_pool + 1e-8)/(σ_u + 1e-8)], clamped to
    [1/max_scale, max_scale]; otherwise s_u = 1.

    ADAPTATION, not the paper's algorithm: GRPO-Guard targets flow-matching diffusion models,
    where it normalizes log ρ per denoising step (whose mean drifts below 0 and whose spread
    varies with the noise level σ_t) so the clip is balanced and step-consistent; it also
    reweights each step's gradient by ∝ 1/Δt, which has no token analogue and is not carried.
    Here a sequence (or group) plays the step's role; the formula the paper uses could not be
    checked (a third-party summary only: UNVERIFIED). On-policy (log ρ = 0) the
    loss and gradient equal PPO's.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    eps_low: float = 0.2
    eps_high: float = 0.2
    over: Literal["sequence", "group"] = "sequence"
    standardize: bool = False
    max_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.over not in ("sequence", "group") or self.max_scale < 1:
            raise ValueError(f"ratio_norm_clip needs over=sequence|group and max_scale ≥ 1, got {self}")

    def unit_index(self, x: LossInputs) -> tuple[Tensor, int]:  # [B] dense unit ids, count
        if self.over == "group":
            if x.group_ids is None:
                raise ValueError("ratio_norm_clip over='group' needs LossInputs.group_ids")
            return group_index(x.group_ids)
        return torch.arange(x.mask.shape[0], device=x.mask.device), x.mask.shape[0]

    def normalized_log_ratio(self, x: LossInputs) -> Tensor:  # [B, T]
        lr, m = x.log_ratio, x.mask
        idx, n = self.unit_index(x)
        d = lr.detach() * m
        cnt = torch.zeros(n, device=m.device).index_add_(0, idx, m.sum(1)).clamp(min=1)
        mu = torch.zeros(n, device=m.device).index_add_(0, idx, d.sum(1)) / cnt  # [n]
        centred = (lr - mu[idx][:, None]) * m
        if not self.standardize:
            return centred
        c = centred.detach()
        var_u = torch.zeros(n, device=m.device).index_add_(0, idx, (c**2).sum(1)) / cnt
        pool = ((c**2).sum() / m.sum().clamp(min=1)).sqrt()
        s = ((pool + 1e-8) / (var_u.sqrt() + 1e-8)).clamp(1 / self.max_scale, self.max_scale)
        return centred * s[idx][:, None]

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ratio = torch.exp(self.normalized_log_ratio(x))
        lo, hi = 1 - self.eps_low, 1 + self.eps_high
        metrics = _bound_metrics(ratio.detach(), x.advantages, x.mask, lo, hi)
        metrics["surrogate/norm_ratio_mean"] = scalar(masked_mean(ratio.detach(), x.mask))
        return bounded_clip_loss(ratio, x.advantages, lo, hi, None), metrics


# ------------------------------------------------------------------ OPMD / AsymRE
@register("surrogate", "regularized_reinforce")
@dataclass(frozen=True)
class RegularizedReinforce:
    """REINFORCE on log π with an off-policy regularizer ("Group-Relative REINFORCE Is Secretly
    an Off-Policy Algorithm", Yao et al.; Trinity-RFT REC policy loss).

        ℓ_t = −A_t·log π_θ(o_t) + R_t,  with no importance ratio and no clipping, and
        R_t = τ·(log π_θ(o_t) − log π_old(o_t))²   "k2": OPMD (Kimi k1.5's mirror descent; the ½
                                                    is absorbed into τ, as Trinity's comment says)
        R_t = −τ·log π_θ(o_t)                       "forward_kl": AsymRE, equal to lowering the
                                                    baseline by τ: −(A + τ)·log π
        R_t = 0                                     "none": plain group-relative REINFORCE

    Source: modelscope/Trinity-RFT ``rec`` policy loss (``regularizer`` "k2" / "forward-kl",
    ``weight`` none, ``clip_mode`` none) and ``asymre`` advantage (baseline shift −0.1).
    On-policy the gradient is −A·∇log π (REINFORCE); off-policy the samples are reused without
    importance weights, which the paper argues is the regularized off-policy objective.
    """

    regularizer: Literal["none", "k2", "forward_kl"] = "k2"
    coef: float = 1.0

    def __post_init__(self) -> None:
        if self.regularizer not in ("none", "k2", "forward_kl"):
            raise ValueError(
                f"regularized_reinforce regularizer must be none|k2|forward_kl, got {self.regularizer!r}"
            )

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        pg = -x.advantages * x.logprobs  # [B, T]
        if self.regularizer == "k2":
            reg = self.coef * (x.logprobs - x.old_logprobs) ** 2
        elif self.regularizer == "forward_kl":
            reg = -self.coef * x.logprobs
        else:
            reg = torch.zeros_like(pg)
        return pg + reg, {"surrogate/reinforce_reg": scalar(masked_mean(reg.detach(), x.mask))}
