"""The default rollout engine: HF transformers ``generate`` on the policy itself (CPU or GPU)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from unipo.rollout.base import Generation, SamplingParams


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Token-id lists → (ids [N, P], mask [N, P]) padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def completion_mask_from_ids(
    completion_ids: Tensor, eos_ids: list[int], pad_id: int, stopped_on_string: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mask up to and including the first EOS; truncated = no EOS (and no stop string) at all.

    completion_ids [B, T] → (mask [B, T] float, truncated [B] bool).
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))  # [B, T]
    has_eos = is_eos.any(dim=1)  # [B]
    t = completion_ids.shape[1]
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, t, dtype=torch.long))
    pos = torch.arange(t, device=completion_ids.device)[None, :]
    mask = (pos <= first[:, None]) & (pos < t)
    # rows that ended on a stop string: generate pads after it; keep the non-pad prefix
    if stopped_on_string is not None:
        nonpad_len = (completion_ids != pad_id).long().cumprod(dim=1).sum(dim=1)
        mask = torch.where(stopped_on_string[:, None] & ~has_eos[:, None], pos < nonpad_len[:, None], mask)
    truncated = ~has_eos
    if stopped_on_string is not None:
        truncated = truncated & ~stopped_on_string
    return mask.float(), truncated


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


class HFEngine:
    """Samples with ``model.generate`` (KV cache, left padding) on the model's own device.

    The engine shares the policy's weights, so ``sync_weights`` has nothing to copy.
    ``max_batch`` bounds how many rows one ``generate`` call decodes at once.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_batch: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_list = eos if isinstance(eos, list) else [eos]
        if tokenizer.eos_token_id is not None:
            eos_list.append(tokenizer.eos_token_id)
        self.eos_ids = sorted({e for e in eos_list if e is not None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def sync_weights(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        rows = [p for p in prompts for _ in range(n)]  # row = prompt·n + j
        outs = [
            self._generate_chunk(rows[i : i + self.max_batch], params)
            for i in range(0, len(rows), self.max_batch)
        ]
        width = max(o[2].shape[1] for o in outs)
        cids = torch.cat(
            [nn.functional.pad(o[2], (0, width - o[2].shape[1]), value=self.pad_id) for o in outs]
        )
        stops = torch.cat([o[3] for o in outs])
        mask, truncated = completion_mask_from_ids(
            cids, self.eos_ids, self.pad_id, stops if params.stop else None
        )
        cids = torch.where(mask.bool(), cids, torch.full_like(cids, self.pad_id))
        p_ids, p_mask = left_pad(rows, self.pad_id, cids.device)
        texts = self.tokenizer.batch_decode(cids, skip_special_tokens=True)
        return Generation(p_ids, p_mask, cids, mask, truncated, texts)

    def _generate_chunk(
        self, rows: list[list[int]], params: SamplingParams
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        device = next(self.model.parameters()).device
        ids, mask = left_pad(rows, self.pad_id, device)
        was_training = self.model.training
        self.model.eval()
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens or None,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            use_cache=True,
        )
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        elif params.token_temperature is not None:
            # generate() runs custom logits processors after its own (min_new_tokens, ...) and before
            # its sampling warpers (temperature → top-k → top-p). With temperature=1.0 it adds no
            # temperature warper, so TokenTemperature is the only temperature step and top-k/top-p
            # act on the per-token-tempered logits: vLLM's order, where HAPO's code sets it.
            kwargs.update(
                do_sample=True, temperature=1.0, top_p=params.top_p, top_k=params.top_k or None,
                logits_processor=LogitsProcessorList(
                    [TokenTemperature(params.token_temperature, params.temperature)]
                ),
            )  # fmt: skip
        else:
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None
            )
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        self.model.train(was_training)
        cids = out[:, ids.shape[1] :]  # [b, T]
        if params.stop:
            texts = self.tokenizer.batch_decode(cids, skip_special_tokens=True)
            stopped = torch.tensor([any(s in t for s in params.stop) for t in texts], device=cids.device)
        else:
            stopped = torch.zeros(cids.shape[0], dtype=torch.bool, device=cids.device)
        return ids, mask, cids, stopped
