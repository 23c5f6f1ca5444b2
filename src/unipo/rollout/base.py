"""The rollout-engine interface. HF transformers implements it here; vLLM can too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class SamplingParams(BaseModel):
    """How completions are sampled."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 disables.")
    max_new_tokens: int = Field(64, gt=0, description="Completion length cap; longer ones are truncated.")
    min_new_tokens: int = Field(0, ge=0, description="Force at least this many tokens (benchmarks).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (besides EOS).")
    greedy: bool = Field(False, description="Greedy decoding (evaluation).")
    token_temperature: Callable[[Tensor], Tensor] | None = Field(
        None,
        exclude=True,
        description="Python only, set by the trainer from the algorithm's parts (HAPO): maps the "
        "entropy [N] of each row's next-token distribution at `temperature` to that row's "
        "sampling temperature [N]; None samples every token at `temperature`.",
    )


@dataclass
class Generation:
    """What an engine returns for B = len(prompts) × n rows, grouped by prompt (row = prompt·n + j)."""

    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P]
    completion_ids: Tensor  # [B, T] right-padded with pad id
    completion_mask: Tensor  # [B, T] float, 1 up to and including EOS / the stop string
    truncated: Tensor  # [B] bool: no EOS / stop string within max_new_tokens
    completions: list[str] = field(default_factory=list)  # decoded text, special tokens removed


class RolloutEngine(Protocol):
    """Samples ``n`` completions for each prompt from the current policy weights."""

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation: ...

    def sync_weights(self, model: nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (no-op when it shares them)."""
        ...
