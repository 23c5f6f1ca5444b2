"""Completion log-probs and entropies from one forward pass, chunked over tokens.

The model's decoder runs once; the LM head, log-softmax and entropy are applied to chunks
of ``chunk_tokens`` hidden states at a time, so the full ``[tokens, vocab]`` logits /
log-softmax never exist at once. Under autograd each chunk is checkpointed: its logits are
recomputed in backward instead of being stored, so training memory also stays at one chunk.

The same function serves old, reference and current-policy log-probs.

Per-token statistics of the full next-token distribution (beyond the entropy) come from a
small registry, ``TOKEN_STATS``: a name ``kind`` or ``kind:arg`` (``minp_logprob:0.02``,
``topp_entropy:0.8``) maps to a function of the chunk's logits. Parts declare the names they
read (``token_stats`` for π_θ, ``old_token_stats`` for π_old); ``completion_logprobs_with_stats``
returns them as ``{name: [B, T]}`` next to the log-probs, computed in the same checkpointed
chunk pass (so a statistic of π_θ carries gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model (through peft / DDP wrappers)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that ignore left padding, as ``generate`` uses: cumsum(mask) − 1, ≥ 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ------------------------------------------------------------------ per-token statistics
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


def _chunk_stats(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    temperature: float,
    softcap: float | None,
    stats: tuple[str, ...] = (),
) -> tuple[Tensor, ...]:
    raw = lm_head(hidden).float()  # [n, V]
    if softcap:
        raw = torch.tanh(raw / softcap) * softcap
    logits = raw / temperature if temperature != 1.0 else raw
    lse = torch.logsumexp(logits, dim=-1)  # [n]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse  # [n]
    probs = torch.softmax(logits, dim=-1)  # [n, V]
    entropy = lse - (probs * logits).sum(-1)  # H = logZ − Σ p·z
    extra = []
    for name in stats:
        fn, arg = parse_token_stat(name)
        extra.append(fn(raw, targets, temperature, arg))  # [n]
    return (logp, entropy, *extra)


def token_logprobs_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """log π(target) and full-vocabulary entropy for N hidden states.

    hidden [N, H], targets [N] → (logp [N], entropy [N]), float32. Chunked over N.
    """
    logp, ent, _ = token_stats_from_hidden(
        hidden, lm_head, targets, temperature=temperature, chunk_tokens=chunk_tokens, softcap=softcap
    )
    return logp, ent


def token_stats_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    softcap: float | None = None,
    stats: tuple[str, ...] = (),
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``token_logprobs_from_hidden`` plus the named per-token statistics: ({name: [N]})."""
    stats = tuple(stats)
    for name in stats:
        parse_token_stat(name)  # fail before the forward pass on an unknown name
    cols: list[list[Tensor]] = [[] for _ in range(2 + len(stats))]
    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if use_ckpt:
            out = checkpoint(_chunk_stats, h, lm_head, y, temperature, softcap, stats, use_reentrant=False)
        else:
            out = _chunk_stats(h, lm_head, y, temperature, softcap, stats)
        for col, value in zip(cols, out):
            col.append(value)
    merged = [torch.cat(col) for col in cols]
    return merged[0], merged[1], dict(zip(stats, merged[2:]))


def completion_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies of the completion tokens of left-padded prompt+completion rows.

    input_ids, attention_mask: [B, P+T]; completion_mask: [B, T] (the last T columns are the
    completion). Returns (logprobs [B, T], entropies [B, T]) in float32, zero on padding.
    Logits are divided by ``temperature`` (the sampling temperature), as verl and TRL do.
    Entropies carry gradient only when ``entropy_grad`` (an entropy regularizer needs it).
    """
    logp, ent, _ = completion_logprobs_with_stats(
        model,
        input_ids,
        attention_mask,
        completion_mask,
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        entropy_grad=entropy_grad,
    )
    return logp, ent


def completion_logprobs_with_stats(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    entropy_grad: bool = False,
    stats: tuple[str, ...] = (),
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``completion_logprobs`` plus the named per-token statistics ``{name: [B, T]}`` (0 on padding).

    The statistics are computed from the same chunked logits; under autograd they carry
    gradient (a part detaches what it does not differentiate).
    """
    base = _unwrap(model)
    b, t = completion_mask.shape
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = out.last_hidden_state[:, -t - 1 : -1, :]  # [B, T, H]: position p predicts token p+1
    targets = input_ids[:, -t:]  # [B, T]
    valid = completion_mask.bool()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    logp_flat, ent_flat, stat_flat = token_stats_from_hidden(
        hidden[valid],  # [N, H], padding dropped before the LM head
        base.get_output_embeddings(),
        targets[valid],
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        softcap=softcap,
        stats=stats,
    )

    def scatter(flat: Tensor) -> Tensor:  # [N] → [B, T], 0 on padding
        full = torch.zeros(b, t, dtype=torch.float32, device=input_ids.device)
        return full.masked_scatter(valid, flat.float())

    logp = scatter(logp_flat)
    ent = scatter(ent_flat if entropy_grad else ent_flat.detach())
    return logp, ent, {name: scatter(v) for name, v in stat_flat.items()}


@torch.no_grad()
def batched_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    micro_batch: int,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """``completion_logprobs`` without grad over micro-batches of rows (old / ref log-probs)."""
    lp, ent, _ = batched_logprobs_with_stats(
        model, input_ids, attention_mask, completion_mask, micro_batch=micro_batch, **kwargs
    )
    return lp, ent


@torch.no_grad()
def batched_logprobs_with_stats(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    micro_batch: int,
    stats: tuple[str, ...] = (),
    **kwargs: Any,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``batched_logprobs`` plus ``{name: [B, T]}`` statistics (π_old's, for ``old_token_stats``)."""
    was_training = model.training
    model.eval()
    parts = [
        completion_logprobs_with_stats(
            model,
            input_ids[i : i + micro_batch],
            attention_mask[i : i + micro_batch],
            completion_mask[i : i + micro_batch],
            stats=stats,
            **kwargs,
        )
        for i in range(0, input_ids.shape[0], micro_batch)
    ]
    model.train(was_training)
    merged = {name: torch.cat([p[2][name] for p in parts]) for name in stats}
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), merged
