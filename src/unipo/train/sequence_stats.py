"""Per-sequence statistics of π_old: a per-token *vector* of the final layer, summed over each row.

A name of ``SEQUENCE_STATS`` maps to a function of one chunk of completion tokens,

    fn(logits [n, V] float32 before the temperature, targets [n], temperature, softcap, W [V, H]) -> [n, K]

with W the LM head's weight; the pass (``sequence_stats_from_hidden``) sums its rows over each
completion's valid tokens into one [B, K] feature per row. Parts declare the names they read in
``old_sequence_stats``; the trainer's π_old pass computes them beside the log-probs, from the same
final hidden states (``unipo.train.logprobs.completion_logprobs_with_stats``, no gradient), and
they reach the advantage as ``RolloutBatch.old_sequence_stats`` ({name: [B, K]}).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

# fn(logits [n, V], targets [n], temperature, softcap, weight [V, H]) -> [n, K]
SequenceStatFn = Callable[[Tensor, Tensor, float, "float | None", Tensor], Tensor]
SEQUENCE_STATS: dict[str, SequenceStatFn] = {}


def register_sequence_stat(name: str) -> Callable[[SequenceStatFn], SequenceStatFn]:
    """Decorator: make ``name`` a per-sequence statistic parts can request (``old_sequence_stats``)."""

    def deco(fn: SequenceStatFn) -> SequenceStatFn:
        if name in SEQUENCE_STATS and SEQUENCE_STATS[name] is not fn:
            raise ValueError(f"sequence statistic {name!r} registered twice")
        SEQUENCE_STATS[name] = fn
        return fn

    return deco


def sequence_stat(name: str) -> SequenceStatFn:
    if name not in SEQUENCE_STATS:
        raise ValueError(f"unknown sequence statistic {name!r}; known: {', '.join(sorted(SEQUENCE_STATS))}")
    return SEQUENCE_STATS[name]


@register_sequence_stat("lm_head_sensitivity")
def lm_head_sensitivity(
    logits: Tensor, targets: Tensor, temperature: float, softcap: float | None, weight: Tensor
) -> Tensor:
    """φ_t = T·∂ log π(y_t)/∂h_t, the first-order sensitivity of the sampled token's log-prob to the
    final hidden state (G2RL, arXiv 2512.15687 Eq. 6–7, 14):

        z = s(W h),  π = softmax(z / T),  φ_t = Wᵀ((e_{y_t} − π_t) ⊙ s'(W h_t)) = W[y_t] − E_{v∼π_t} W[v]

    with s the logit soft-cap c·tanh(·/c) when the model has one (s' = 1 − tanh², else s = id and
    s' = 1, the paper's form). The bias of the head, if any, does not enter. No gradient.
    logits [n, V] (raw, before the soft-cap and T), targets [n], weight [V, H] → [n, H] float32.
    """
    with torch.no_grad():
        raw = logits.detach().float()  # [n, V]
        capped = torch.tanh(raw / softcap) * softcap if softcap else raw
        resid = -torch.softmax(capped / temperature, dim=-1)  # [n, V] −π
        resid.scatter_add_(1, targets[:, None], torch.ones_like(targets[:, None], dtype=resid.dtype))
        if softcap:  # chain rule through the cap
            resid = resid * (1 - torch.tanh(raw / softcap) ** 2)
        return resid @ weight.detach().float()  # [n, H]


def sequence_stats_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    rows: Tensor,
    n_rows: int,
    names: tuple[str, ...],
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    chunk_tokens: int = 2048,
) -> dict[str, Tensor]:
    """{name: [n_rows, K]}: Σ over each row's tokens of the named per-token vectors, no gradient.

    hidden [N, H] (the valid completion tokens' final hidden states), targets [N], rows [N] (the row
    of each token, in 0..n_rows−1). Chunked over N like the log-prob pass, so only [chunk, V] logits
    exist at once.
    """
    fns = {name: sequence_stat(name) for name in names}
    weight = getattr(lm_head, "weight", None)
    if fns and weight is None:
        raise ValueError("sequence statistics read the LM head's weight; this model's head has none")
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, y, r = (x[start : start + chunk_tokens] for x in (hidden, targets, rows))
            raw = lm_head(h).float()  # [n, V]
            for name, fn in fns.items():
                vec = fn(raw, y, temperature, softcap, weight)  # [n, K]
                acc = out.setdefault(name, vec.new_zeros(n_rows, vec.shape[1]))
                acc.index_add_(0, r, vec)  # [n_rows, K]
        for name in fns:  # no token at all: K unknown, so K = H (the head's input width)
            out.setdefault(name, hidden.new_zeros(n_rows, hidden.shape[-1], dtype=torch.float32))
    return out
