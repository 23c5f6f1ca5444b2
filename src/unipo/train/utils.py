"""Small helpers of the training loop: seeding, devices, memory, the LR schedule, batch metrics."""

from __future__ import annotations

import random
import resource
from collections.abc import Callable

import numpy as np
import torch

from unipo.batch import RolloutBatch
from unipo.config import Config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


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
    if batch.size == 0:
        return {"reward/mean": float("nan")}
    r = batch.rewards
    lengths = batch.completion_mask.sum(1)
    return {
        "reward/mean": float(r.mean()),
        "reward/std": float(r.std()) if r.numel() > 1 else 0.0,
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/truncated_frac": float(batch.truncated.float().mean()),
        "rollout/train_completions": float(batch.size),
    }
