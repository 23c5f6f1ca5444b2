"""An HF engine on its own copy of the policy's weights: what asynchronous rollouts need in-process.

``HFEngine`` samples from the trainer's own parameters (``shares_weights``), so it cannot generate
the next batch while the update changes them. ``SnapshotEngine`` holds a frozen copy (LoRA
adapters merged: a plain model in the base model's names) and samples from it;
``update_weights(pairs, version)`` copies the trainer's weights in (``rollout.weights.policy_weights``)
between steps. It is the in-process counterpart of a vLLM server, at the cost of one more copy of
the weights, and what ``rollout.async`` uses with ``rollout.engine=hf``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unipo.rollout.base import Generation, SamplingParams
from unipo.rollout.hf import HFEngine


class SnapshotEngine:
    """``HFEngine`` over a copy of ``model`` that changes only through ``update_weights``."""

    shares_weights = False
    supports_sleep = False
    supports_pause = False

    def __init__(self, model: nn.Module, tokenizer: Any, **hf_kwargs: Any) -> None:
        from unipo.models import is_peft_model

        snapshot = copy.deepcopy(model)
        if is_peft_model(snapshot):
            snapshot = snapshot.merge_and_unload()  # the names policy_weights gives
        self.model = snapshot.eval().requires_grad_(False)
        self.engine = HFEngine(self.model, tokenizer, **hf_kwargs)
        self.params = dict(self.model.state_dict(keep_vars=True))
        self.version: int | None = 0

    def update_weights(self, weights: Iterable[tuple[str, Tensor]] | Path, version: int) -> None:
        """Copy ``(name, tensor)`` pairs (the policy's, merged) into the snapshot; record ``version``."""
        if isinstance(weights, Path):
            raise ValueError("SnapshotEngine takes (name, tensor) pairs, not a directory")
        with torch.no_grad():
            for name, tensor in weights:
                if name not in self.params:
                    raise ValueError(f"SnapshotEngine: the policy's weight {name!r} is not in the snapshot")
                self.params[name].copy_(tensor)
        self.version = int(version)
        self.engine.version = self.version

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        return self.engine.generate(prompts, n, params)

    def close(self) -> None:
        self.engine.close()
