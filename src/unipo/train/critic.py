"""The PPO critic: a separate value model (decoder trunk + ``ValueHead``) with its own optimizer.

As in verl and OpenRLHF, the critic is a full copy of the policy's decoder, trained on its own:

    V_φ(s_t) = w·h_t + b,   h_t = the trunk's last hidden state at the position that *generated*
                                  completion token t (the same shift as the log-probs)

The trainer calls ``values(batch)`` after collecting a rollout (→ ``batch.values``, read by the
``gae`` advantage) and ``update(batch, returns)`` with the GAE returns R_t = A_t + V_t. The pure
pieces (``ValueHead``, the clipped ``value_loss``) live in ``unipo.parts.critic``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from unipo.batch import RolloutBatch
from unipo.parts.critic import ValueHead, value_loss
from unipo.train.dist import Dist
from unipo.train.logprobs import _unwrap, position_ids_from_mask
from unipo.train.sharding import ShardedModule, average_gradients, full_params, shard


def _decoder_copy(policy: nn.Module) -> nn.Module:
    """A trainable deep copy of the policy's decoder trunk (no LM head).

    A peft policy is copied with its adapters merged (W + s·BA), so the critic starts from the
    policy's current function but is a plain transformers decoder with every weight trainable.
    """
    from unipo.models import is_peft_model

    model = policy
    while not is_peft_model(model) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module  # DDP / FSDP wrappers
    if is_peft_model(model):
        base = _unwrap(copy.deepcopy(model).merge_and_unload())  # the copy's merged weights
        trunk = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    else:
        base = _unwrap(model)
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        trunk = copy.deepcopy(decoder)
    return trunk.requires_grad_(True)


class CriticNet(nn.Module):
    """Trunk + value head as one module: ``forward(input_ids, attention_mask, t) -> V [b, t]``."""

    def __init__(self, trunk: nn.Module, head: ValueHead) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, t: int) -> Tensor:
        out = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask), use_cache=False,
        )  # fmt: skip
        return self.head(out.last_hidden_state[:, -t - 1 : -1, :])  # [b, t]: position p generated p+1


class Critic:
    """A value model for PPO: ``trunk`` (decoder) + ``head`` (``ValueHead``) + AdamW.

    With several processes (``dist``) values and updates are split over ranks like the policy's
    passes: each rank computes its share of the rows and the results are gathered; the update
    backpropagates ``world`` × each rank's share of the batch loss and averages gradients
    (``ddp``: ``average_gradients``; ``fsdp2``: the trunk's layers and the net are sharded).

    ``values`` gives V at rollout time; ``update`` runs ``epochs`` optimizer steps on the PPO
    clipped value loss (Schulman et al. 2017, arXiv 1707.06347; verl ``compute_value_loss``):

        V_clip = clamp(V, V_old − c, V_old + c)
        L = ½ · Σ_t m_t·max((V − R)², (V_clip − R)²) / Σ_t m_t      (token mean over the batch)

    Each step accumulates gradients over micro-batches of ``micro_batch_size`` rows, every
    micro-batch loss divided by the *whole batch's* valid-token count, so they add up to L.
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: ValueHead,
        *,
        lr: float,
        micro_batch_size: int,
        max_grad_norm: float = 1.0,
        clip: float | None = 0.5,
        epochs: int = 1,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        dist: Dist | None = None,
    ) -> None:
        if micro_batch_size < 1 or epochs < 1:
            raise ValueError(f"micro_batch_size ({micro_batch_size}) and epochs ({epochs}) must be ≥ 1")
        self.dist = dist or Dist()
        self.trunk = trunk
        self.head = head.to(next(trunk.parameters()).device)
        self.net = CriticNet(self.trunk, self.head)
        self.root: nn.Module = self.net  # what forward passes go through (the FSDP2 root when sharded)
        if self.dist.sharded:
            self.root = shard(self.net, ShardedModule(self.net), next(trunk.parameters()).device)
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.clip = clip
        self.epochs = epochs
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    @classmethod
    def from_policy(
        cls,
        policy: nn.Module,
        *,
        lr: float,
        micro_batch_size: int,
        max_grad_norm: float = 1.0,
        clip: float | None = 0.5,
        epochs: int = 1,
        dist: Dist | None = None,
        **optim_kwargs: Any,
    ) -> Critic:
        """A critic initialized from the policy's decoder (copied) and a fresh ``ValueHead``.

        ``optim_kwargs``: ``betas`` / ``weight_decay`` for AdamW (defaults (0.9, 0.999), 0).
        """
        trunk = _decoder_copy(policy)
        head = ValueHead(trunk.config.hidden_size)
        return cls(
            trunk, head, lr=lr, micro_batch_size=micro_batch_size, max_grad_norm=max_grad_norm,
            clip=clip, epochs=epochs, dist=dist, **optim_kwargs,
        )  # fmt: skip

    # ------------------------------------------------------------------ structure
    @property
    def device(self) -> torch.device:
        return next(self.trunk.parameters()).device

    def parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def train(self, mode: bool = True) -> Critic:
        self.trunk.train(mode)
        self.head.train(mode)
        return self

    def _forward(self, micro: RolloutBatch) -> Tensor:  # [b, t] float32, 0 on padding
        t = micro.completion_ids.shape[1]
        v = self.root(micro.input_ids, micro.attention_mask, t)  # [b, t]
        return torch.where(micro.completion_mask.bool(), v, torch.zeros_like(v))

    def _micro_batches(self, batch: RolloutBatch, world: int = 1) -> Iterator[tuple[slice, RolloutBatch]]:
        """(row slice, trimmed micro-batch on the critic's device) over consecutive rows; with
        ``world`` processes a micro-batch holds ``world`` × ``micro_batch_size`` rows."""
        size = self.micro_batch_size * world
        for start in range(0, batch.size, size):
            rows = slice(start, min(start + size, batch.size))
            yield rows, batch.select(list(range(rows.start, rows.stop))).trim().to(self.device)

    # ------------------------------------------------------------------ rollout time
    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> Tensor:  # [B, T] float32, on the batch's device
        """V_φ at every completion token of ``batch`` (eval mode, no grad), 0 on padding; with
        several processes each rank computes its share of the rows and the values are gathered."""
        d = self.dist
        if d.enabled:
            shares = d.group_shares(batch.group_ids)
            counts = [s.stop - s.start for s in shares]
            mine = shares[d.rank]
            local = torch.zeros(0, batch.completion_ids.shape[1])
            if counts[d.rank]:
                with full_params(self.root):
                    local = self._local_values(batch.select(list(range(mine.start, mine.stop)))).cpu()
            return d.gather_rows(local, counts).to(batch.completion_mask.device)
        return self._local_values(batch)

    def _local_values(self, batch: RolloutBatch) -> Tensor:  # [B, T]
        was_training = self.trunk.training
        self.train(False)
        out = torch.zeros(
            batch.completion_mask.shape, dtype=torch.float32, device=batch.completion_mask.device
        )
        for rows, micro in self._micro_batches(batch):
            v = self._forward(micro)  # [b, t'] with t' ≤ T after trimming
            out[rows, : v.shape[1]] = v.to(out.device)
        self.train(was_training)
        return out

    # ------------------------------------------------------------------ update
    def update(self, batch: RolloutBatch, returns: Tensor) -> dict[str, float]:
        """``epochs`` optimizer steps regressing V onto ``returns`` [B, T] (GAE targets R = A + V).

        Needs ``batch.values`` (the critic's values at rollout time, V_old of the clip). A step
        whose loss or gradient is not finite is skipped (counted in ``critic/skipped_steps``).
        Metrics, averaged over epochs: ``critic/loss``, ``critic/value_mean``, ``critic/clip_frac``,
        ``critic/grad_norm``, ``critic/explained_variance`` = 1 − Var(R − V) / Var(R) over valid
        tokens, with V the values going into each step (verl ``critic/vf_explained_var``).
        With several processes every rank holds the whole batch; each forwards its share of every
        micro-batch (``world`` × ``micro_batch_size`` rows) and the sums are reduced over ranks.
        """
        if batch.values is None:
            raise ValueError("Critic.update needs batch.values (set batch.values = critic.values(batch))")
        if tuple(returns.shape) != tuple(batch.completion_mask.shape):
            raise ValueError(
                f"returns has shape {tuple(returns.shape)}, expected {tuple(batch.completion_mask.shape)}"
            )
        d = self.dist
        num_tokens = float(batch.completion_mask.sum().clamp(min=1))
        params = self.parameters()
        history: dict[str, list[float]] = {}
        skipped = 0
        self.train(True)
        for _epoch in range(self.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(4, dtype=torch.float64)  # loss, clip, value, non-finite micro-batches
            errors, targets = [], []  # valid-token (R − V) and R, for the explained variance
            for rows, micro in self._micro_batches(batch, d.world):
                t = micro.completion_ids.shape[1]
                ret_all = returns[rows, :t].to(self.device, torch.float32)  # [b, t]
                local, ret = micro, ret_all
                anchor = torch.zeros((), device=self.device)
                if d.enabled:
                    share = d.group_shares(micro.group_ids)[d.rank]
                    local = micro.select(list(range(share.start, share.stop)))
                    ret = ret_all[share]
                if local.size == 0:
                    if d.sharded:  # every rank runs each FSDP unit once per micro-batch
                        anchor = 0.0 * self._forward(micro.select([0])).sum()
                        (anchor * d.world).backward()
                    continue
                mask = local.completion_mask.float()  # [b, t]
                v = self._forward(local)  # [b, t], with grad
                v_old = local.values.float()  # [b, t]
                loss, m = value_loss(v, v_old, ret, mask, clip=self.clip, num_tokens=num_tokens)
                if not torch.isfinite(loss):
                    sums[3] += 1
                    loss = torch.zeros((), device=self.device) * v.sum()  # keep every rank's passes
                share_tokens = float(mask.sum()) / num_tokens  # this micro-batch's part of the token mean
                (loss * d.world).backward()
                sums += torch.tensor([float(loss.detach()), float(m["critic/clip_frac"]) * share_tokens,
                                      float(m["critic/value_mean"]) * share_tokens, 0.0], dtype=torch.float64)
                valid = mask.bool()
                errors.append((ret - v.detach())[valid].double().cpu())
                targets.append(ret[valid].double().cpu())
            d.all_reduce(sums, "sum")
            if d.mode == "ddp":
                average_gradients(params, d)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm) if sums[3] == 0 else None
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            if grad_norm is None or not torch.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            self.optimizer.step()
            err = torch.cat(errors) if errors else torch.zeros(0, dtype=torch.float64)
            tgt = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.float64)
            if d.enabled:
                err = torch.cat(d.all_gather_object(err))
                tgt = torch.cat(d.all_gather_object(tgt))
            for key, value in (
                ("critic/loss", float(sums[0])),
                ("critic/value_mean", float(sums[2])),
                ("critic/clip_frac", float(sums[1])),
                ("critic/grad_norm", float(grad_norm)),
                ("critic/explained_variance", _explained_variance(err, tgt)),
            ):
                history.setdefault(key, []).append(value)
        self.optimizer.zero_grad(set_to_none=True)
        out = {k: sum(v) / len(v) for k, v in history.items()}
        out["critic/skipped_steps"] = float(skipped)
        return out

    # ------------------------------------------------------------------ checkpoints
    def trainable(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """(net, optimizer): what a checkpoint saves of the critic (``state_io.Trainables``)."""
        return self.net, self.optimizer

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimizer state in one process (checkpoints use ``trainable()``)."""
        return {
            "trunk": self.trunk.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trunk.load_state_dict(state["trunk"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


def _explained_variance(errors: Tensor, returns: Tensor) -> float:
    """1 − Var(R − V) / (Var(R) + 1e-5) (population variances; the 1e-5 as verl's metric)."""
    if returns.numel() == 0:
        return math.nan
    return float(1 - errors.var(unbiased=False) / (returns.var(unbiased=False) + 1e-5))
