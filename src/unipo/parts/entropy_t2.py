"""Entropy-control parts of the T2 seeds: Lp-Reg, SIREN, Light-IF (TEA-RL), SPINE's entropy
band, STEER token weights; AEPO (Arbitrary-Entropy PO) lives in ``unipo.parts.aepo`` and is
re-exported here.

Statistics of the full next-token distribution beyond the entropy (the min-p proxy, top-p
entropy) come from ``LossInputs.stats`` / ``old_stats``, filled by the update loop for the
names a part lists in ``token_stats`` / ``old_token_stats`` (``unipo.train.logprobs.TOKEN_STATS``).
Selections inside the loss are made within the micro-batch, as the official (verl) codes do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from unipo.parts.aepo import AEPOAdvantage  # noqa: F401  (re-exported; importing it registers "aepo")
from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar, token_stat
from unipo.parts.registry import register
from unipo.parts.regularizers import kl_estimate
from unipo.parts.weights import token_covariance


def _lowest_k(values: Tensor, cand: Tensor, ratio: float) -> Tensor:  # [B, T] bool
    """The k = max(1, ⌊ratio·N⌋) lowest ``values`` among the N candidate positions (none if ratio = 0)."""
    out = torch.zeros_like(cand)
    n = int(cand.sum())
    if ratio <= 0 or n == 0:
        return out
    k = max(1, int(n * ratio))
    idx = cand.nonzero()  # [N, 2]
    low = torch.topk(values[cand], k, largest=False).indices
    out[idx[low, 0], idx[low, 1]] = True
    return out


@register("regularizer", "lp_reg")
@dataclass(frozen=True)
class LpReg:
    """Lp-Reg low-probability regularization (Huang et al., arXiv 2510.03222).

    Proxy: π_proxy = π_old filtered by min-p (keep π ≥ κ·max π, renormalize), read as the
    statistic ``minp_logprob:<κ>`` of π_old. Selected tokens, within the micro-batch: among the
    valid tokens with A < 0 (``neg_ratio``; A > 0 with ``pos_ratio``, off by default), the
    k = max(1, ⌊ratio·N⌋) lowest by log π_θ, then only those with π_θ(o_t) < π_proxy(o_t)
    (filtered "noise" tokens have π_proxy ≈ 0 and are not protected). On them:

        term_t = β·k3(π_θ, π_proxy) = β·(π_proxy/π_θ − log(π_proxy/π_θ) − 1)   (verl low_var_kl)

    With the ``ppo_clip`` surrogate at ε_low = 1, ε_high = 9 (the scripts' [0, 10] bounds) the
    surrogate of an A < 0 token is exactly −A·ρ, so surrogate + term equals the official
    ``compute_policy_loss_lp_reg`` (−A·ρ + β·KL on selected tokens, clipped loss elsewhere).
    Source: CarlanLark/Lp-Reg-dev core_algos.py / dp_actor.py ``apply_min_p``; defaults κ = 0.02,
    ρ⁻ = 0.01 (14B; 0.005 for 32B), ρ⁺ = 0, β = 1. Deviation: the code skips a class when
    k = 1 (its guard ``k > 1`` is also how ρ⁺ = 0 turns positives off); here ratio 0 turns a
    class off and k = 1 is applied, so small batches still regularize.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    kappa: float = 0.02
    neg_ratio: float = 0.01
    pos_ratio: float = 0.0
    coef: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.kappa < 1:
            raise ValueError(f"lp_reg kappa (min-p threshold) must be in (0, 1), got {self.kappa}")
        if not (0 <= self.neg_ratio <= 1 and 0 <= self.pos_ratio <= 1):
            raise ValueError(f"lp_reg ratios must be in [0, 1], got {self.neg_ratio}, {self.pos_ratio}")

    @property
    def old_token_stats(self) -> tuple[str, ...]:
        return (f"minp_logprob:{self.kappa}",)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        proxy = token_stat(x.old_stats, self.old_token_stats[0], "lp_reg")  # [B, T] log π_proxy(o_t)
        valid = x.mask.bool()
        logp = x.logprobs.detach()
        sel = _lowest_k(logp, valid & (x.advantages < 0), self.neg_ratio)
        sel |= _lowest_k(logp, valid & (x.advantages > 0), self.pos_ratio)
        sel &= logp < proxy  # only tokens the proxy keeps (π_θ < π_proxy)
        kl = kl_estimate(x.logprobs, proxy, "k3")  # [B, T] k3(π_θ ‖ π_proxy)
        term = torch.where(sel, self.coef * kl, torch.zeros_like(kl))
        n_sel = sel.sum().clamp(min=1)
        return term, {
            "regularizer/lp_reg_frac": scalar(sel.sum() / valid.sum().clamp(min=1)),
            "regularizer/lp_reg_kl": scalar((kl.detach() * sel).sum() / n_sel),
        }


@register("regularizer", "siren")
@dataclass(frozen=True)
class Siren:
    """SIREN selective, self-anchored entropy regularization (arXiv 2509.25133).

        H^p_t = top-p entropy (top-10 000 logits, nucleus of cumulative mass < p, renormalized)
        M_t   = 1[H^p_t > q_{mask_ratio}(H^p of the same response)]   (peak-entropy mask)
        h_i   = mean of H^p over M_t in response i; 0 when M selects none of its tokens
        unit "response":     R = λ·(1/N)·Σ_i (h_i − a)²
        unit "micro_batch":  R = λ·(b/N)·(H̄ − a)²,   H̄ = (1/b)·Σ_i h_i over the b rows given

    N = rows of the accumulated batch (``x.num_seqs``), a = the anchor. R is ``aggregated``
    (``parts/base.py``): added to the aggregated loss, so no aggregate's length normalization
    rescales λ. H^p is the statistic ``topp_entropy:<p>`` of π_θ (with gradient).

    Source: Linn3a/siren@fa59a8d verl/verl/workers/actor/dp_actor.py ``update_policy``
    (``mask_by_quantile`` with ``nanquantile``; H̄ = ``agg_loss(..., "seq-mean-token-mean")`` of
    core_algos.py, which counts a row without selected tokens as 0 and keeps it in the mean;
    ``policy_loss = pg_loss + entropy_coeff·(H̄ − anchor)²`` per micro-batch, scaled by
    len(micro-batch)/ppo_mini_batch_size) and exp_scripts/siren.sh (p = 0.8, mask_ratio = 0.8,
    λ = ``entropy_coeff`` = 0.005). "micro_batch" is that term for the micro-batches it is given;
    the authors' are token-budgeted (``use_dynamic_bsz``, 4096 tokens with the prompt: one to a
    few responses each), so "response" (the default) is their term at one response per
    micro-batch, and does not depend on how unipo splits the batch.
    Anchor: the code measures H̄ once, on the whole step-1 batch in the old-log-prob pass; here
    it is the step-0 mean of the micro-batches' H̄ (``on_step_end``; the metric
    ``regularizer/siren_entropy``), and R is 0 (no gradient) until it is set. Stateful: the
    anchor is saved by ``state_dict()``.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order
    aggregated = True  # returns the 0-dim R, added after the aggregate

    p: float = 0.8
    mask_ratio: float = 0.8
    coef: float = 0.005
    unit: Literal["response", "micro_batch"] = "response"
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not (0 < self.p <= 1 and 0 <= self.mask_ratio < 1):
            raise ValueError(f"siren needs 0 < p ≤ 1 and 0 ≤ mask_ratio < 1, got {self.p}, {self.mask_ratio}")
        if self.unit not in ("response", "micro_batch"):
            raise ValueError(f"siren unit must be 'response' or 'micro_batch', got {self.unit!r}")
        self._state["anchor"] = None

    @property
    def token_stats(self) -> tuple[str, ...]:
        return (f"topp_entropy:{self.p}",)

    @property
    def anchor(self) -> float | None:
        return self._state["anchor"]

    def row_entropy(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(h_i [B] with grad, 0 for a row whose peak mask is empty; the peak mask [B, T] bool)."""
        valid = mask.bool()
        hd = h.detach().float()
        q = torch.nanquantile(hd.masked_fill(~valid, math.nan), self.mask_ratio, dim=-1, keepdim=True)
        sel = valid & (hd > q)  # [B, T]; a row without valid tokens has q = nan → none
        per_row = torch.where(sel, h, torch.zeros_like(h)).sum(-1) / sel.sum(-1).clamp(min=1)  # [B]
        return per_row, sel

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if self._state["anchor"] is None and "regularizer/siren_entropy" in metrics:
            self._state["anchor"] = float(metrics["regularizer/siren_entropy"])

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state["anchor"] = None if state["anchor"] is None else float(state["anchor"])

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        h = token_stat(x.stats, self.token_stats[0], "siren")  # [B, T] top-p entropy of π_θ, with grad
        per_row, sel = self.row_entropy(h, x.mask)  # [B]
        b = per_row.shape[0]
        h_bar = per_row.sum() / max(b, 1)  # the code's seq-mean-token-mean: empty rows count as 0
        if self.anchor is None:
            term = per_row.sum() * 0.0  # step 0: no anchor yet, no term and no gradient
        elif self.unit == "micro_batch":
            term = self.coef * (b / x.num_seqs) * (h_bar - self.anchor) ** 2
        else:
            term = self.coef * ((per_row - self.anchor) ** 2).sum() / x.num_seqs
        metrics: Metrics = {
            "regularizer/siren_entropy": scalar(h_bar),
            "regularizer/siren_frac": scalar(sel.sum() / x.mask.sum().clamp(min=1)),
        }
        if self.anchor is not None:
            metrics["regularizer/siren_anchor"] = scalar(self.anchor)
        return term, metrics


@register("regularizer", "light_if_entropy")
@dataclass(frozen=True)
class LightIFEntropy:
    """Light-IF TEA-RL token-wise entropy-adaptive bonus (arXiv 2508.03178).

        Cov_t = (A_t − mean A)·(log π_t − mean log π)      (means over the micro-batch's valid tokens)
        c_t   = clamp(α·softmax_t(Cov of the same response), 0, c_max)
        term_t = −c_t·H_t       (maximizes entropy where the token covaries most with A)

    Source: Qihoo360/Light-IF rl/verl core_algos.py ``compute_entropy_with_cov`` (α =
    ``cov_alpha`` = 10, c_max = ``clip_cov_ub`` = 5; the actor subtracts the aggregated term
    from the PG loss with no further coefficient). Deviations: the coefficient c_t is detached
    (the code lets gradient flow through log π inside the softmax, which the paper's
    "entropy-adaptive coefficient" does not call for), and the dispatch bug in the released
    dp_actor.py (an undefined ``entropy_mode``) is not reproduced. The paper's Entropy-SFT
    stage is an SFT-trainer change and is not part of this term.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    alpha: float = 10.0
    coef_max: float = 5.0

    needs_entropy_grad = True

    def coefficients(self, x: LossInputs) -> Tensor:  # [B, T], no grad, 0 on padding
        cov = token_covariance(x).masked_fill(~x.mask.bool(), -math.inf)
        soft = torch.softmax(cov, dim=-1).nan_to_num(0.0)  # rows with no valid token → 0
        return (self.alpha * soft).clamp(0.0, self.coef_max) * x.mask

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.entropies is None:
            raise ValueError("light_if_entropy needs current-policy entropies with grad")
        c = self.coefficients(x)
        return -c * x.entropies, {
            "regularizer/light_if_coef": scalar(masked_mean(c, x.mask)),
            "regularizer/entropy": scalar(masked_mean(x.entropies.detach(), x.mask)),
        }


@register("regularizer", "entropy_band")
@dataclass(frozen=True)
class EntropyBand:
    """SPINE entropy-band regularizer at forking tokens (arXiv 2511.17938).

        F_t    = 1[H_t among the top ⌈ρ·N⌉ entropies of the micro-batch]    (as ``forking_tokens``)
        term_t = λ·F_t·[(h_low − H_t)₊² + (H_t − h_high)₊²]

    raising entropy that fell below the band and lowering entropy above it. UNVERIFIED: only
    the abstract was readable (the code was announced, not found); the squared hinge, the band
    [0.5, 2.0] nats and λ = 0.01 are this library's choices, not the paper's.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    h_low: float = 0.5
    h_high: float = 2.0
    coef: float = 0.01
    rho: float = 0.2

    needs_entropy_grad = True

    def __post_init__(self) -> None:
        if self.h_low > self.h_high or not 0 < self.rho <= 1:
            raise ValueError(f"entropy_band needs h_low ≤ h_high and 0 < rho ≤ 1, got {self}")

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.entropies is None:
            raise ValueError("entropy_band needs current-policy entropies with grad")
        h = x.entropies  # [B, T]
        valid = x.mask.bool()
        fork = torch.zeros_like(valid)
        n = int(valid.sum())
        if n:
            k = max(1, math.ceil(n * self.rho - 1e-9))
            idx = valid.nonzero()
            top = torch.topk(h.detach()[valid], k).indices
            fork[idx[top, 0], idx[top, 1]] = True
        band = (self.h_low - h).clamp(min=0) ** 2 + (h - self.h_high).clamp(min=0) ** 2
        term = self.coef * band * fork
        return term, {
            "regularizer/band_below_frac": scalar(
                masked_mean((h.detach() < self.h_low).float(), fork.float())
            ),
            "regularizer/band_above_frac": scalar(
                masked_mean((h.detach() > self.h_high).float(), fork.float())
            ),
        }


@register("token_weight", "steer")
@dataclass(frozen=True)
class Steer:
    """STEER entropy-change-aware token reweighting (arXiv 2510.10150).

        Ω_t = (A_t/π_old(o_t))·π_θ(o_t)(1 − π_θ(o_t))·(log π_θ(o_t) + H_t)    (token's entropy change)
        exp mode:    k = −ln(w_min)/max(max|Ω|, 0.02),  w = clamp(exp(−k|Ω|), w_min, 1)
        linear mode: w = w_max − (|Ω| − min|Ω|)/(max|Ω| − min|Ω|)·(w_max − w_min), clamped

    max/min over the micro-batch's valid tokens; π clamped to [1e-8, 1 − 1e-8], π_old ≥ 1e-8,
    non-finite Ω → 0. Source: zz-haooo/STEER@b31df71 verl/trainer/ppo/core_algos.py
    ``compute_token_weights`` / ``compute_policy_loss_with_entropy``. H is π_old's entropy
    (``x.old_entropies``, else ``x.entropies``): the code's actor reads the ``entropys`` the
    trainer stored from the old-log-prob pass (dp_actor.py ``update_policy``), not the current
    policy's. Defaults: run/run_exp.sh, exponential mode with w_min = 0.8 (run_linear.sh: linear
    mode, 0.8 / 1.2).
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    w_min: float = 0.8
    w_max: float = 1.2
    mode: Literal["exp", "linear"] = "exp"

    def __post_init__(self) -> None:
        if self.mode not in ("exp", "linear") or not 0 < self.w_min <= self.w_max:
            raise ValueError(f"steer needs mode exp|linear and 0 < w_min ≤ w_max, got {self}")

    def omega(self, x: LossInputs) -> Tensor:  # [B, T] |Ω|, no grad
        ent = x.old_entropies if x.old_entropies is not None else x.entropies
        if ent is None:
            raise ValueError("steer needs token entropies (LossInputs.entropies or old_entropies)")
        p = x.logprobs.detach().exp().clamp(1e-8, 1 - 1e-8)
        p_old = x.old_logprobs.detach().exp().clamp(1e-8, 1.0)
        om = (x.advantages / p_old) * p * (1 - p) * (p.log() + ent.detach())
        return torch.where(torch.isfinite(om), om, torch.zeros_like(om)).abs()

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        om = self.omega(x)
        valid = x.mask.bool()
        w = torch.zeros_like(x.mask)
        if not valid.any():
            return w, {"token_weight/steer_mean": scalar(0.0)}
        v = om[valid]
        if self.mode == "linear":
            lo, hi = v.min(), v.max()
            if hi > lo:
                vw = self.w_max - (v - lo) * (self.w_max - self.w_min) / (hi - lo)
            else:
                vw = torch.full_like(v, (self.w_min + self.w_max) / 2)
            vw = vw.clamp(self.w_min, self.w_max)
        else:
            k = -math.log(self.w_min) / v.max().clamp(min=0.02)
            vw = torch.exp(-k * v).clamp(self.w_min, 1.0)
        w[valid] = vw.to(w.dtype)
        return w, {
            "token_weight/steer_mean": scalar(vw.mean()),
            "token_weight/steer_omega_max": scalar(v.max()),
        }
