"""Entropy-dynamics diagnostics: pure functions on [B, T] tensors, each returning floats by name.

Every function takes per-token tensors of one (micro-)batch, with ``mask`` [B, T] = 1 on
completion tokens, and returns ``{"namespace/what": float}``; nothing here keeps gradients.
An empty mask gives NaN values (the plots skip them), never a silent 0.

    entropy_stats            distribution of token entropy, forking-token share, ARES window max
    covariance_term          Cov(log π, A) over the batch's tokens (Cui et al., arXiv 2505.22617)
    predicted_entropy_change ΔH ≈ −η·Cov(log π, A)  (and the vanilla-PG form)
    ratio_stats              importance-ratio quantiles, clip fractions, BAPO positive share
    entropy_change_record    one (predicted, measured) pair of entropy change
    EntropyDynamics          accumulates those pairs over steps; their Pearson correlation
    RunDiagnostics           EntropyDynamics + the entropy-law refit (law.py), one per trainer

Formulas and how to read each value: docs/diagnostics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unipo.diagnostics.law import EntropyLawTracker

NAN = float("nan")
# The 80th percentile of token entropy (nats) that Wang et al. (arXiv 2506.01939, §2) report for
# Qwen3-8B's chain-of-thought tokens on math problems; tokens above it are their "forking" tokens.
FORKING_THRESHOLD = 0.672
QUANTILES = (0.1, 0.5, 0.8, 0.9, 0.99)


def _valid(values: Tensor, mask: Tensor) -> Tensor:  # [N] float32 values at masked positions
    return values.detach()[mask.bool()].float()


def _quantiles(v: Tensor, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of a 1-D tensor by linear interpolation (as torch.quantile, with no size limit)."""
    if v.numel() == 0:
        return [NAN] * len(qs)
    s = torch.sort(v).values  # [N]
    pos = torch.tensor(qs, dtype=torch.float64, device=s.device) * (s.numel() - 1)  # [Q]
    lo, hi = pos.floor().long(), pos.ceil().long()
    frac = (pos - lo).to(s.dtype)
    return (s[lo] + (s[hi] - s[lo]) * frac).tolist()


def _key(q: float) -> str:  # 0.1 → "p10", 0.99 → "p99", 0.01 → "p01"
    return f"p{round(q * 100):02d}"


def high_window_mean(entropies: Tensor, mask: Tensor, window: int = 4) -> float:
    """ARES-style high-window entropy of a batch: mean over sequences of max_j mean(H_j..H_{j+w−1}).

    For each sequence, the mean entropy of every run of ``window`` consecutive valid tokens; its
    maximum is the sequence's most uncertain stretch. A sequence shorter than the window counts
    its whole-sequence mean; empty rows are left out. w = 4 follows the window of the ARES code
    (shawn0728/ARES ``compute_reasoning_token_window_entropy``, arXiv 2510.08457), as does the
    ``high_window_entropy`` token weight; ARES thresholds these window means per response,
    whereas this summary takes their maximum (one number per sequence, averaged).
    """
    m = mask.float()
    h = torch.where(mask.bool(), entropies.detach().float(), 0.0)  # [B, T], padding may hold NaN
    lengths = m.sum(1)  # [B]
    rows = lengths > 0
    if not bool(rows.any()):
        return NAN
    row_mean = h.sum(1) / lengths.clamp(min=1)  # [B]
    best = row_mean.clone()
    if h.shape[1] >= window:
        sums = h.unfold(1, window, 1).sum(-1)  # [B, T−w+1]
        full = m.unfold(1, window, 1).sum(-1) == window  # [B, T−w+1] all w tokens valid
        wmax = (sums / window).masked_fill(~full, -math.inf).max(1).values  # [B]
        best = torch.where(full.any(1), wmax, row_mean)
    return float(best[rows].mean())


def entropy_stats(
    entropies: Tensor,
    mask: Tensor,
    forking_threshold: float = FORKING_THRESHOLD,
    window: int = 4,
) -> dict[str, float]:
    """Token-entropy distribution of a batch; ``entropies`` [B, T] are full-vocabulary H_t (nats).

    entropy/mean                 Σ m·H / Σ m
    entropy/p10 … entropy/p99    quantiles of H over valid tokens (p80 is the 80/20 paper's τ)
    entropy/forking_share        share of valid tokens with H_t ≥ ``forking_threshold``
    entropy/high_window_mean     ``high_window_mean(entropies, mask, window)``

    forking_share uses a *fixed* threshold, default 0.672 nats: the 80th percentile that Wang
    et al. (arXiv 2506.01939) report for Qwen3-8B. A per-batch quantile would make the share
    constant (≈ 0.2) by construction; a fixed one shows the high-entropy mass growing or
    collapsing during training. The value is model- and tokenizer-specific: compare runs of
    the same model, and read ``entropy/p80`` for this batch's own 80/20 threshold.
    """
    h = _valid(entropies, mask)  # [N]
    out = {"entropy/mean": float(h.mean()) if h.numel() else NAN}
    out.update({f"entropy/{_key(q)}": v for q, v in zip(QUANTILES, _quantiles(h, QUANTILES))})
    out["entropy/forking_share"] = float((h >= forking_threshold).float().mean()) if h.numel() else NAN
    out["entropy/high_window_mean"] = high_window_mean(entropies, mask, window)
    return out


def _cov(x: Tensor, y: Tensor) -> float:  # population covariance of two [N] tensors
    if x.numel() == 0:
        return NAN
    return float(((x - x.mean()) * (y - y.mean())).mean())


def covariance_term(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> dict[str, float]:
    """entropy/cov_logp_adv = (1/N) Σ_i (log π(y_i) − mean log π)(A_i − mean A) over the N valid tokens.

    The token covariance of Cui et al., "The Entropy Mechanism of RL for Reasoning LMs"
    (arXiv 2505.22617), as Clip-Cov / KL-Cov compute it (PRIME-RL/Entropy-Mechanism-of-RL
    core_algos.py; FORMULAS-rlvr §6). Positive: confident tokens are being reinforced and
    unlikely ones penalised, which lowers entropy.
    """
    return {"entropy/cov_logp_adv": _cov(_valid(logprobs, mask), _valid(advantages, mask))}


def predicted_entropy_change(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, lr_scale: float = 1.0
) -> dict[str, float]:
    """First-order entropy change of one update, from Cui et al. (arXiv 2505.22617, §3).

    entropy/pred_change          −η · Cov(log π, A)        (softmax policy, natural policy gradient)
    entropy/pred_change_vanilla  −η · Cov(log π, π·A)      (softmax policy, vanilla policy gradient)
    entropy/cov_logp_padv        Cov(log π, π·A), π = exp(log π)

    The covariances are token covariances over the batch (``covariance_term``), a proxy for the
    paper's per-state Cov_{a~π}. η (``lr_scale``) is an effective step size in logit space that
    the caller supplies; for an LLM trained with Adam it is unknown, so only the sign of the
    prediction and its correlation with the measured change (``EntropyDynamics``) are meaningful
    at a fixed η; the magnitude is not a forecast in nats.
    """
    lp, a = _valid(logprobs, mask), _valid(advantages, mask)
    cov, cov_p = _cov(lp, a), _cov(lp, lp.exp() * a)
    return {
        "entropy/pred_change": -lr_scale * cov,
        "entropy/pred_change_vanilla": -lr_scale * cov_p,
        "entropy/cov_logp_padv": cov_p,
    }


def entropy_diagnostics(
    entropies: Tensor, logprobs: Tensor, advantages: Tensor, mask: Tensor, lr_scale: float = 1.0
) -> dict[str, float]:
    """``entropy_stats`` + ``covariance_term`` + ``predicted_entropy_change`` in one dict."""
    return {
        **entropy_stats(entropies, mask),
        **covariance_term(logprobs, advantages, mask),
        **predicted_entropy_change(logprobs, advantages, mask, lr_scale),
    }


def ratio_stats(
    ratio: Tensor, mask: Tensor, adv: Tensor, eps_low: float = 0.2, eps_high: float = 0.2
) -> dict[str, float]:
    """Importance ratio ρ = π_θ/π_old [B, T] against the advantages [B, T].

    ratio/p01, ratio/p50, ratio/p99, ratio/max   distribution of ρ over valid tokens
    clip/low_frac    share of valid tokens with A < 0 and ρ < 1 − ε_low (the clip is active)
    clip/high_frac   share of valid tokens with A > 0 and ρ > 1 + ε_high
    pg/pos_share     P / (P + N): P = Σ max(e, 0), N = Σ max(−e, 0), with the objective value
                     e = min(ρ, 1+ε_high)·A if A ≥ 0 else max(ρ, 1−ε_low)·A

    The clip fractions match the surrogates' ``surrogate/clip_frac_*`` (verl's definition).
    pos_share is BAPO's positive contribution share (arXiv 2510.18927; FORMULAS-rlvr §8),
    computed on clipped values as the official WooooDyy/BAPO ``policy_loss.py`` does; with
    ε → ∞ it is Σ_{A>0}|ρA| / Σ|ρA|. Below 0.5, negative samples dominate the update.
    """
    valid = mask.bool()
    r, a = ratio.detach().float()[valid], adv.detach().float()[valid]  # [N]
    out = {f"ratio/{_key(q)}": v for q, v in zip((0.01, 0.5, 0.99), _quantiles(r, (0.01, 0.5, 0.99)))}
    if r.numel() == 0:
        return {**out, "ratio/max": NAN, "clip/low_frac": NAN, "clip/high_frac": NAN, "pg/pos_share": NAN}
    out["ratio/max"] = float(r.max())
    out["clip/low_frac"] = float(((r < 1 - eps_low) & (a < 0)).float().mean())
    out["clip/high_frac"] = float(((r > 1 + eps_high) & (a > 0)).float().mean())
    eff = torch.where(a >= 0, r.clamp(max=1 + eps_high) * a, r.clamp(min=1 - eps_low) * a)  # [N]
    pos, neg = float(eff.clamp(min=0).sum()), float((-eff).clamp(min=0).sum())
    out["pg/pos_share"] = pos / (pos + neg) if pos + neg > 0 else NAN
    return out


def entropy_change_record(h_before: float, h_after: float, predicted: float) -> dict[str, float]:
    """One step's pair: measured ΔH = h_after − h_before (mean token entropy of the *same* batch
    under the policy before and after the update) and the predicted ΔH of that update."""
    return {"entropy/change_measured": h_after - h_before, "entropy/change_predicted": predicted}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r of two equal-length series (NaN below 3 points or for a constant series)."""
    n = len(x)
    if n < 3:
        return NAN
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else NAN


class EntropyDynamics:
    """(predicted, measured) entropy changes across steps, and how well they agree.

    ``update(pred, measured)`` adds a pair (non-finite pairs are ignored); ``correlation()`` is
    their Pearson r (NaN with fewer than 3 pairs or a constant series). ``step(...)`` is the
    per-step call for a trainer: with ``h_after`` the pair is exact (same batch re-scored after
    the update); without it, measured = this step's h_before − the previous step's h_before,
    paired with the previous step's prediction (free, but noisier: the batches differ).
    """

    def __init__(self) -> None:
        self.predicted: list[float] = []
        self.measured: list[float] = []
        self._last: tuple[float, float] | None = None  # (h_before, predicted) of the previous step

    def update(self, pred: float, measured: float) -> None:
        if math.isfinite(pred) and math.isfinite(measured):
            self.predicted.append(float(pred))
            self.measured.append(float(measured))

    def correlation(self) -> float:
        return pearson(self.predicted, self.measured)

    def sign_agreement(self) -> float:
        """Share of pairs whose predicted and measured changes have the same sign."""
        if not self.predicted:
            return NAN
        same = sum((p > 0) == (m > 0) for p, m in zip(self.predicted, self.measured))
        return same / len(self.predicted)

    def step(self, h_before: float, predicted: float, h_after: float | None = None) -> dict[str, float]:
        """Record one training step; returns its ``entropy/change_*`` values and the running stats."""
        out: dict[str, float] = {}
        if h_after is not None:
            out = entropy_change_record(h_before, h_after, predicted)
        elif self._last is not None:
            out = entropy_change_record(self._last[0], h_before, self._last[1])
        self._last = (float(h_before), float(predicted))
        if out:
            self.update(out["entropy/change_predicted"], out["entropy/change_measured"])
        return {**out, **self.metrics()}

    def metrics(self) -> dict[str, float]:
        return {
            "entropy/dyn_corr": self.correlation(),
            "entropy/dyn_sign_agree": self.sign_agreement(),
            "entropy/dyn_points": float(len(self.predicted)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"predicted": list(self.predicted), "measured": list(self.measured), "last": self._last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.predicted = [float(v) for v in state["predicted"]]
        self.measured = [float(v) for v in state["measured"]]
        last = state.get("last")
        self._last = (float(last[0]), float(last[1])) if last is not None else None


class RunDiagnostics:
    """The across-step diagnostics a trainer keeps: predicted-vs-measured entropy change
    (``EntropyDynamics``) and the entropy–performance law refitted every step (``law/*``).

    ``step(metrics, h_before, predicted, h_after)`` reads the step's ``policy/entropy`` and its
    training reward (``rollout/reward_mean_all``, every sample before selection, else
    ``reward/mean``) from ``metrics``; ``h_before`` None skips the entropy-change pair.
    """

    def __init__(self) -> None:
        self.dynamics = EntropyDynamics()
        self.law = EntropyLawTracker()

    def step(
        self, metrics: dict[str, float], h_before: float | None, predicted: float, h_after: float | None
    ) -> dict[str, float]:
        out = self.dynamics.step(h_before, predicted, h_after) if h_before is not None else {}
        reward = metrics.get("rollout/reward_mean_all", metrics.get("reward/mean", NAN))
        out.update(self.law.step(metrics.get("policy/entropy", NAN), reward))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**self.dynamics.state_dict(), "law": self.law.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dynamics.load_state_dict(state)
        if "law" in state:  # checkpoints written before the law was tracked have none
            self.law.load_state_dict(state["law"])
