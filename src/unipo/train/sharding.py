"""Models across processes: FSDP2 sharding, full parameters for no-grad work, gradient averaging,
full state dicts.

``train.parallel``:

- ``ddp``: every rank holds the whole model; after the micro-batches of an optimizer step the
  gradients are averaged over ranks by one bucketed all-reduce (``average_gradients``), the
  reduction ``torch.nn.parallel.DistributedDataParallel`` performs. unipo calls it itself rather
  than through DDP's forward wrapper because its log-prob pass bypasses ``forward`` (the decoder,
  then the LM head in chunks through a fused autograd function), which DDP's reducer cannot see.
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every decoder layer and on a root module
  (``ShardedPolicy``) whose ``forward`` *is* unipo's log-prob pass, so the root's parameters
  (embeddings, final norm, LM head) are gathered around it and their gradients reduce-scattered
  after it, exactly as for a model's own forward. On a GPU parameters are all-gathered in bf16
  and gradients reduced in fp32 (``MixedPrecisionPolicy``). Generation and the no-grad passes
  (π_old, π_ref, values, evaluation) run inside ``full_params``: every unit unsharded once and
  kept so for the block, so ranks that decode a different number of tokens never wait on each
  other's collectives; only the update's forward/backward runs sharded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from unipo.train.dist import Dist


class ShardedPolicy(nn.Module):
    """The FSDP2 root around a causal LM: ``forward`` is ``completion_logprobs_with_stats``.

    ``unipo.train.logprobs.completion_logprobs_with_stats(sharded, ...)`` dispatches here, so every
    caller passes this module where it would pass the model.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.module = policy  # ``module``: what unipo's unwrapping follows, as for DDP

    def forward(self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, **kw: Any) -> Any:
        from unipo.train.logprobs import completion_logprobs_with_stats

        policy = self.module
        return completion_logprobs_with_stats(policy, input_ids, attention_mask, completion_mask, **kw)


class ShardedModule(nn.Module):
    """The FSDP2 root around any module whose ``forward`` unipo calls directly (the critic)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a causal LM (or of its decoder trunk), through peft wrappers."""
    from unipo.train.logprobs import _unwrap

    base = _unwrap(model)
    for owner in (base, getattr(base, "model", None), getattr(base, "get_decoder", lambda: None)()):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if isinstance(layers, nn.ModuleList) and len(layers):
            return list(layers)
    raise ValueError(
        f"cannot find the decoder layers of {type(base).__name__} to shard (looked for .layers and "
        ".model.layers); use train.parallel=ddp for this model"
    )


def _mp_policy(device: torch.device) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()  # CPU: float32 all-gathers and reductions


def shard(module: nn.Module, root: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` every decoder layer inside ``module``, then ``root`` (which contains it);
    one no-grad pass is not needed: ``lazy_init`` below makes ``root`` the root unit."""
    from torch.distributed.fsdp import fully_shard

    mp = _mp_policy(device)
    for layer in decoder_layers(module):
        fully_shard(layer, mp_policy=mp)
    fully_shard(root, mp_policy=mp)
    root._get_fsdp_state()._lazy_init()  # type: ignore[operator]  # root first (FSDP2 requires it)
    return root


def shard_policy(model: nn.Module, device: torch.device) -> ShardedPolicy:
    return shard(model, ShardedPolicy(model), device)  # type: ignore[return-value]


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


@contextmanager
def full_params(module: nn.Module | None) -> Iterator[None]:
    """Every FSDP2 unit in ``module`` unsharded for the block and not resharded after its forward
    passes (generation, no-grad passes); restored and resharded after. A no-op for unsharded modules."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)] if module is not None else []
    if not units:
        yield
        return
    saved = []
    for m in units:
        state = m._get_fsdp_state()
        saved.append((state, state._auto_reshard_after_forward,
                      [(g, g.post_forward_mesh_info) for g in state._fsdp_param_groups]))  # fmt: skip
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for (state, auto, groups), m in zip(saved, units):
            state._auto_reshard_after_forward = auto
            for g, info in groups:
                g.post_forward_mesh_info = info
            m.reshard()


def average_gradients(params: list[nn.Parameter], dist: Dist, bucket_mb: float = 25.0) -> None:
    """Average ``.grad`` over ranks in place (DDP's reduction): one all-reduce per ~25 MB bucket of
    flattened gradients. A parameter without a gradient on this rank contributes zeros (so every
    rank sends the same buckets)."""
    if not dist.enabled:
        return
    bucket: list[nn.Parameter] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, "avg")
        offset = 0
        for p in bucket:
            n = p.numel()
            g = flat[offset : offset + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            offset += n
        bucket, size = [], 0

    for p in params:
        bucket.append(p)
        size += p.numel() * p.element_size()
        if size >= bucket_mb * 2**20:
            flush()
    flush()


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's weights as plain CPU tensors on every rank (gathered from shards when the
    model is sharded): what ``save_model`` writes as a Hugging Face directory."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
