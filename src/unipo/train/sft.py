"""Supervised fine-tuning on (prompt, answer) pairs: the warm start before RL, and the SFT
targets (demonstrations) that HPT trains on when a prompt's rollouts all fail.

Loss: mean cross-entropy of the answer tokens (and EOS) given the prompt; prompt tokens
are not trained on. A row may carry a third element, a 0/1 loss mask over its target tokens: the
target is then a multi-turn trajectory whose environment tokens (tool results, observations) are
read but not trained on (the warm start of ``unipo.envs.demo``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from torch import nn
from transformers import PreTrainedTokenizerBase

from unipo.rollout.hf import left_pad
from unipo.tasks.sources import demonstration
from unipo.train.logprobs import completion_logprobs

log = logging.getLogger("unipo")


def target_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """An SFT target: the tokens of ``text`` (no special tokens added), then EOS if the tokenizer has one."""
    eos = tokenizer.eos_token_id
    return tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])


def sft_rows(
    tokenizer: PreTrainedTokenizerBase, prompt_ids: list[list[int]], answers: list[str]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + EOS) per example."""
    return [(p, target_ids(tokenizer, a)) for p, a in zip(prompt_ids, answers)]


class DemonstrationIds(list[int]):
    """One demonstration's SFT target ids (a plain list of ints), plus ``truncated``: True when
    ``demonstration_ids`` cut it at ``max_tokens`` (the tail of the answer and its EOS are lost)."""

    def __init__(self, ids: list[int], truncated: bool = False) -> None:
        super().__init__(ids)
        self.truncated = truncated


_warned_truncated = False  # the cut-demonstration warning is logged once per process


def _warn_truncated(example: dict[str, Any], n: int, max_tokens: int) -> None:
    global _warned_truncated
    if _warned_truncated:
        return
    _warned_truncated = True
    question = str(example.get("question", ""))
    name = repr(question if len(question) <= 80 else question[:77] + "...")
    log.warning(
        "the demonstration of example %s is %d tokens (with EOS), cut to max_new_tokens=%d: HPT's SFT "
        "rows train on a cut answer without EOS. Raise rollout.sampling.max_new_tokens; cut ones are "
        "counted in hpt/demonstrations_truncated (this warning is shown once).",
        name, n, max_tokens,
    )  # fmt: skip


def demonstration_ids(
    tokenizer: PreTrainedTokenizerBase, examples: list[dict[str, Any]], max_tokens: int | None = None
) -> list[DemonstrationIds | None]:
    """Per example, the SFT target of its demonstration (``unipo.tasks.demonstration``: the
    reference answer unless the example has a ``"demonstration"`` column), formed as the warm
    start forms its targets (``target_ids``: text + EOS); None for an example without one.

    ``max_tokens`` (the rollout's ``max_new_tokens``) keeps the first that many tokens, so a
    demonstration is never longer than a sampled completion could be (the EOS is then cut). A cut
    one is not silent: its ``truncated`` is True (collect.py flags its rows and counts it in
    ``hpt/demonstrations_truncated``) and the first one is logged as a warning naming the example.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"demonstration_ids max_tokens must be positive or None, got {max_tokens}")
    out: list[DemonstrationIds | None] = []
    for ex in examples:
        text = demonstration(ex)
        if text is None:
            out.append(None)
            continue
        ids = target_ids(tokenizer, text)
        cut = max_tokens is not None and len(ids) > max_tokens
        if cut:
            _warn_truncated(ex, len(ids), max_tokens)
        out.append(DemonstrationIds(ids[:max_tokens], truncated=cut))
    return out


def sft(
    model: nn.Module,
    rows: list[tuple[list[int], list[int]]] | list[tuple[list[int], list[int], list[int]]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    pad_id: int = 0,
    warmup: int = 10,
    on_step: Callable[[int, float], None] | None = None,
    console: Console | None = None,
    label: str = "warm start",
) -> list[float]:
    """AdamW on the answer-token NLL for ``steps`` minibatches; returns the loss per step.

    ``console``: show a progress bar (``label``, steps done, time left, the last loss);
    ``on_step(step, loss)`` is called after every step.
    """
    from unipo.train.progress import progress_bar

    with progress_bar(console, label, steps) as update:

        def report(step: int, loss: float) -> None:
            update(1, f"loss {loss:.3f}")
            if on_step is not None:
                on_step(step, loss)

        return _sft(model, rows, steps=steps, batch_size=batch_size, lr=lr, seed=seed, pad_id=pad_id,
                    warmup=warmup, on_step=report)  # fmt: skip


def _sft(
    model: nn.Module,
    rows: list[tuple[list[int], list[int]]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pad_id: int,
    warmup: int,
    on_step: Callable[[int, float], None],
) -> list[float]:
    device = next(model.parameters()).device
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, warmup)))
    model.train()
    losses = []
    for step in range(steps):
        picked = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        p_ids, p_mask = left_pad([row[0] for row in picked], pad_id, device)  # [b, P]
        width = max(len(row[1]) for row in picked)
        c_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        c_mask = torch.zeros((batch_size, width))  # read (attention)
        c_loss = torch.zeros((batch_size, width))  # trained on
        for i, row in enumerate(picked):
            t = row[1]
            c_ids[i, : len(t)] = torch.tensor(t)
            c_mask[i, : len(t)] = 1
            c_loss[i, : len(t)] = torch.tensor(row[2], dtype=torch.float32) if len(row) > 2 else 1.0
        c_ids, c_mask, c_loss = c_ids.to(device), c_mask.to(device), c_loss.to(device)
        logp, _ = completion_logprobs(
            model, torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask.long()], 1), c_loss
        )  # [b, T]
        loss = -(logp * c_loss).sum() / c_loss.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        on_step(step, losses[-1])
    return losses
