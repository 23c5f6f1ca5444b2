"""Logits processors of the HF engine: the sampling transforms in vLLM's order, HAPO's per-token
temperature, and the recorder of the sampled tokens' processed log-probs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from unipo.rollout.base import SamplingParams


class TokenTemperature(LogitsProcessor):
    """Per-row temperature chosen from the entropy of each row's next-token distribution.

        z = s / T₀,   H = −Σ_v softmax(z)_v · log softmax(z)_v   [N],   T = f(H) [N],   out = s / T

    where s [N, V] are the logits that reach the processor and f is
    ``SamplingParams.token_temperature``. HAPO's adaptive temperature sampling (starriver030515/
    HAPO, ``vllm/v1/sample/sampler.py``: ``compute_entropy_based_temperature`` replaces vLLM's
    temperature step) is f(H) = T₀(1 + clamp(ĥ(H), −1, 1)·τ); see ``HAPOClip.token_temperature``.
    Tokens already masked to −inf (e.g. EOS under ``min_new_tokens``) count 0 toward H.
    ``last_mean`` keeps the mean temperature of the last call, for tests and diagnostics.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], base_temperature: float) -> None:
        self.fn = fn
        self.base_temperature = base_temperature
        self.last_mean: float | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        z = scores.float() / self.base_temperature  # [N, V]
        logp = torch.log_softmax(z, dim=-1)
        entropy = -(logp.exp() * logp.masked_fill(torch.isinf(logp), 0.0)).sum(-1)  # [N]
        temperature = self.fn(entropy).to(scores.device, scores.dtype)  # [N]
        if temperature.shape != entropy.shape or not bool((temperature > 0).all()):
            raise ValueError(
                f"SamplingParams.token_temperature must return positive temperatures of shape "
                f"{tuple(entropy.shape)} (one per row), got shape {tuple(temperature.shape)} "
                f"with min {float(temperature.min()) if temperature.numel() else float('nan')}"
            )
        self.last_mean = float(temperature.mean())
        return scores / temperature[:, None]  # [N, V]


class SampledLogprobs(LogitsProcessor):
    """Records log μ(y_t): the log-prob of each sampled token under the distribution it was drawn from.

    Placed last in ``generate``'s processor list, it sees the *processed* scores s'_t (after
    min-new-tokens masking, temperature, top-k and top-p) from which ``generate`` samples with
    softmax; it keeps log_softmax(s'_t) [N, V] for one step and, at the next call, gathers the token
    that was sampled from it (the last column of ``input_ids``); ``finish(sequences)`` gathers the
    last step's. Memory is one [N, V] row block, not the T × [N, V] of ``output_scores``. These are
    the log-probs vLLM returns with ``--logprobs-mode processed_logprobs``. Rows that already ended
    get the pad token's value, which the completion mask hides.
    """

    def __init__(self) -> None:
        self.prev: Tensor | None = None  # [N, V] log_softmax of the last processed scores
        self.steps: list[Tensor] = []  # [N] per generated token

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: Tensor) -> Tensor:
        """[N, T] log μ of the T generated tokens, given ``generate``'s output sequences [N, P+T]."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, sequences[:, -1:]).squeeze(1))
            self.prev = None
        if not self.steps:
            return torch.zeros(sequences.shape[0], 0, device=sequences.device)
        return torch.stack(self.steps, dim=1)


def sampling_processors(params: SamplingParams) -> LogitsProcessorList:
    """The sampling transforms in vLLM's (and ``generate``'s) order: temperature (or HAPO's per-token
    ``TokenTemperature``) → top-k → top-p, applied by unipo rather than by ``generate``.

    ``generate`` is then called with temperature=1, top_k=0, top_p=1, so it adds none of its own, and
    neither ``generate``'s default top_k=50 nor a checkpoint's ``generation_config`` (Qwen ships
    top_k=20, top_p=0.8, temperature=0.7) can change what is sampled behind the settings' back.
    ``SampledLogprobs`` goes after these.
    """
    procs: list[LogitsProcessor] = []
    if params.token_temperature is not None:
        procs.append(TokenTemperature(params.token_temperature, params.temperature))
    elif params.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        procs.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p=params.top_p))
    return LogitsProcessorList(procs)
