"""The update phase: μ epochs of minibatch optimizer steps with gradient accumulation.

Nothing here knows which algorithm runs: the loss is ``policy_loss(algorithm, LossInputs)``.

With ``shared_prompt`` (``optim.shared_prompt``) each epoch shuffles *groups* instead of
rows: minibatches hold whole groups and a group's rows are contiguous, so the micro-batches
(consecutive rows) see each prompt G times and the forward pass runs it once
(``logprobs.completion_hidden``). A micro-batch boundary may still cut a group; its prompt is
then computed once on each side.

With ``length_grouped`` (``optim.length_grouped``) the groups of a minibatch go into
micro-batches shortest-longest-completion first, so each micro-batch is trimmed to a width
close to its rows' own lengths. The minibatch's gradient is the same sum of per-token terms
(denominators are counted over the whole minibatch), so this changes nothing but float
rounding, unless a part computes a statistic across the rows of its micro-batch (a top-k, a
quantile): such parts declare ``micro_batch_statistics`` and keep the original order.
``tests/test_update_order.py`` checks every preset against that rule.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unipo.algorithms.base import Algorithm, policy_loss
from unipo.batch import RolloutBatch
from unipo.diagnostics.entropy import entropy_diagnostics, ratio_stats
from unipo.parts.base import LossInputs, count_sequences
from unipo.parts.corrections import mismatch_from_log_ratio
from unipo.train.dist import Dist
from unipo.train.logprobs import completion_logprobs_with_stats
from unipo.train.nograd import length_grouped_micro_batches
from unipo.train.sharding import average_gradients


@dataclass
class UpdateSettings:
    epochs: int
    minibatches: int
    micro_batch_size: int
    max_grad_norm: float
    temperature: float
    max_len: int
    chunk_tokens: int | None = None  # None: sized by vocabulary (logprobs.default_chunk_tokens)
    shared_prompt: bool = True  # run each prompt once per micro-batch; shuffle groups, not rows
    length_grouped: bool = True  # micro-batches by completion length when no part reads across rows
    entropy_grad: bool = False  # the current entropies carry gradient (an entropy regularizer)


class NonFiniteLoss(RuntimeError):
    """A loss or gradient was NaN/inf; the optimizer step was skipped."""


def _mean_metrics(acc: dict[str, list[Tensor]]) -> dict[str, float]:
    if not acc:
        return {}
    keys = list(acc)
    stacked = torch.stack([torch.stack([v.float().cpu() for v in acc[k]]).mean() for k in keys]).tolist()
    return dict(zip(keys, stacked))


def minibatch_rows(
    group_ids: Tensor, minibatches: int, generator: torch.Generator, *, by_group: bool
) -> list[Tensor]:
    """Row indices of each minibatch for one epoch, from group_ids [B].

    ``by_group=False``: a random permutation of the rows, cut into ``minibatches`` chunks.
    ``by_group=True``: a random permutation of the groups; each group's rows stay together (in
    batch order) and minibatches hold whole groups, ``minibatches`` parts as even in group count
    as they can be. With fewer groups than minibatches the group-ordered rows are cut evenly.
    """
    if not by_group:
        return list(torch.randperm(group_ids.numel(), generator=generator).chunk(minibatches))
    _, inverse = torch.unique(group_ids.cpu(), return_inverse=True)  # [B] group index
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    rank = torch.empty(n_groups, dtype=torch.long)
    rank[torch.randperm(n_groups, generator=generator)] = torch.arange(n_groups)  # group → its place
    row_rank, order = torch.sort(rank[inverse], stable=True)  # rows by shuffled group, [B]
    if n_groups < minibatches:
        return list(order.tensor_split(minibatches))
    starts = torch.tensor([int(c[0]) for c in torch.arange(n_groups).tensor_split(minibatches)[1:]])
    return list(order.tensor_split(torch.searchsorted(row_rank, starts).tolist()))


def micro_batch_rows(minibatch: RolloutBatch, size: int, by_length: bool) -> list[Tensor]:
    """Row indices (into ``minibatch``) of each micro-batch: in order, or with ``by_length`` whole
    prompt groups sorted by their longest completion, so that each micro-batch, cut to its own
    longest completion (``trim``), pads less (``nograd.length_grouped_micro_batches``)."""
    if not by_length:
        return list(torch.arange(minibatch.size).split(size))
    return [
        idx.cpu()
        for idx in length_grouped_micro_batches(
            minibatch.prompt_ids, minibatch.prompt_mask, minibatch.completion_mask, size
        )
    ]


def forward_global(
    model: nn.Module, micro: RolloutBatch, settings: UpdateSettings, stats: tuple[str, ...], dist: Dist
) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
    """log π_θ [b, t], entropies [b, t] and ``stats`` of the *global* micro-batch ``micro`` (on the
    device), and an ``anchor`` to add to the backward loss (0, or 0·a dummy pass, see below).

    One process: one forward pass. Several: this rank forwards its share of the rows (contiguous and
    balanced, ``Dist.share``: a group may be cut, which changes no value) and the other ranks' values
    are gathered, so every
    rank holds the same [b, t] tensors and computes the same loss, while only its own rows carry
    gradient into its own model. With FSDP2 a rank whose share is empty still runs a 1-row pass
    (``anchor`` = 0·its output) so that every rank runs each unit's forward/backward once; the
    shared-prompt pass is off then, because it runs the decoder a data-dependent number of times.
    """
    shared = settings.shared_prompt and not dist.sharded

    def forward(rows: RolloutBatch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return completion_logprobs_with_stats(
            model, rows.input_ids, rows.attention_mask, rows.completion_mask,
            temperature=settings.temperature, chunk_tokens=settings.chunk_tokens,
            entropy_grad=settings.entropy_grad, shared_prompt=shared, stats=stats,
        )  # fmt: skip

    zero = torch.zeros((), device=micro.completion_mask.device)
    if not dist.enabled:
        return *forward(micro), zero
    shares = [dist.share(micro.size, r) for r in range(dist.world)]
    counts = [s.stop - s.start for s in shares]
    t = micro.completion_mask.shape[1]
    anchor = zero
    if counts[dist.rank]:
        mine = shares[dist.rank]
        logp, ent, st = forward(micro.select(list(range(mine.start, mine.stop))).trim())
    else:
        logp = ent = micro.completion_mask.new_zeros(0, t)
        st = {k: micro.completion_mask.new_zeros(0, t) for k in stats}
        if dist.sharded:  # every rank runs each FSDP unit once per micro-batch
            d_logp, d_ent, d_st = forward(micro.select([0]).trim())
            anchor = 0.0 * (d_logp.sum() + d_ent.sum() + sum((v.sum() for v in d_st.values()), zero))

    def glob(local: Tensor) -> Tensor:  # [n_r, t_r] → [b, t], this rank's rows with their gradient
        full = dist.with_local_grad(dist.gather_rows(local, counts), local, counts)
        return torch.nn.functional.pad(full, (0, t - full.shape[1])) if full.shape[1] < t else full

    return glob(logp), glob(ent), {k: glob(v) for k, v in st.items()}, anchor


def update_policy(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    algorithm: Algorithm,
    batch: RolloutBatch,
    settings: UpdateSettings,
    *,
    step: int,
    generator: torch.Generator,
    old_stats: dict[str, Tensor] | None = None,
    dist: Dist | None = None,
) -> tuple[dict[str, float], int]:
    """Run the optimizer steps for one rollout batch. Returns (metrics, skipped non-finite steps).

    With several processes (``dist``) ``batch`` is the whole batch on every rank: the minibatches
    and micro-batches are cut identically everywhere (``settings.micro_batch_size`` rows per rank,
    so a global micro-batch holds ``world`` × that), every rank forwards its share of each
    micro-batch (``forward_global``), computes the loss of the whole micro-batch, and backpropagates
    ``world`` × it into its own rows; averaging the gradients over ranks (``ddp``: one all-reduce
    per step; ``fsdp2``: FSDP's reduce-scatter) then gives exactly the one-process gradient.

    ``old_stats`` ({name: [B, T]} over the rows of ``batch``, from the trainer's old-logprob
    pass) feeds ``LossInputs.old_stats`` for parts with ``old_token_stats``. Without it, and
    only when the update is a single optimizer step (π_old = π_θ at every micro-batch), they
    are taken from the current forward pass, detached; otherwise it is an error.
    """
    dist = dist or Dist()
    settings.entropy_grad = algorithm.needs_entropy_grad
    device = next(model.parameters()).device
    cur_names, old_names = algorithm.token_stats, algorithm.old_token_stats
    single_step = settings.epochs == 1 and settings.minibatches == 1
    if old_names and old_stats is None and not single_step:
        raise ValueError(
            f"parts read statistics of π_old {list(old_names)}: pass update_policy(old_stats=...) from "
            "the old-logprob pass (nograd.batched_logprobs_with_stats) when there are several optimizer steps"
        )
    missing = sorted(set(old_names) - set(old_stats)) if old_stats is not None else []
    if missing:
        raise ValueError(f"update_policy(old_stats=...) lacks the π_old statistics {missing} that parts read")
    forward_names = tuple(sorted(set(cur_names) | (set(old_names) if old_stats is None else set())))
    acc: dict[str, list[Tensor]] = defaultdict(list)
    skipped = 0
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    eps_low = getattr(algorithm.surrogate, "eps_low", math.inf)  # for the clip-fraction diagnostics
    eps_high = getattr(algorithm.surrogate, "eps_high", math.inf)
    # a minibatch's gradient is the sum of its micro-batches' whatever their composition, unless a
    # part computes a statistic across the rows it is given (top-k, quantiles): only then keep order
    by_length = settings.length_grouped and not algorithm.any_part("micro_batch_statistics")
    flag_keys = algorithm.row_flags  # row subsets parts read, counted over each whole minibatch
    # sampler–trainer mismatch when the trainer ran no π_old pass of its own (one on-policy step,
    # bypass): from the first minibatch's forward pass, before any optimizer step changes π_θ
    mismatch: list[Tensor] | None = [] if batch.rollout_logprobs is not None and (
        batch.old_logprobs is None or algorithm.any_part("old_from_rollout")
    ) else None
    for _epoch in range(settings.epochs):
        parts = minibatch_rows(
            batch.group_ids, settings.minibatches, generator, by_group=settings.shared_prompt
        )
        for mb_i, mb_idx in enumerate(parts):
            minibatch = batch.select(mb_idx)
            # a rollout correction's rejected tokens (loss_mask 0) leave the denominators; rows with
            # no token left leave the row count (verl's agg_loss excludes fully masked sequences)
            loss_mask = minibatch.loss_mask if minibatch.loss_mask is not None else minibatch.completion_mask
            num_tokens = float(loss_mask.sum().clamp(min=1))
            num_seqs = float(count_sequences(loss_mask))  # rows with ≥ 1 token
            flags = {k: minibatch.flags(k) for k in flag_keys}  # [b] bool each
            lengths = minibatch.completion_mask.sum(1)  # [b]
            flag_tokens = {k: float(lengths[f.to(lengths.device)].sum()) for k, f in flags.items()}
            flag_rows = {k: float(f.sum()) for k, f in flags.items()}
            optimizer.zero_grad(set_to_none=True)
            finite = True
            for sel in micro_batch_rows(minibatch, settings.micro_batch_size * dist.world, by_length):
                rows = mb_idx[sel]  # [b] rows of the whole batch
                micro = minibatch.select(sel).trim().to(device)
                # with no statistics requested this takes the fused LM head (logprobs.py)
                logp, ent, stats, anchor = forward_global(model, micro, settings, forward_names, dist)
                width = micro.completion_mask.shape[1]
                if old_stats is not None:  # [B, T_full] rows of the batch → this micro-batch, trimmed
                    micro_old = {
                        k: old_stats[k][rows.to(old_stats[k].device)][:, :width].to(device) for k in old_names
                    }
                else:
                    micro_old = {k: stats[k].detach() for k in old_names}
                if mismatch is not None and _epoch == 0 and mb_i == 0:
                    valid = micro.completion_mask.bool()
                    mismatch.append((logp.detach() - micro.rollout_logprobs)[valid].float().cpu())
                x = LossInputs(
                    logprobs=logp,
                    old_logprobs=micro.old_logprobs if micro.old_logprobs is not None else logp.detach(),
                    advantages=micro.advantages,
                    mask=micro.loss_mask if micro.loss_mask is not None else micro.completion_mask,
                    entropies=ent,
                    ref_logprobs=micro.ref_logprobs,
                    old_entropies=micro.entropies,
                    group_ids=micro.group_ids,
                    rewards=micro.rewards,
                    truncated=micro.truncated,
                    num_tokens=num_tokens,
                    num_seqs=num_seqs,
                    max_len=settings.max_len,
                    step=step,
                    stats={k: stats[k] for k in cur_names},
                    old_stats=micro_old,
                    row_flags={k: f[sel].to(device) for k, f in flags.items()},
                    flag_tokens=flag_tokens,
                    flag_rows=flag_rows,
                    turn_index=micro.turn_index,
                    rollout_logprobs=micro.rollout_logprobs,
                    correction_weights=micro.correction_weights,
                )
                loss, metrics = policy_loss(algorithm, x)
                if not torch.isfinite(loss):
                    finite = False
                    break
                if loss.requires_grad or anchor.requires_grad:  # else no row of this micro-batch is here
                    (loss * dist.world + anchor).backward()  # ranks' gradients are averaged below
                acc["loss/total"].append(loss.detach())
                acc["policy/entropy"].append(
                    (ent.detach() * micro.completion_mask).sum() / micro.completion_mask.sum().clamp(min=1)
                )
                with torch.no_grad():
                    diag = ratio_stats(x.ratio, x.mask, x.advantages, eps_low, eps_high)
                    if _epoch == 0:  # nearest π_old: the state the first-order prediction is about
                        diag.update(entropy_diagnostics(ent.detach(), logp.detach(), x.advantages, x.mask))
                for k, v in diag.items():
                    if math.isfinite(v):  # e.g. pos_share is NaN when every advantage is 0
                        acc[k].append(torch.tensor(v))
                for k, v in metrics.items():
                    acc[k].append(torch.as_tensor(v).detach())
            if finite and dist.mode == "ddp":
                average_gradients(params, dist)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                if finite
                else torch.tensor(math.nan)
            )
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor of the global norm
                grad_norm = grad_norm.full_tensor()
            if not finite or not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            acc["optim/grad_norm"].append(grad_norm.detach())
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = _mean_metrics(acc)
    if mismatch:
        out.update(mismatch_from_log_ratio(torch.cat(mismatch)))
    out["optim/skipped_steps"] = float(skipped)
    return out, skipped
