"""Per-token statistics of the full next-token distribution, beyond the entropy.

A name ``kind`` or ``kind:arg`` (``minp_logprob:0.02``, ``topp_entropy:0.8``) maps to a function
of a chunk's logits through the ``TOKEN_STATS`` registry. Parts declare the names they read
(``token_stats`` for π_θ, ``old_token_stats`` for π_old); ``unipo.train.logprobs`` computes them
in the same checkpointed chunk pass as the log-probs, so a statistic of π_θ carries gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# fn(logits [n, V] float32 before the temperature, targets [n], temperature, arg) -> [n]
TokenStatFn = Callable[[Tensor, Tensor, float, "float | None"], Tensor]
TOKEN_STATS: dict[str, TokenStatFn] = {}


def register_token_stat(kind: str) -> Callable[[TokenStatFn], TokenStatFn]:
    """Decorator: make ``kind`` (or ``kind:<arg>``) a per-token statistic parts can request."""

    def deco(fn: TokenStatFn) -> TokenStatFn:
        if kind in TOKEN_STATS and TOKEN_STATS[kind] is not fn:
            raise ValueError(f"token statistic {kind!r} registered twice")
        TOKEN_STATS[kind] = fn
        return fn

    return deco


def parse_token_stat(name: str) -> tuple[TokenStatFn, float | None]:
    """``"topp_entropy:0.8"`` → (its function, 0.8); ``"logit_fisher_self"`` → (function, None)."""
    kind, _, arg = name.partition(":")
    if kind not in TOKEN_STATS:
        raise ValueError(f"unknown token statistic {name!r}; known kinds: {', '.join(sorted(TOKEN_STATS))}")
    try:
        return TOKEN_STATS[kind], (float(arg) if arg else None)
    except ValueError:
        raise ValueError(f"token statistic {name!r}: the part after ':' must be a number") from None


@register_token_stat("minp_logprob")
def minp_logprob(logits: Tensor, targets: Tensor, temperature: float, kappa: float | None) -> Tensor:
    """log π_proxy(o_t) under the min-p proxy of Lp-Reg (arXiv 2510.03222).

    π_proxy(v) ∝ π(v)·1[π(v) ≥ κ·max_u π(u)]: tokens under the threshold get logit −1e4, the
    rest is renormalized. As the official ``apply_min_p`` (CarlanLark/Lp-Reg-dev dp_actor.py),
    the threshold is taken on the untempered softmax, then the logits are divided by T. A
    filtered target gets ≈ −1e4/T − logsumexp (effectively −∞). No gradient (a fixed target).
    """
    if kappa is None:
        raise ValueError("minp_logprob needs the min-p threshold: 'minp_logprob:<kappa>'")
    with torch.no_grad():
        z = logits.detach()
        logp_raw = torch.log_softmax(z, dim=-1)  # [n, V]
        log_kappa = math.log(kappa) if kappa > 0 else -math.inf
        keep = logp_raw >= logp_raw.max(dim=-1, keepdim=True).values + log_kappa  # π ≥ κ·max π
        z = torch.where(keep, z, torch.full_like(z, -1e4)) / temperature
        return z.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


TOPP_TOP_K = 10_000  # SIREN restricts to the top 10 000 logits before the nucleus


@register_token_stat("topp_entropy")
def topp_entropy(logits: Tensor, targets: Tensor, temperature: float, p: float | None) -> Tensor:
    """SIREN's top-p entropy (arXiv 2509.25133; Linn3a/siren ``efficient_top_p_sampling``).

    Over the top-k = 10 000 tokens sorted by probability, keep the nucleus V_p of tokens whose
    cumulative probability is < p (the token that crosses p is *not* kept, so a distribution
    whose top token already has π ≥ p has H^p = 0); renormalize p̃ = π/Σ_{V_p} π and
    H^p = −Σ_{V_p} p̃·log p̃ (+1e-12 inside the log, as the code). Gradient flows through π.
    """
    if p is None:
        raise ValueError("topp_entropy needs the nucleus mass: 'topp_entropy:<p>'")
    probs = torch.softmax(logits / temperature, dim=-1)  # [n, V]
    top, _ = torch.topk(probs, min(TOPP_TOP_K, probs.shape[-1]), dim=-1)  # [n, k], descending
    keep = (torch.cumsum(top, dim=-1) < p).to(top.dtype)
    kept = top * keep
    q = kept / (kept.sum(-1, keepdim=True) + 1e-12)
    return -(q * torch.log(q + 1e-12)).sum(-1)


@register_token_stat("logit_fisher_self")
def logit_fisher_self(logits: Tensor, targets: Tensor, temperature: float, arg: float | None) -> Tensor:
    """gᵀ F g for g = e_y − π, the logit-space gradient of log π(y), and F = diag(π) − ππᵀ.

    The second-order (Fisher) change of π that one step along this token's own score function
    causes, per unit step and advantage: with p = π(y), s₂ = Σπ², s₃ = Σπ³,
    gᵀFg = p(1−p)² + (s₃ − p³) − (p − s₂)². Used by the CAPO mask. No gradient.
    """
    with torch.no_grad():
        probs = torch.softmax(logits.detach() / temperature, dim=-1)  # [n, V]
        p = probs.gather(-1, targets[:, None]).squeeze(-1)
        s2, s3 = (probs**2).sum(-1), (probs**3).sum(-1)
        return p * (1 - p) ** 2 + (s3 - p**3) - (p - s2) ** 2


@register_token_stat("sum_pi_squared")
def sum_pi_squared(logits: Tensor, targets: Tensor, temperature: float, arg: float | None) -> Tensor:
    """Σ_v π(v)² of the next-token distribution at the sampling temperature (its collision probability).

    ‖e_y − π‖² = 1 − 2π(y) + Σπ² is the squared norm of the logit-space gradient of log π(y), the
    optimal token baseline's per-token variance proxy. As verl ``calculate_sum_pi_squared_from_logits``
    (verl-project/verl@1dda039 verl/utils/torch_functional.py): exp(logsumexp(2z) − 2·logsumexp(z))
    for z = logits / T. No gradient.
    """
    with torch.no_grad():
        z = logits.detach() / temperature  # [n, V]
        return torch.exp(torch.logsumexp(2 * z, dim=-1) - 2 * torch.logsumexp(z, dim=-1))
