"""The default rollout engine: HF transformers ``generate`` on the policy itself (CPU or GPU)."""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import (
    Cache,
    CompileConfig,
    DynamicCache,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    StaticCache,
)
from transformers.cache_utils import DynamicLayer, StaticLayer

from unipo.batch import position_ids_from_mask
from unipo.rollout.base import Generation, SamplingParams, Weights
from unipo.rollout.memory import check_kv_cache, rows_per_call
from unipo.rollout.processors import SampledLogprobs, TokenTemperature, sampling_processors

__all__ = ["HFEngine", "SampledLogprobs", "TokenTemperature", "generate_groups", "sampling_processors"]

Decode = Literal["auto", "dynamic", "static", "compiled"]
DECODE_MODES: tuple[str, ...] = ("auto", "dynamic", "static", "compiled")
CACHE_BUCKET = 64  # compiled decode: static-cache lengths rounded up to a multiple of this


def resolve_decode(decode: str, device: torch.device) -> str:
    """``auto`` → ``static`` on CPU (measured faster there), ``dynamic`` elsewhere; others as given.

    ``compiled`` is opt-in: it is the GPU lever (CUDA graphs over a static cache) but has not yet
    been measured on a GPU in this project (benchmarks/README.md).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"rollout.decode={decode!r}: choose one of {', '.join(DECODE_MODES)}")
    if decode == "auto":
        return "static" if device.type == "cpu" else "dynamic"
    return decode


def decode_compile_config(device: torch.device) -> CompileConfig:
    """How ``generate`` compiles the decode step for ``decode="compiled"``.

    Static shapes (``dynamic=False``): one graph per (rows, cache length) pair, which
    ``generate_groups`` keeps few by rounding cache lengths up to ``CACHE_BUCKET``. On CUDA
    ``mode="reduce-overhead"`` replays the step as a CUDA graph (one launch per token instead of
    hundreds of kernel launches: the per-token overhead that bounds HF decoding of small models).
    Elsewhere inductor's default mode, and ``_compile_all_devices`` lets ``generate`` compile off
    CUDA at all (transformers compiles automatically only on accelerators).
    """
    cuda = device.type == "cuda"
    cfg = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead" if cuda else "default")
    if not cuda:
        cfg._compile_all_devices = True
    return cfg


def cache_length(prompt_len: int, max_new_tokens: int, decode: str) -> int:
    """Static-cache slots: prompt + completion, rounded up to ``CACHE_BUCKET`` when compiled.

    Rounding keeps the compiled graph's shapes the same across steps whose longest prompt
    differs (prompt 20 or 40, 64 new tokens → 128 slots both times); eager static decoding
    keeps the exact length (every extra slot is attended over, masked).
    """
    need = prompt_len + max_new_tokens
    return -(-need // CACHE_BUCKET) * CACHE_BUCKET if decode == "compiled" else need


def empty_static_cache(model: nn.Module, max_cache_len: int) -> StaticCache | None:
    """A ``StaticCache`` for ``generate`` to prefill itself; None when the model's layers would
    not all be plain attention layers (sliding window, linear attention) or it cannot compile."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if not getattr(base, "_can_compile_fullgraph", False):
        return None
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return None
    if getattr(getattr(base, "generation_config", None), "cache_implementation", None) is not None:
        return None  # generate builds its own cache then, and refuses one passed in
    cache = StaticCache(config=config.get_text_config(decoder=True), max_cache_len=max_cache_len)
    return cache if all(type(layer) is StaticLayer for layer in cache.layers) else None


class StaticCachePool:
    """The compiled decode's static caches, reused across ``generate`` calls of the same shape.

    CUDA graphs bake in the addresses of the cache tensors (transformers marks them static); a
    new cache at every call would make them re-record. So, as ``generate``'s own
    ``cache_implementation="static"`` does, one cache per (model, rows, length) is kept and
    zeroed (``reset``) before reuse; the ``size`` most recently used shapes are kept.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.caches: OrderedDict[tuple[int, int, int], StaticCache] = OrderedDict()

    def get(self, model: nn.Module, rows: int, max_cache_len: int) -> StaticCache | None:
        """An empty cache for ``rows`` × ``max_cache_len``: a kept one, reset, or a new one."""
        key = (id(model), rows, max_cache_len)
        cache = self.caches.pop(key, None)
        if cache is None:
            cache = empty_static_cache(model, max_cache_len)
            if cache is None:
                return None
        else:
            cache.reset()
        self.caches[key] = cache
        while len(self.caches) > self.size:
            self.caches.popitem(last=False)
        return cache


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


@torch.no_grad()  # for sampling only: a cache that required grad would also break compiled decode's guards
def prefill_prefix(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    n: int,
    static: StaticCache | None = None,
) -> Cache | None:
    """Run the model once per prompt on all but its last token; the KV cache repeated n times.

    ids, mask [U, P] left-padded → a cache of U·n rows (row = prompt·n + j) holding positions
    0..P−2: a ``DynamicCache``, or the empty ``StaticCache`` given as ``static``
    (``empty_static_cache`` / ``StaticCachePool``), filled (decoding then writes in place instead
    of re-concatenating every layer's keys and values at every token; it attends over all of
    its slots, masked).
    None when this model's cache cannot be built and repeated that way (P < 2, an empty prompt, a
    prompt-learning peft adapter, a preset ``cache_implementation``, sliding-window or
    non-attention cache layers, ...): the caller then prefills every row itself. With left
    padding column P−1 is a real token in every row, so ``generate`` still has one token per
    row to feed. Position ids follow ``generate``'s own rule (cumsum of the mask − 1, 0 on
    padding).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    peft_config = getattr(model, "active_peft_config", None)
    config = getattr(base, "config", None)
    generation_config = getattr(base, "generation_config", None)
    supports_dynamic = getattr(type(base), "_supports_default_dynamic_cache", lambda: False)
    if (
        ids.shape[1] < 2
        or not bool(mask[:, -1].all())  # an empty prompt: no last token to feed generate
        or config is None
        or getattr(config, "is_encoder_decoder", False)
        or getattr(peft_config, "is_prompt_learning", False)
        or getattr(generation_config, "cache_implementation", None) is not None
        or not supports_dynamic()
    ):
        return None
    cache = DynamicCache(config=config.get_text_config(decoder=True))
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None  # sliding-window / linear-attention layers: positions would not line up
    position_ids = position_ids_from_mask(mask)  # [U, P], as generate does
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    out = model(
        input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1],
        cache=cache, use_cache=True, **extra,
    )  # fmt: skip
    cache = out.cache
    if (
        type(cache) is not DynamicCache
        or not all(type(layer) is DynamicLayer for layer in cache.layers)
        or any(layer.get_seq_length() != ids.shape[1] - 1 for layer in cache.layers)
    ):
        return None
    if static is not None and all(type(layer) is StaticLayer for layer in static.layers):
        for dst, src in zip(static.layers, cache.layers, strict=True):
            dst.update(src.keys.repeat_interleave(n, dim=0), src.values.repeat_interleave(n, dim=0))
        return static  # [U·n, heads, max_cache_len, d] per layer, P−1 filled
    cache.batch_repeat_interleave(n)  # [U·n, heads, P−1, d] per layer
    return cache


def generate_groups(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    n: int,
    prefill_once: bool = True,
    decode: str = "dynamic",
    cache_pool: StaticCachePool | None = None,
    **generate_kwargs: Any,
) -> Any:
    """``model.generate`` on each prompt repeated n times (row = prompt·n + j), prefilling once.

    ids, mask [U, P] left-padded. With ``prefill_once`` (and n > 1, and a cache that
    ``prefill_prefix`` can build) the prompt prefix runs once per prompt instead of n times and
    ``generate`` starts from the repeated cache: it slices ``input_ids`` by the cache length, so
    each row's first forward sees only its last prompt token. Otherwise every row is prefilled.
    ``decode`` (resolved: ``resolve_decode``): ``dynamic`` grows a ``DynamicCache``;
    ``static`` decodes eagerly into a preallocated ``StaticCache`` (faster on CPU; logits agree
    to ~1e-6); ``compiled`` does so with the decode step compiled (``decode_compile_config``:
    CUDA graphs on a GPU) and cache lengths bucketed (``cache_length``). Static and compiled
    need ``max_new_tokens``; a model whose cache cannot be static decodes dynamically. A
    ``cache_pool`` supplies the compiled decode's caches (reused across calls).
    Returns whatever ``generate`` returns for the U·n rows (sequences include the prompt).
    """
    if decode not in ("dynamic", "static", "compiled"):
        raise ValueError(f"decode={decode!r}: resolve it first (dynamic, static or compiled)")
    max_new = generate_kwargs.get("max_new_tokens")
    static = decode != "dynamic" and max_new is not None
    max_cache_len = cache_length(ids.shape[1], max_new, decode) if static else None
    empty = None
    if max_cache_len is not None:
        if cache_pool is not None and decode == "compiled":
            empty = cache_pool.get(model, ids.shape[0] * n, max_cache_len)
        else:
            empty = empty_static_cache(model, max_cache_len)
    cache = prefill_prefix(model, ids, mask, n, static=empty) if prefill_once and n > 1 else None
    if cache is None:
        cache = empty  # generate prefills it (or, None, grows a dynamic cache)
    if cache is not None:
        generate_kwargs["cache"] = cache  # transformers ≥ 5.24 (``past_key_values`` is deprecated)
    if decode == "compiled":
        generate_kwargs["compile_config"] = decode_compile_config(ids.device)
    else:  # never compile behind the caller's back (generate would, for a static cache on CUDA)
        generate_kwargs["disable_compile"] = True
    rows_ids, rows_mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)  # [U·n, P]
    return model.generate(input_ids=rows_ids, attention_mask=rows_mask, **generate_kwargs)


class HFEngine:
    """Samples with ``model.generate`` (KV cache, left padding) on the model's own device.

    The engine shares the policy's weights (``shares_weights``): ``update_weights`` only records the
    version, and every row is tagged with it. ``Generation.logprobs`` are the sampler's processed
    log-probs (``SampledLogprobs``), at the cost of one log-softmax per decoded token.
    ``max_batch`` bounds how many rows one ``generate`` call decodes at once; a group of n rows
    is never split, so a call holds max(max_batch // n, 1) prompts. ``prefill_once`` runs each
    prompt's prefill once and shares its KV cache among the group's n rows (``generate_groups``).
    ``decode`` picks the KV cache and whether the decode step is compiled: ``auto`` (static on
    CPU, dynamic on GPU), ``dynamic``, ``static`` or ``compiled`` (``resolve_decode``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_batch: int = 256,
        prefill_once: bool = True,
        decode: Decode = "auto",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefill_once = prefill_once
        self.decode = resolve_decode(decode, next(model.parameters()).device)
        self.cache_pool = StaticCachePool()  # compiled decode: caches reused across calls
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_list = eos if isinstance(eos, list) else [eos]
        if tokenizer.eos_token_id is not None:
            eos_list.append(tokenizer.eos_token_id)
        self.eos_ids = sorted({e for e in eos_list if e is not None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.version: int | None = 0  # the trainer's weight version (shared weights: always current)

    shares_weights = True
    supports_sleep = False
    supports_pause = False

    def update_weights(self, weights: Weights, version: int) -> None:
        """Nothing to copy (the engine samples from the trainer's own parameters): record ``version``."""
        self.version = int(version)

    def close(self) -> None:
        self.cache_pool.caches.clear()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        if prompts:  # refuse, with the numbers, a KV cache that cannot fit (rollout/memory.py)
            longest = max(len(p) for p in prompts)
            rows = rows_per_call(self.max_batch, len(prompts), n)
            check_kv_cache(self.model, rows, longest, params.max_new_tokens)
        per_call = max(self.max_batch // n, 1)  # prompts per generate call
        outs = [
            self._generate_chunk(prompts[i : i + per_call], n, params)
            for i in range(0, len(prompts), per_call)
        ]
        width = max(o[0].shape[1] for o in outs)
        cids = torch.cat(
            [nn.functional.pad(o[0], (0, width - o[0].shape[1]), value=self.pad_id) for o in outs]
        )
        logp = torch.cat([nn.functional.pad(o[2], (0, width - o[2].shape[1])) for o in outs])  # [B, T]
        stops = torch.cat([o[1] for o in outs])
        mask, truncated = completion_mask_from_ids(
            cids, self.eos_ids, self.pad_id, stops if params.stop else None
        )
        cids = torch.where(mask.bool(), cids, torch.full_like(cids, self.pad_id))
        logp = torch.where(mask.bool(), logp, torch.zeros_like(logp))  # no −inf of a pad token past EOS
        rows = [p for p in prompts for _ in range(n)]  # row = prompt·n + j
        p_ids, p_mask = left_pad(rows, self.pad_id, cids.device)
        texts = self.tokenizer.batch_decode(cids, skip_special_tokens=True)
        version = torch.full((cids.shape[0],), -1 if self.version is None else self.version, dtype=torch.long)
        return Generation(p_ids, p_mask, cids, mask, truncated, texts, logprobs=logp, weight_version=version)

    def _generate_chunk(
        self, prompts: list[list[int]], n: int, params: SamplingParams
    ) -> tuple[Tensor, Tensor, Tensor]:
        """→ (completion ids [len(prompts)·n, T], stopped on a stop string [len(prompts)·n] bool,
        sampled log-probs [len(prompts)·n, T])."""
        device = next(self.model.parameters()).device
        ids, mask = left_pad(prompts, self.pad_id, device)  # [U, P]
        was_training = self.model.training
        self.model.eval()
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens or None,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            use_cache=True,
        )
        recorder = SampledLogprobs()
        if params.greedy:
            kwargs.update(
                do_sample=False, temperature=None, top_p=None, top_k=None,
                logits_processor=LogitsProcessorList([recorder]),
            )  # fmt: skip
        else:
            # generate() runs custom logits processors after its own (min_new_tokens, ...); with
            # temperature=1, top_k=0, top_p=1 it adds no sampling warper, so the transforms are
            # exactly sampling_processors' (temperature or HAPO's TokenTemperature → top-k → top-p,
            # vLLM's order) and the recorder after them sees the distribution that is sampled
            kwargs.update(
                do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                logits_processor=LogitsProcessorList([*sampling_processors(params), recorder]),
            )  # fmt: skip
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        try:
            out = generate_groups(
                self.model, ids, mask, n, self.prefill_once, self.decode, self.cache_pool, **kwargs
            )
        finally:
            self.model.train(was_training)
        cids = out[:, ids.shape[1] :]  # [U·n, T]
        logp = recorder.finish(out)  # [U·n, T]
        if params.stop:
            texts = self.tokenizer.batch_decode(cids, skip_special_tokens=True)
            stopped = torch.tensor([any(s in t for s in params.stop) for t in texts], device=cids.device)
        else:
            stopped = torch.zeros(cids.shape[0], dtype=torch.bool, device=cids.device)
        return cids, stopped, logp
