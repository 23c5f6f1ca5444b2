"""Data-parallel context: ranks, shares of a batch, and the few collectives unipo needs.

unipo runs as one process per device under ``torchrun`` (or Ray Train's ``TorchTrainer``, which
sets the same environment). ``Dist`` is built once per run from that environment
(``init_dist``); with one process every collective is the identity, so the single-process code
path is the distributed one with ``world == 1``.

What is global and what is local (``docs/distributed.md``):

- every rank holds the **whole batch** of a step on the CPU (rows gathered after each rank
  generated and scored its share of the prompts, ``gather_batch``), so selections, advantages,
  denominators and diagnostics are computed on the global batch, identically on every rank,
  by the same code as in one process: no part knows how many processes there are;
- the expensive model passes are split: each rank runs the forward/backward passes of its share
  of the rows (``share``) and the results are gathered (``gather_rows``).
"""

from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor


class DistError(RuntimeError):
    """The distributed setup is not usable as configured."""


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes (one per device)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = "none"  # "gloo" | "nccl" | "none" (one process)
    mode: str = "none"  # train.parallel: "none" | "ddp" | "fsdp2"
    timeout_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp2"

    # ------------------------------------------------------------------ shares
    def share(self, n: int, rank: int | None = None) -> slice:
        """Rows [start, stop) of ``rank`` (default: this one) when n rows are split into ``world``
        contiguous, balanced shares (the first n % world shares get one row more)."""
        r = self.rank if rank is None else rank
        base, extra = divmod(n, self.world)
        start = r * base + min(r, extra)
        return slice(start, start + base + (1 if r < extra else 0))

    def group_shares(self, group_ids: Tensor) -> list[slice]:
        """Contiguous row shares of one per rank that never cut a group (rows of one prompt are
        adjacent in unipo's batches): each cut is put at the group boundary nearest to the
        balanced cut. Shares may be empty when there are fewer groups than ranks."""
        b = int(group_ids.numel())
        if self.world == 1:
            return [slice(0, b)]
        starts = [0] + [i for i in range(1, b) if int(group_ids[i]) != int(group_ids[i - 1])] + [b]
        cuts = [0]
        for r in range(1, self.world):
            target = r * b / self.world
            best = min(starts, key=lambda s: (abs(s - target), s))
            cuts.append(max(best, cuts[-1]))
        cuts.append(b)
        return [slice(cuts[r], cuts[r + 1]) for r in range(self.world)]

    # ------------------------------------------------------------------ collectives
    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """In place over ranks (``sum`` | ``max`` | ``avg``); returns ``t``."""
        if self.enabled:
            ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "avg": tdist.ReduceOp.AVG}
            if op == "avg" and self.backend == "gloo":  # gloo's AVG is recent; a SUM and a divide is not
                tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
                t.div_(self.world)
            else:
                tdist.all_reduce(t, op=ops[op])
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (signals, stop requests)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        return bool(self.all_reduce(t, "max").item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    @property
    def comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def gather_rows(self, local: Tensor, counts: list[int]) -> Tensor:
        """Concatenate every rank's [n_r, ...] block along dim 0 (rank order), padding dim 1 on the
        right to the widest block. ``counts`` [world] are the row counts, known to every rank.
        The result carries no gradient (see ``with_local_grad``)."""
        if not self.enabled:
            return local.detach()
        width = torch.tensor([local.shape[1] if local.dim() > 1 else 0], device=self.comm_device)
        width = int(self.all_reduce(width, "max").item())
        rows = max(counts)
        buf = local.detach().new_zeros((rows, width, *local.shape[2:]) if local.dim() > 1 else (rows,))
        if local.dim() > 1:
            buf[: local.shape[0], : local.shape[1]] = local.detach()
        else:
            buf[: local.shape[0]] = local.detach()
        buf = buf.to(self.comm_device)
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        tdist.all_gather(parts, buf)
        return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(local.device)

    def with_local_grad(self, gathered: Tensor, local: Tensor, counts: list[int]) -> Tensor:
        """``gathered`` (no grad) with this rank's rows replaced by ``local`` (with grad), so a loss
        on the global rows differentiates only into this rank's own forward pass."""
        if not self.enabled:
            return local
        start = sum(counts[: self.rank])
        width = gathered.shape[1]
        pad = width - local.shape[1]
        mine = torch.nn.functional.pad(local, (0, pad)) if pad > 0 else local
        return torch.cat([gathered[:start], mine, gathered[start + counts[self.rank] :]])


def gather_objects_concat(dist: Dist, items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order."""
    return [x for part in dist.all_gather_object(items) for x in part]


def object_size(obj: Any) -> int:
    """Bytes ``obj`` takes pickled (what an object collective sends; for the benchmarks)."""
    return len(pickle.dumps(obj))


def init_dist(parallel: str, backend: str = "auto", timeout_s: float = 300.0, device: str = "auto") -> Dist:
    """The run's ``Dist`` from the environment torchrun or Ray Train set (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); starts the process group if nobody has.

    ``parallel``: ``none`` | ``ddp`` | ``fsdp2`` | ``auto`` (ddp when there are several processes);
    ``backend``: ``auto`` (nccl on CUDA, else gloo) | ``gloo`` | ``nccl``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if parallel not in ("none", "auto", "ddp", "fsdp2"):
            raise DistError(f"train.parallel={parallel!r}; allowed: none, auto, ddp, fsdp2")
        return Dist(mode="none" if parallel == "auto" else parallel, timeout_s=timeout_s)
    if parallel == "none":
        raise DistError(
            f"{world} processes were started (WORLD_SIZE={world}) but train.parallel=none: set "
            "train.parallel=ddp or fsdp2 (or auto)"
        )
    mode = "ddp" if parallel == "auto" else parallel
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available() and not device.startswith("cpu")
    chosen = backend if backend != "auto" else ("nccl" if cuda else "gloo")
    if chosen == "nccl" and not torch.cuda.is_available():
        raise DistError("train.dist_backend=nccl needs CUDA devices; use gloo on CPU")
    if chosen == "nccl":
        torch.cuda.set_device(local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group(chosen, timeout=datetime.timedelta(seconds=timeout_s))
    else:
        chosen = str(tdist.get_backend())
    return Dist(
        rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank, backend=chosen,
        mode=mode, timeout_s=timeout_s,
    )  # fmt: skip


def shutdown() -> None:
    """Tear the process group down (end of a distributed run)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
