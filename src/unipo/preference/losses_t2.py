"""The seed papers' preference losses (T2 of METHODS.md): SPPO, INPO, XPO, LiPO-λ, SparsePO, CPL, SPO.

Same signature and notation as ``losses.py``: ``loss(x: PreferenceInputs) -> (loss [N], metrics)``,
ρ(y) = log π_θ(y) − log π_ref(y) summed over tokens, index 0 = chosen / best. Curry-DPO is a data
ordering (``pairs.CurriculumOrdering``) on top of ``DPO``, not a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unipo.parts.base import scalar
from unipo.preference.losses import (
    PREFERENCE_LOSSES,
    Metrics,
    PreferenceInputs,
    register_loss,
    reward_metrics,
)


@register_loss("sppo")
@dataclass(frozen=True)
class SPPO:
    """Self-Play Preference Optimization (Wu et al. 2024, arXiv:2405.00675), square loss.

        L = ½·[ (ρ_t(y_w) − η(P̂_w − ½))² + (ρ_t(y_l) − η(P̂_l − ½))² ],   η = 1/β

    ρ_t is the log-ratio against the *previous iterate* π_t: the trainer resets π_ref ← π_θ at
    the start of every round (``iterative_reference_update``). P̂ is the estimated win rate of each
    response against π_t (``win_prob``, built by ``pairs.win_rates`` from the group's scores:
    P̂(y_i) = (1/K)·Σ_j P(y_i ≻ y_j), j = i included). Without win rates the targets are hard,
    P̂_w = 1 and P̂_l = 0 (TRL's ``sppo_hard``, which lacks the ½). ``sppo_single`` is this loss
    with win_prob = (P, 1 − P). Source: uclaml/SPPO ``trainer.py``; β = 0.001 (η = 1000) there,
    with RMSprop, lr 5e-7 and 3 iterations.
    """

    beta: float = 0.001
    needs_reference: ClassVar[bool] = True
    iterative_reference_update: ClassVar[bool] = True

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        rw, rl = x.pair(x.log_ratios)  # [N] each
        if x.win_prob is None:
            pw, pl = torch.ones_like(rw), torch.zeros_like(rl)
        else:
            pw, pl = x.pair(x.win_prob.to(rw.dtype))
        eta = 1.0 / self.beta
        loss = 0.5 * ((rw - eta * (pw - 0.5)) ** 2 + (rl - eta * (pl - 0.5)) ** 2)
        metrics = reward_metrics(self.beta * rw, self.beta * rl)
        metrics["sppo/win_prob_chosen"] = scalar(pw.mean())
        return loss, metrics


@register_loss("inpo")
@dataclass(frozen=True)
class INPO:
    """Iterative Nash Policy Optimization (Zhang et al. 2024, arXiv:2407.00617).

        h_t = Δlog π_θ − (τ/β)·Δlog π_ref0 − (1 − τ/β)·Δlog π_t,      Δlog π = log π(y_w) − log π(y_l)
        L = (h_t − 1/(2β))²

    β = 1/η (η: the online-mirror-descent step), τ: the KL weight towards the initial model π_ref0
    (``anchor_logprobs``); π_t is the previous iterate (the trainer's reference, reset every round).
    Derived from the OMD target π_{t+1} ∝ π_t^(1−ητ)·π_ref0^(ητ)·exp(η·P(y ≻ π_t)) and checked
    against a third-party re-implementation (``FORMULAS-preference.md``); the paper's exact
    equation and hyperparameters are UNVERIFIED; β = 0.1, τ = 0.01 are our defaults (ητ = 0.1).
    In the first round π_t = π_ref0, so missing anchor log-probs default to the reference's.
    """

    beta: float = 0.1
    tau: float = 0.01
    needs_reference: ClassVar[bool] = True
    iterative_reference_update: ClassVar[bool] = True
    needs_anchor: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau / self.beta <= 1.0:
            raise ValueError(f"inpo: η·τ = tau/beta must be in [0, 1], got {self.tau / self.beta}")

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        ref = x.ref_logps  # [N, 2] log π_t
        anchor = (x.anchor_logprobs * x.mask).sum(-1) if x.anchor_logprobs is not None else ref
        mix = self.tau / self.beta
        target = mix * anchor + (1 - mix) * ref  # [N, 2] log of the OMD prior π_t^(1−ητ)·π_ref0^(ητ)
        rw, rl = x.pair(x.logps - target)
        loss = (rw - rl - 1 / (2 * self.beta)) ** 2
        return loss, reward_metrics(self.beta * rw, self.beta * rl)


@register_loss("xpo")
@dataclass(frozen=True)
class XPO:
    """Exploratory Preference Optimization (Xie et al. 2024, arXiv:2405.21046), online.

        L = −log σ(β·h) + α·Σ_k 1[y_k ~ π_ref]·log π_θ(y_k)

    Each pair holds a policy sample and a reference sample ỹ ~ π_ref, ordered by the reward
    (``needs_reference_samples``: the pair builder samples from both models). Minimizing α·log π_θ(ỹ)
    pushes mass away from what π_ref already covers: the exploration bonus. Source: TRL
    ``trl/experimental/xpo/xpo_trainer.py`` (sigmoid variant; α = 1e-5, β = 0.1). Pairs without
    ``from_reference`` get no exploration term.
    """

    beta: float = 0.1
    alpha: float = 1e-5
    needs_reference: ClassVar[bool] = True
    needs_reference_samples: ClassVar[bool] = True

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        rw, rl = x.pair(x.log_ratios)
        dpo = -F.logsigmoid(self.beta * (rw - rl))  # [N]
        if x.from_reference is None:
            explore = torch.zeros_like(dpo)
        else:
            explore = (x.from_reference.to(dpo.dtype) * x.logps).sum(1)  # [N] Σ log π_θ(ỹ)
        metrics = reward_metrics(self.beta * rw, self.beta * rl)
        metrics["xpo/ref_sample_logp"] = scalar(explore.mean())
        return dpo + self.alpha * explore, metrics


@register_loss("lipo")
@dataclass(frozen=True)
class LiPOLambda:
    """LiPO-λ listwise loss (Liu et al. 2024, arXiv:2402.01878).

        s_i = β·ρ(y_i)
        L = −Σ_{ψ_i > ψ_j} Δ_ij·log σ(s_i − s_j)
        Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|,   G = 2^ψ − 1,   D(τ) = log(1 + τ)

    ψ are the list's scores (labels), τ_i the 1-based rank of y_i when the list is sorted by s
    descending; Δ is a constant (no gradient), as in LambdaLoss. Tied scores give no pair; padded
    entries take no part. Source: the sheet's secondary summary of the paper (LambdaLoss form);
    natural log in D (log₂ only rescales Δ by ln 2); β = 0.1 is our default (UNVERIFIED).
    """

    beta: float = 0.1
    needs_reference: ClassVar[bool] = True
    listwise: ClassVar[bool] = True

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        valid = x.valid  # [N, K]
        psi = x.require("scores", "lipo").to(x.logprobs.dtype)  # [N, K]
        s = self.beta * x.log_ratios  # [N, K]
        with torch.no_grad():
            order = s.masked_fill(~valid, -math.inf).argsort(dim=1, descending=True)  # [N, K]
            positions = torch.arange(1, s.shape[1] + 1, device=s.device).expand_as(order)  # [N, K]
            rank = torch.empty_like(order).scatter_(1, order, positions)  # [N, K] τ_i, 1 = top
            gain = 2.0**psi - 1  # [N, K]
            inv_disc = 1.0 / torch.log1p(rank.to(s.dtype))  # [N, K] 1/D(τ)
            delta = (gain[:, :, None] - gain[:, None, :]).abs() * (
                inv_disc[:, :, None] - inv_disc[:, None, :]
            ).abs()  # [N, K, K]
            pairs = valid[:, :, None] & valid[:, None, :] & (psi[:, :, None] > psi[:, None, :])  # i beats j
        logit = s[:, :, None] - s[:, None, :]  # [N, K, K] s_i − s_j
        loss = -(delta * pairs * F.logsigmoid(logit)).sum(dim=(1, 2))  # [N]
        last = valid.long().sum(1) - 1
        metrics = reward_metrics(s[:, 0], s.gather(1, last[:, None]).squeeze(1))
        metrics["lipo/pairs_per_list"] = scalar(pairs.float().sum(dim=(1, 2)).mean())
        return loss, metrics


@register_loss("sparse_po")
@dataclass(frozen=True)
class SparsePO:
    """SparsePO, the model-activation mask variant (Christopoulou et al. 2024, arXiv:2410.05102).

        u(y) = Σ_t m_t·(log π_θ(y_t) − log π_ref(y_t))
        L = −log σ( β·(u(y_w) − u(y_l)) )

    m_t ∈ [0, 1] (``ref_weights``) comes from the *reference* model's activations at the position
    that predicts y_t: the per-token mean over the hidden dimension, min–max rescaled within the
    response, averaged over layers (``reference.activation_masks``). Source: huawei-noah/HEBO
    ``SparsePO/src/trainers/mapo_trainer.py`` (``zn_rescale``: z-normalisation then min–max, which
    equals min–max alone). Differences, documented: we read only the residual stream
    (``output_hidden_states``) where the authors also hook MLP/attention internals and logits, and
    we leave out the authors' masked sequence-KL term (it needs full-vocabulary reference
    distributions at every token, which the chunked log-prob pass does not keep). The learned-mask
    variant (a trained mask network) is not implemented. β = 0.1 (authors' config).
    """

    beta: float = 0.1
    needs_reference: ClassVar[bool] = True
    needs_reference_activations: ClassVar[bool] = True

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        m = x.require("ref_weights", "sparse_po") * x.mask  # [N, 2, T]
        delta = x.logprobs - x.require("ref_logprobs", "sparse_po")  # [N, 2, T]
        uw, ul = x.pair((m * delta).sum(-1))
        loss = -F.logsigmoid(self.beta * (uw - ul))
        metrics = reward_metrics(self.beta * uw, self.beta * ul)
        metrics["sparse_po/mask_mean"] = scalar(m.sum() / x.mask.sum().clamp(min=1))
        return loss, metrics


@register_loss("cpl")
@dataclass(frozen=True)
class CPL:
    """Contrastive Preference Learning (Hejna et al. 2023, arXiv:2310.13639), no reference model.

        A(y) = α·Σ_t γ^t·log π_θ(y_t)
        L = −log[ e^{A(y_w)} / (e^{A(y_w)} + e^{λ·A(y_l)}) ] = softplus(λ·A(y_l) − A(y_w))

    λ ∈ (0, 1] is the conservative bias on the rejected segment. Source: jhejna/cpl
    ``research/algs/cpl.py`` (MetaWorld defaults α = 0.1, λ = 0.5; the code uses no discount,
    γ = 1; the paper allows γ^t, t = 0 at the first response token).
    """

    alpha: float = 0.1
    lam: float = 0.5
    gamma: float = 1.0
    needs_reference: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not 0.0 < self.lam <= 1.0:
            raise ValueError(f"cpl: lam must be in (0, 1], got {self.lam}")

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        t = x.logprobs.shape[-1]
        disc = self.gamma ** torch.arange(t, device=x.logprobs.device, dtype=x.logprobs.dtype)  # [T]
        adv = self.alpha * (x.logprobs * x.mask * disc).sum(-1)  # [N, 2]
        aw, al = x.pair(adv)
        loss = F.softplus(self.lam * al - aw)
        return loss, reward_metrics(aw, al)


# attributes that ask the trainer for more than π_θ / π_ref log-probs of a pair
EXTRA_NEEDS = ("listwise", "iterative_reference_update", "needs_anchor", "needs_reference_activations",
               "needs_reference_samples", "response_variants")  # fmt: skip


def spo_alignment_losses() -> list[str]:
    """Losses SPO can add its degree term to: pairwise, reading only log-probs (no extra inputs)."""
    plain = (n for n, c in PREFERENCE_LOSSES.items() if not any(getattr(c, a, False) for a in EXTRA_NEEDS))
    return sorted(plain)


@register_loss("spo")
@dataclass(frozen=True)
class SPO:
    """Self-supervised Preference Optimization (Li et al. 2024, arXiv:2409.17791, EMNLP Findings).

    An alignment loss plus a self-supervised preference-degree loss on key-content-removed copies
    ŷ^(v) of each response (v = 1..V top RAKE phrases deleted, ``variants.py``; more removed = lower
    degree). The degree of each copy is classified, most preferred first, from the policy's own
    implicit rewards (a Plackett–Luce ranking of the degrees, no extra parameters):

        s^(0) = β·ρ(y),   s^(v) = β·ρ(ŷ^(v))                  (ρ = log π_θ − log π_ref, summed)
        L_deg(y) = −Σ_{v valid} [ s^(v) − log Σ_{u ≥ v, u valid} exp s^(u) ]
        L = L_align(y_w, y_l) + λ·(L_deg(y_w) + L_deg(y_l))

    L_align is any pairwise loss without extra inputs (``alignment``, default DPO; the abstract says
    the term combines with existing preference losses), built with ``alignment_params`` (its β
    defaults to SPO's β). Copies a response is too short for (fewer than v key phrases) take no part.

    Source: what could be read is the abstract (arXiv / ACL Anthology 2024.findings-emnlp.845: a
    self-supervised preference-degree loss combined with the alignment loss) and the opening of a
    third-party review (themoonlight.io: key content extracted with RAKE and removed to make the
    variations; "self-supervised classification"). The paper's method section and the authors' code
    (github.com/lijian16/SPO) were not available to us: no file or commit was seen. UNVERIFIED, ours:
    the classifier (here the class scores are the implicit rewards s^(v), where the authors may
    train a classification head), the degree labels (the number of phrases removed), applying the
    term to both chosen and rejected responses and summing them, λ = 0.1, V = 2.
    """

    beta: float = 0.1
    lam: float = 0.1
    removals: int = 2
    alignment: str = "dpo"
    alignment_params: dict[str, Any] = field(default_factory=dict)
    needs_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"spo: lam must be >= 0, got {self.lam}")
        if self.removals < 1:
            raise ValueError(f"spo: removals must be >= 1 (variants per response), got {self.removals}")
        allowed = spo_alignment_losses()
        if self.alignment not in allowed:
            raise ValueError(f"spo: alignment must be one of {', '.join(allowed)}; got {self.alignment!r}")
        cls = PREFERENCE_LOSSES[self.alignment]
        params = dict(self.alignment_params)
        if "beta" in {f.name for f in fields(cls)}:
            params.setdefault("beta", self.beta)
        try:
            object.__setattr__(self, "_align", cls(**params))
        except TypeError as e:
            raise ValueError(f"spo: bad alignment_params for {self.alignment!r}: {e}") from None

    @property
    def response_variants(self) -> int:  # read by the trainer: build V variants per response
        return self.removals

    def degree_loss(self, x: PreferenceInputs) -> tuple[Tensor, Tensor, Tensor]:
        """(L_deg summed over the K responses [N], scores s [N, K, V+1], valid [N, K, V+1])."""
        vl = x.require("variant_logps", "spo")  # [N, K, V]
        vr = x.require("variant_ref_logps", "spo")
        ok = x.require("variant_valid", "spo") & x.valid[:, :, None]  # [N, K, V]
        s = self.beta * torch.cat([x.log_ratios[:, :, None], vl - vr], dim=-1)  # [N, K, V+1]
        valid = torch.cat([x.valid[:, :, None], ok], dim=-1)  # [N, K, V+1]
        masked = s.masked_fill(~valid, torch.finfo(s.dtype).min / 4)  # finite: no inf − inf below
        suffix = masked.flip(-1).logcumsumexp(-1).flip(-1)  # [N, K, V+1] log Σ_{u ≥ v} exp s^(u)
        nll = torch.where(valid, suffix - masked, torch.zeros_like(s))  # the last valid term is 0
        return nll.sum(dim=(1, 2)), s, valid

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        align, metrics = self._align(x)  # [N]
        deg, s, valid = self.degree_loss(x)
        with torch.no_grad():
            below = (s[:, :, 1:] < s[:, :, :1]) & valid[:, :, 1:]  # copy scored below its intact response
            n_var = valid[:, :, 1:].sum()
        metrics.update({
            "spo/align_loss": scalar(align.mean()), "spo/degree_loss": scalar(deg.mean()),
            "spo/degree_accuracy": scalar(below.sum() / n_var.clamp(min=1)),
            "spo/variants_per_response": scalar(n_var / valid[:, :, 0].sum().clamp(min=1)),
        })  # fmt: skip
        return align + self.lam * deg, metrics
