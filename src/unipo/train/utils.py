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


class DeviceError(ValueError):
    """``model.device`` names a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """``model.device`` → a ``torch.device``; ``auto``: cuda if available, else cpu.

    A device that does not exist here (``cuda`` without a GPU or a CUDA build of torch, ``cuda:3``
    on a machine with two GPUs, ``mps`` off Apple silicon, a misspelt name) is a ``DeviceError``
    naming ``model.device`` and what this machine has, raised before any model is loaded.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(
            f"model.device={name!r} is not a device name ({e}); use auto, cpu, cuda or cuda:N"
        ) from None
    have = _available_devices()
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(
                f"model.device={name!r} but {why} on this machine (available: {have}); "
                "use model.device=cpu (or auto)"
            )
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"model.device={name!r} but this machine has {count} CUDA GPU(s) (available: {have})"
            )
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"model.device={name!r} but MPS is not available here (available: {have})")
    return device


def _available_devices() -> str:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)


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
