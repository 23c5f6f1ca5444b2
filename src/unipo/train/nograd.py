"""No-grad log-prob passes over a whole batch (π_old, π_ref, the entropy re-score, evaluation).

These passes return one value per row, so the order in which rows are computed is free. Rows
are therefore put into micro-batches by length: whole prompt groups (the rows that share a
prompt, so the shared-prompt pass still runs each prompt once), sorted by their longest
completion, and every micro-batch is cut to its own longest completion and its own left
padding. A batch whose completions range from 20 to 1,000 tokens then runs its short groups at
a short width instead of every micro-batch at 1,000 (``benchmarks/length_grouping.py`` measures the
saving). Results are scattered back to the original row order; they equal the row-order pass up
to float rounding (``tests/test_nograd.py``). ``length_grouped=False`` keeps the row order and
the batch's full width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unipo.batch import RolloutBatch
from unipo.train.dist import Dist
from unipo.train.logprobs import completion_logprobs_with_stats, prompt_index
from unipo.train.sharding import full_params


def completion_widths(completion_mask: Tensor) -> Tensor:
    """[B, T] mask → [B] index of each row's last completion token + 1 (0 for an empty row)."""
    t = completion_mask.shape[1]
    cols = torch.arange(1, t + 1, device=completion_mask.device)  # [T]
    return (completion_mask.bool() * cols).amax(dim=1)  # [B]


def length_grouped_micro_batches(
    prompt_ids: Tensor, prompt_mask: Tensor, completion_mask: Tensor, micro_batch: int
) -> list[Tensor]:
    """Row indices of each micro-batch: prompt groups by their longest completion, shortest first.

    prompt_ids, prompt_mask [B, P]; completion_mask [B, T]. Rows with one prompt (a GRPO group)
    stay adjacent, so a micro-batch splits at most the groups at its two ends; groups of equal
    length keep their batch order (a stable sort). Chunks of ``micro_batch`` rows.
    """
    b = prompt_ids.shape[0]
    if b == 0:
        return []
    first, group = prompt_index(prompt_ids, prompt_mask)  # [U] a group's first row, [B] row → group
    u = first.numel()
    widths = completion_widths(completion_mask)  # [B]
    longest = torch.zeros(u, dtype=widths.dtype, device=widths.device).scatter_reduce(
        0, group, widths, reduce="amax"
    )  # [U]
    rows = torch.arange(b, device=group.device)
    order = torch.argsort(longest * (b + 1) + first, stable=True)  # groups, shortest first; ties: batch order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(u, device=order.device)  # group → its place
    rows_sorted = torch.argsort(rank[group] * (b + 1) + rows, stable=True)  # [B]
    return list(rows_sorted.split(micro_batch))


@torch.no_grad()
def batched_logprobs_with_stats(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    micro_batch: int,
    stats: tuple[str, ...] = (),
    length_grouped: bool = True,
    sequence_stats: tuple[str, ...] = (),
    **kwargs: Any,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Log-probs [B, T], entropies [B, T] and ``{name: [B, T]}`` statistics without grad.

    input_ids, attention_mask [B, P+T] (prompts left-padded), completion_mask [B, T]; ``kwargs``
    go to ``completion_logprobs_with_stats`` (temperature, chunk_tokens, shared_prompt). Zero
    on padding, as there. With ``length_grouped`` the micro-batches follow
    ``length_grouped_micro_batches`` and each runs at its own width (module docstring).
    ``sequence_stats`` add ``{name: [B, K]}`` per-row features to the dict (``sequence_stats.py``).
    """
    b, t = completion_mask.shape
    p = input_ids.shape[1] - t
    if length_grouped:
        parts = length_grouped_micro_batches(
            input_ids[:, :p], attention_mask[:, :p], completion_mask, micro_batch
        )
    else:
        parts = list(torch.arange(b, device=input_ids.device).split(micro_batch))
    device = input_ids.device
    logp = torch.zeros(b, t, dtype=torch.float32, device=device)
    ent = torch.zeros(b, t, dtype=torch.float32, device=device)
    out_stats = {name: torch.zeros(b, t, dtype=torch.float32, device=device) for name in stats}
    was_training = model.training
    model.eval()
    try:
        for idx in parts:
            w = int(completion_widths(completion_mask[idx]).max()) if length_grouped else t
            if w == 0:
                continue  # only empty completions: nothing to score, zeros stay
            lead = 0
            if length_grouped:  # left-padding columns that no row of this micro-batch uses
                lead = int((attention_mask[idx, :p].sum(0) == 0).long().cumprod(0).sum())
            cols = slice(lead, p + w)
            lp, en, st = completion_logprobs_with_stats(
                model, input_ids[idx, cols], attention_mask[idx, cols], completion_mask[idx, :w],
                stats=stats, sequence_stats=sequence_stats, **kwargs,
            )  # fmt: skip
            logp[idx, :w] = lp
            ent[idx, :w] = en
            for name in stats:
                out_stats[name][idx, :w] = st[name]
            for name in sequence_stats:  # [rows, K]; K known from the first micro-batch
                acc = out_stats.setdefault(name, st[name].new_zeros(b, st[name].shape[1]))
                acc[idx] = st[name]
    finally:
        model.train(was_training)
    for name in sequence_stats:  # every completion empty: no feature at all (width 0)
        out_stats.setdefault(name, torch.zeros(b, 0, dtype=torch.float32, device=device))
    return logp, ent, out_stats


def batched_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    micro_batch: int,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """``batched_logprobs_with_stats`` without statistics: (log-probs [B, T], entropies [B, T])."""
    lp, ent, _ = batched_logprobs_with_stats(
        model, input_ids, attention_mask, completion_mask, micro_batch=micro_batch, **kwargs
    )
    return lp, ent


def rollout_batch_logprobs(
    model: nn.Module,
    batch: RolloutBatch,
    device: torch.device,
    *,
    dist: Dist | None = None,
    root: nn.Module | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``batched_logprobs_with_stats`` over a ``RolloutBatch`` on ``device``: (log-probs [B, T],
    entropies [B, T], {name: [B, T]}) on the CPU at the batch's full width T, zero past the
    longest completion (``sequence_stats`` names: [B, K]). ``kwargs``: micro_batch, temperature,
    stats, sequence_stats, shared_prompt, ...

    With several processes (``dist``) every rank scores its share of the rows (whole prompt
    groups) and the results are gathered, so every rank returns the whole batch's values.
    ``root``: the FSDP2 unit holding ``model``'s weights (its parameters are gathered for the pass,
    ``sharding.full_params``); None when ``model`` is not sharded or is itself the root.
    """
    if dist is not None and dist.enabled:
        shares = dist.group_shares(batch.group_ids)
        counts = [s.stop - s.start for s in shares]
        mine = shares[dist.rank]
        names = tuple(kwargs.get("stats", ()))
        t = batch.completion_ids.shape[1]
        if counts[dist.rank]:
            with full_params(root if root is not None else model):
                lp, ent, st = rollout_batch_logprobs(
                    model, batch.select(list(range(mine.start, mine.stop))), device, **kwargs
                )
        else:  # no rows here: [0, 0] sequence features, widened by gather_rows to the others' K
            lp = ent = torch.zeros(0, t)
            st = {k: torch.zeros(0, t) for k in names}
            st.update({k: torch.zeros(0, 0) for k in kwargs.get("sequence_stats", ())})
        return (
            dist.gather_rows(lp, counts), dist.gather_rows(ent, counts),
            {k: dist.gather_rows(v, counts) for k, v in st.items()},
        )  # fmt: skip
    b = batch.trim().to(device)
    ids, attn, cmask = b.input_ids, b.attention_mask, b.completion_mask
    lp, ent, st = batched_logprobs_with_stats(model, ids, attn, cmask, **kwargs)
    pad = batch.completion_ids.shape[1] - lp.shape[1]

    def padded(v: Tensor) -> Tensor:
        return nn.functional.pad(v.cpu(), (0, pad))  # [B, T_full]

    per_row = set(kwargs.get("sequence_stats", ()))  # [B, K] features: not token columns
    return padded(lp), padded(ent), {k: v.cpu() if k in per_row else padded(v) for k, v in st.items()}
