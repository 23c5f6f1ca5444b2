"""The rollout-engine interface: ``hf`` (transformers ``generate`` in process, ``rollout/hf.py``) and
``vllm`` (a ``vllm serve`` process over HTTP, ``rollout/vllm.py``) implement it; the trainer never
knows which one it talks to.

An engine generates for the prompts it is given (rank-agnostic: a data-parallel wrapper hands each
rank its share), returns the sampler's own per-token log-probs of the *processed* distribution it
sampled from (after temperature / top-k / top-p), and tags every row with the weight version that
produced it. ``update_weights(weights, version)`` moves the trainer's weights into the engine.
Capabilities the trainer reads as attributes:

    shares_weights   the engine samples from the trainer's own parameters (hf): an update is a
                     version bump, the trainer passes no tensors
    supports_sleep   ``sleep(level)`` / ``wake_up(tags)`` free and restore the engine's accelerator
                     memory around the training phase (a colocated vLLM on a GPU)
    supports_pause   ``pause()`` / ``resume()`` hold in-flight generation (asynchronous rollouts)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


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
    # log μ(y_t) of the sampler's processed distribution (after temperature / top-k / top-p), 0 on
    # padding; None from an engine that cannot return them
    logprobs: Tensor | None = None  # [B, T] float
    weight_version: Tensor | None = None  # [B] long: the weight version that sampled each row


# what ``update_weights`` accepts: (name, tensor) pairs in Hugging Face naming, or a directory of
# safetensors (a ``save_pretrained`` layout)
Weights = Iterable[tuple[str, Tensor]] | str | os.PathLike


class RolloutEngine(Protocol):
    """Samples ``n`` completions for each prompt from the weights of ``version``."""

    shares_weights: bool  # samples from the trainer's parameters: update_weights only records the version
    supports_sleep: bool  # sleep(level) / wake_up(tags) exist
    supports_pause: bool  # pause() / resume() exist
    version: int | None  # weight version it samples from now; None: unknown (generate refuses)

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation: ...

    def update_weights(self, weights: Weights, version: int) -> None:
        """Sample from ``weights`` (all of the policy's, merged when LoRA) from now on, as ``version``."""
        ...

    def close(self) -> None:
        """Release what the engine holds (a server it started); idempotent."""
        ...
