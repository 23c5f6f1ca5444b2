"""The policy, its reference and its generation engine, set up for this process's place in a run.

Shared by the RL and preference objectives, so that loading, the reference model, sharding
(``train.parallel``) and the engine are written once:

    load the model (local directory, safetensors, LoRA)  →  π_ref (a frozen copy, or the LoRA
    policy with its adapter off)  →  FSDP2: shard the policy and the copy (``sharding.shard``)
    →  the HF engine, whose ``generate`` runs on full parameters under FSDP2
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unipo.train.dist import Dist
from unipo.train.sharding import full_params, full_state_dict, shard_policy


@dataclass
class Policy:
    """The policy as this process holds it.

    ``model`` is the causal LM (peft-wrapped with LoRA), the module whose parameters the
    optimizer updates and whose names checkpoints use. ``scorer`` is what log-prob passes get:
    ``model`` itself, or its FSDP2 root (``ShardedPolicy``). ``ref_root`` is the FSDP2 unit that
    holds the reference's weights (None when not sharded).
    """

    model: nn.Module
    tokenizer: Any
    scorer: nn.Module
    reference: Any  # unipo.models.Reference | None
    ref_root: nn.Module | None
    rebuild: Callable[[], nn.Module]  # a fresh unsharded model on the CPU (to save the final one)
    dist: Dist

    @contextmanager
    def reference_model(self) -> Iterator[tuple[nn.Module, nn.Module | None]]:
        """(module that computes π_ref, the FSDP2 root to unshard for it or None)."""
        assert self.reference is not None
        with self.reference.active() as ref:
            yield ref, self.ref_root

    def save(self, out_dir: Path, task: dict[str, Any] | None = None) -> None:
        """The model as a Hugging Face directory (rank 0 writes; collective when sharded), with
        ``task`` (its task and prompt format) as ``unipo_task.json``."""
        from unipo.models import save_model

        if self.dist.sharded:
            weights = full_state_dict(self.model)  # every rank takes part in the gathers
            if self.dist.is_main:
                fresh = self.rebuild()
                fresh.load_state_dict(weights)
                save_model(fresh, self.tokenizer, out_dir, task=task)
        elif self.dist.is_main:
            save_model(self.model, self.tokenizer, out_dir, task=task)
        self.dist.barrier()


def load_policy(
    model_cfg: Any,
    device: torch.device,
    dist: Dist,
    *,
    reference: bool,
    before_shard: Callable[[nn.Module], None] | None = None,
) -> Policy:
    """Load ``model_cfg.path`` (an ``unipo.config.ModelConfig``) for this process; ``reference``:
    also make π_ref. Under FSDP2 both are sharded (the copy separately); ``before_shard(model)``
    runs first (what copies the whole policy, e.g. the critic's trunk)."""
    from unipo.models import LoraSettings, load_model, make_reference

    lora = (
        LoraSettings(**model_cfg.lora.model_dump(exclude={"enabled"})) if model_cfg.lora.enabled else None
    )
    load = functools.partial(
        load_model, model_cfg.path, dtype=model_cfg.dtype, trust_remote_code=model_cfg.trust_remote_code,
        attn_implementation=model_cfg.attn_implementation, lora=lora,
        gradient_checkpointing=model_cfg.gradient_checkpointing,
    )  # fmt: skip
    model, tokenizer = load(device=str(device))
    ref = make_reference(model) if reference else None  # π_ref: a copy before sharding, or LoRA-off
    if before_shard is not None:
        before_shard(model)
    scorer: nn.Module = model
    ref_root: nn.Module | None = None
    if dist.sharded:
        scorer = shard_policy(model, device)
        if ref is not None:
            if ref.shares_weights:
                ref_root = scorer
            else:
                ref.model = shard_policy(ref.model, device)
                ref_root = ref.model
    return Policy(
        model=model, tokenizer=tokenizer, scorer=scorer, reference=ref, ref_root=ref_root,
        rebuild=lambda: load(device="cpu")[0], dist=dist,
    )  # fmt: skip


def engine_for_sharding(engine: Any, root: nn.Module | None, sharded: bool) -> Any:
    """The rollout engine a run uses: under FSDP2 (``sharded``) an engine that samples from the
    trainer's own parameters (``shares_weights``: HF generate) is wrapped to generate inside
    ``full_params(root)``; an engine with its own copy of the weights (a vLLM server, synced from
    gathered full parameters in ``RLCollect._sync_engine``) is used as it is, with no gather per step."""
    if sharded and root is not None and engine.shares_weights:
        return FullParamsEngine(engine, root)
    return engine


class FullParamsEngine:
    """A rollout engine whose ``generate`` runs inside ``full_params(root)``: under FSDP2 every rank
    then decodes on its own, however many tokens its rows take. Everything else is the engine's."""

    def __init__(self, engine: Any, root: nn.Module) -> None:
        self.engine = engine
        self.root = root

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with full_params(self.root):
            return self.engine.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)
