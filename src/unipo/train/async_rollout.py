"""Asynchronous rollouts with bounded staleness: the next step's batch is generated (and scored and
selected) in a background thread while the current step trains.

    step k:   take batch k (generated with the weights of version k−1 during step k−1's update)
              sync the engine to version k, start generating batch k+1 in the background
              update on batch k
    ...

The engine must not share the trainer's weights (the update would change them under the sampler):
a vLLM server, or the in-process ``SnapshotEngine`` (``rollout.engine=hf``). Every row carries the
weight version it was sampled with; rows more than ``rollout.max_staleness`` versions behind the
policy are dropped (``rollout/stale_dropped``), and with ``max_staleness=0`` no batch can be
generated ahead, so the run is the synchronous one. The importance ratio of the update is then
π_θ/π_old with π_old recomputed at the current weights (the trainer's π_old pass); the
``decoupled`` correction adds the behaviour weight π_old/μ of decoupled PPO (AReaL).

Not carried: exact resume of an asynchronous run (the batch in flight at a checkpoint is not
saved: a resumed run starts with a fresh synchronous step), and several processes (their collection
gathers over the process group, which the update uses at the same time).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from unipo.batch import REPLAYED_ROW_KEY, RolloutBatch


def drop_stale(batch: RolloutBatch, version: int, max_staleness: int) -> tuple[RolloutBatch, int]:
    """(rows sampled at most ``max_staleness`` versions before ``version``, how many were dropped);
    rows from a version newer than the policy's are an error (they cannot exist). Rows a part replays
    from an earlier step (``metadata["replayed"]``) are kept whatever their age: their part bounds it."""
    if batch.size == 0 or batch.weight_version is None:
        return batch, 0
    lag = version - batch.weight_version  # [B]
    if bool((lag < 0).any()):
        seen = batch.weight_version.tolist()
        raise ValueError(f"rows sampled with weight versions {seen} > the policy's {version}")
    keep = (lag <= max_staleness) | batch.flags(REPLAYED_ROW_KEY).to(lag.device)  # [B]
    dropped = int((~keep).sum())
    return (batch if dropped == 0 else batch.select(keep)), dropped


class Prefetcher:
    """One batch generated ahead in a background thread (``start``), handed over by ``take``."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unipo-rollout")
        self.future: Future | None = None

    def start(self, make: Callable[[], Any]) -> None:
        if self.future is not None:
            raise RuntimeError("a rollout is already in flight")
        self.future = self.pool.submit(make)

    def take(self, make: Callable[[], Any]) -> tuple[Any, float]:
        """(the batch in flight, or ``make()`` now when there is none; seconds waited for it)."""
        t0 = time.perf_counter()
        if self.future is None:
            return make(), 0.0
        future, self.future = self.future, None
        return future.result(), time.perf_counter() - t0

    def discard(self) -> None:
        """Wait for the batch in flight, if any, and forget it (a checkpoint, the run's end)."""
        if self.future is not None:
            future, self.future = self.future, None
            with contextlib.suppress(Exception):  # the step that would have used it no longer exists
                future.result()

    def close(self) -> None:
        self.discard()
        self.pool.shutdown(wait=True)


def snapshot_if_shared(engine: Any, model: torch.nn.Module, tokenizer: Any, rollout_cfg: Any) -> Any:
    """The engine asynchronous rollouts need: ``engine`` unless it samples from the trainer's own
    weights, then a ``SnapshotEngine`` on a copy of them."""
    if not getattr(engine, "shares_weights", False):
        return engine
    from unipo.rollout.snapshot import SnapshotEngine

    r = rollout_cfg
    return SnapshotEngine(
        model, tokenizer, max_batch=r.max_batch, prefill_once=r.prefill_once, decode=r.decode
    )
