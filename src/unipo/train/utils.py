"""Small helpers of the training loop: seeding, devices, memory, the LR schedule, batch metrics."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from unipo.batch import EXTRA_ROW_KEY, SFT_KEY, SFT_ROW_KEY, SFT_TRUNCATED_KEY, RolloutBatch
from unipo.config import Config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def process_device(name: str, dist: Any) -> torch.device:
    """This process's device: ``model.device`` resolved, and under several processes on CUDA the
    GPU of this rank (``cuda:LOCAL_RANK``)."""
    device = resolve_device(name)
    if getattr(dist, "enabled", False) and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


def lr_schedule(cfg: Config, total: int) -> Callable[[int], float]:
    warm = cfg.optim.warmup_steps
    kind = cfg.optim.schedule

    def factor(i: int) -> float:
        if warm and i < warm:
            return (i + 1) / warm
        if kind == "constant":
            return 1.0
        frac = min(1.0, (i - warm) / max(1, total - warm))
        return 0.5 * (1 + np.cos(np.pi * frac)) if kind == "cosine" else 1.0 - frac

    return factor


def batch_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Reward and length statistics of the rows that will be trained on, main-rollout samples only.

    A row marked ``metadata["hpt_sft"]`` (HPT's switch put a demonstration, reward 1.0, in place
    of a failed group) was not sampled: it is left out of ``reward/*`` and ``response/*`` (which
    would otherwise climb with every group that fails) and counted in ``hpt/sft_rows``, logged
    whenever the batch carries demonstrations (HPT runs), with ``hpt/sft_rows_truncated`` those
    of them whose demonstration was cut at ``max_new_tokens`` (``metadata["sft_target_truncated"]``).
    Rows of a part's extra rollout (``metadata["extra_rollout"]``, AEPO's, sampled at another
    temperature and picked by their reward) are left out the same way and counted in
    ``rollout/extra_rows``. ``rollout/train_completions`` counts every row. ``reward/mean`` is NaN
    when no sampled row is left (an empty or all-SFT batch).
    """
    meta = batch.metadata or [{}] * batch.size
    sft = batch.flags(SFT_ROW_KEY)  # [B]
    extra = batch.flags(EXTRA_ROW_KEY)  # [B]
    out: dict[str, float] = {}
    if any(SFT_KEY in m or SFT_ROW_KEY in m for m in meta):
        out["hpt/sft_rows"] = float(sft.sum())
        out["hpt/sft_rows_truncated"] = float(
            sum(bool(m.get(SFT_ROW_KEY) and m.get(SFT_TRUNCATED_KEY)) for m in meta)
        )
    if extra.any():
        out["rollout/extra_rows"] = float(extra.sum())
    sampled = ~sft & ~extra
    if batch.size:
        out["rollout/train_completions"] = float(batch.size)
    if not sampled.any():
        return {"reward/mean": float("nan"), **out}
    r = batch.rewards.cpu()[sampled]
    lengths = batch.completion_mask.sum(1).cpu()[sampled]
    return {
        "reward/mean": float(r.mean()),
        "reward/std": float(r.std()) if r.numel() > 1 else 0.0,
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/truncated_frac": float(batch.truncated.cpu()[sampled].float().mean()),
        **out,
    }
