"""Completion log-probs and entropies from one forward pass, chunked over tokens.

The model's decoder runs once; the LM head, log-softmax and entropy are applied to chunks
of ``chunk_tokens`` hidden states at a time, so the full ``[tokens, vocab]`` logits /
log-softmax never exist at once. Under autograd a plain ``nn.Linear`` head without softcap or
extra statistics takes a fused autograd function (``fused_head.py``) whose backward recomputes
each chunk's logits and accumulates the head's weight gradient in place in one buffer; every
other case checkpoints each chunk (its logits are recomputed in backward instead of being
stored), so training memory also stays at one chunk.

The same function serves old, reference and current-policy log-probs.

Per-token statistics of the full next-token distribution (beyond the entropy) come from a
small registry, ``TOKEN_STATS`` (``token_stats.py``): a name ``kind`` or ``kind:arg`` (``minp_logprob:0.02``,
``topp_entropy:0.8``) maps to a function of the chunk's logits. Parts declare the names they
read (``token_stats`` for π_θ, ``old_token_stats`` for π_old); ``completion_logprobs_with_stats``
returns them as ``{name: [B, T]}`` next to the log-probs, computed in the same checkpointed
chunk pass (so a statistic of π_θ carries gradient).

Shared prompts (``shared_prompt=True``): in GRPO each prompt is sampled G times, so a batch
holds every prompt G times. The decoder then runs once on the U unique prompts of the rows
(``use_cache=True``), the KV cache is gathered to the B rows (a differentiable index, so
gradients of all G rows flow back into the one prompt computation), and the completions
[B, T] run on top of it with the full [prompt ‖ completion] mask and the positions of the
plain pass. The first completion token is predicted from the prompt pass's last hidden state.
Outputs equal the plain pass up to float rounding; unsupported models fall back to it
(``shared_prompt_fallback`` says why).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unipo.batch import position_ids_from_mask
from unipo.train import fused_head
from unipo.train.sequence_stats import sequence_stats_from_hidden
from unipo.train.token_stats import (  # noqa: F401  (TOKEN_STATS and parse_token_stat re-exported)
    TOKEN_STATS,
    parse_token_stat,
)

log = logging.getLogger("unipo")


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model (through peft / DDP wrappers)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


CHUNK_ELEMENTS = 2**25  # logits per chunk: 128 MiB in float32, whatever the vocabulary


def default_chunk_tokens(lm_head: nn.Module) -> int:
    """Tokens per LM-head chunk: ``CHUNK_ELEMENTS // vocab`` (220 at Qwen2's 151,936), so a chunk's
    [n, V] buffers stay ~128 MiB each. benchmarks/logprob_memory.py: at 4,096 tokens and
    V = 151,936, chunks of 256 keep the forward's peak extra memory at 4.7% of the naive
    full log-softmax, 2,048 at 37.5%."""
    weight = getattr(lm_head, "weight", None)
    vocab = getattr(lm_head, "out_features", None) or (weight.shape[0] if weight is not None else None)
    return max(16, CHUNK_ELEMENTS // int(vocab)) if vocab else 2048  # 2048: a head of unknown width


def _chunk_stats(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    temperature: float,
    softcap: float | None,
    stats: tuple[str, ...] = (),
) -> tuple[Tensor, ...]:
    raw = lm_head(hidden).float()  # [n, V]
    if softcap:
        raw = torch.tanh(raw / softcap) * softcap
    logits = raw / temperature if temperature != 1.0 else raw
    # log-softmax once, then p = exp(log p) and H = −Σ p·log p from it: more accurate than a
    # separate torch.softmax at large vocabularies (benchmarks/logprob_memory.py measures both
    # against float64: entropy error 8e-6 this way, ~2e-4 with softmax at V = 151,936)
    logz = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # [n, V]
    logp = logz.gather(-1, targets[:, None]).squeeze(-1)  # [n]
    entropy = -(logz.exp() * logz).sum(-1)  # [n]
    extra = []
    for name in stats:
        fn, arg = parse_token_stat(name)
        extra.append(fn(raw, targets, temperature, arg))  # [n]
    return (logp, entropy, *extra)


def _fused_wanted(hidden: Tensor, lm_head: nn.Module, softcap: float | None, stats: tuple[str, ...]) -> bool:
    """The fused LM-head path (``fused_head.py``): under autograd, for a plain ``nn.Linear`` head
    with no softcap and no extra statistics. Without grad the plain chunk loop is as lean."""
    if not torch.is_grad_enabled() or not fused_head.fused_head_applies(lm_head, hidden, softcap, stats):
        return False
    params = (lm_head.weight, lm_head.bias)
    return hidden.requires_grad or any(p is not None and p.requires_grad for p in params)


def token_logprobs_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """log π(target) and full-vocabulary entropy for N hidden states.

    hidden [N, H], targets [N] → (logp [N], entropy [N]), float32. Chunked over N.
    """
    logp, ent, _ = token_stats_from_hidden(
        hidden, lm_head, targets, temperature=temperature, chunk_tokens=chunk_tokens, softcap=softcap
    )
    return logp, ent


def token_stats_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    softcap: float | None = None,
    stats: tuple[str, ...] = (),
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``token_logprobs_from_hidden`` plus the named per-token statistics: ({name: [N]})."""
    stats = tuple(stats)
    for name in stats:
        parse_token_stat(name)  # fail before the forward pass on an unknown name
    chunk_tokens = chunk_tokens or default_chunk_tokens(lm_head)
    if hidden.shape[0] == 0:  # no completion token at all (every row empty): [0]-sized, still on the graph
        empty = hidden[:, 0].float() * 0  # [0]
        return empty, empty, {name: empty for name in stats}
    if _fused_wanted(hidden, lm_head, softcap, stats):
        # one autograd node for all chunks: saves the inputs and lse, H [N]; its backward
        # accumulates the [V, H] weight gradient in place in one buffer (fused_head.py)
        logp, ent = fused_head.fused_linear_logprob_entropy(
            hidden, lm_head, targets, temperature=temperature, chunk_tokens=chunk_tokens
        )  # [N], [N]
        return logp, ent, {}
    cols: list[list[Tensor]] = [[] for _ in range(2 + len(stats))]
    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if use_ckpt:
            out = checkpoint(_chunk_stats, h, lm_head, y, temperature, softcap, stats, use_reentrant=False)
        else:
            out = _chunk_stats(h, lm_head, y, temperature, softcap, stats)
        for col, value in zip(cols, out):
            col.append(value)
    merged = [torch.cat(col) for col in cols]
    return merged[0], merged[1], dict(zip(stats, merged[2:]))


# ------------------------------------------------------------------ shared prompts
# Decoder-only architectures whose cache/mask/position handling the shared-prompt pass is
# tested against (tests/test_shared_prompt.py); anything else takes the plain pass.
SHARED_PROMPT_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
SHARED_PROMPT_ATTENTION = frozenset({"sdpa", "eager"})
_fallbacks_logged: set[str] = set()


def shared_prompt_fallback(model: nn.Module) -> str | None:
    """Why the shared-prompt pass cannot run on ``model`` in its current mode (None: it can)."""
    base = _unwrap(model)
    cfg = getattr(base, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SHARED_PROMPT_MODEL_TYPES:
        return f"model type {model_type!r} is not one the shared-prompt pass is tested on"
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in SHARED_PROMPT_ATTENTION:
        return f"attention implementation {impl!r} (supported: {', '.join(sorted(SHARED_PROMPT_ATTENTION))})"
    if getattr(cfg, "sliding_window", None) is not None or any(
        kind != "full_attention" for kind in (getattr(cfg, "layer_types", None) or ())
    ):
        return "sliding-window attention (its cache layers drop old keys)"
    # transformers' GradientCheckpointingLayer replaces the KV cache (``cache``) with None in train mode
    # (a recomputed layer would append to the cache twice), so the prompt's KV never arrives.
    if base.training and any(getattr(m, "gradient_checkpointing", False) is True for m in base.modules()):
        return "gradient checkpointing drops the KV cache in train mode"
    return None


def prompt_index(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows that share a prompt: (first row of each unique prompt [U], row → unique index [B]).

    prompt_ids, prompt_mask: [B, P], left-padded; the ids under padding are ignored.
    """
    b = prompt_ids.shape[0]
    key = torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1)  # [B, 2P]: pad ids ignored
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # [B] in 0..U-1
    u = int(inverse.max()) + 1 if b else 0
    rows = torch.arange(b, device=inverse.device)
    first = torch.full((u,), b, dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")  # [U]
    return first, inverse


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """``prompt_index``, or None when sharing would not pay: fewer than two rows per prompt on
    average (two decoder calls then cost more than they save)."""
    first, inverse = prompt_index(prompt_ids, prompt_mask)
    return None if 2 * first.numel() > prompt_ids.shape[0] else (first, inverse)


def _shared_prompt_hidden(
    base: nn.Module, decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor, t: int,
    first: Tensor, inverse: Tensor,
) -> Tensor | None:  # fmt: skip
    """Hidden states predicting the T completion tokens, [B, T, H], with each prompt run once.

    None if the model did not return a plain ``DynamicCache`` (the caller runs the plain pass).
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    positions = position_ids_from_mask(attention_mask)  # [B, P+T], as the plain pass
    cache = DynamicCache(config=base.config)  # filled by the U unique prompts [U, P]
    prompt = decoder(input_ids=input_ids[first, :-t], attention_mask=attention_mask[first, :-t],
                     position_ids=positions[first, :-t], cache=cache, use_cache=True)  # fmt: skip
    cache = prompt.cache
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(type(la) is not DynamicLayer for la in layers):
        return None
    cache.batch_select_indices(inverse)  # every layer's K, V: [U, h, P, d] → [B, h, P, d]
    # completions [B, T] on the gathered cache; the [B, P+T] mask's prompt part has the left padding
    out = decoder(input_ids=input_ids[:, -t:], attention_mask=attention_mask, position_ids=positions[:, -t:],
                  cache=cache, use_cache=True)  # fmt: skip
    h_first = prompt.last_hidden_state[:, -1][inverse]  # [B, H]: the last prompt token predicts o_1
    return torch.cat([h_first[:, None], out.last_hidden_state[:, :-1]], dim=1)  # [B, T, H]


def completion_hidden(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, t: int, *, shared_prompt: bool = False
) -> Tensor:
    """Final hidden states at the positions that predict the last ``t`` tokens: [B, t, H].

    input_ids, attention_mask: [B, P+t], prompts left-padded. With ``shared_prompt`` rows with
    the same prompt share one prompt computation when the model supports it (see module doc).
    """
    base = _unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    if shared_prompt and 0 < t < input_ids.shape[1]:
        groups = prompt_groups(input_ids[:, :-t], attention_mask[:, :-t])
        reason = shared_prompt_fallback(base) if groups is not None else None
        if groups is not None and reason is None:
            hidden = _shared_prompt_hidden(base, decoder, input_ids, attention_mask, t, *groups)
            if hidden is not None:
                return hidden
            reason = "the model did not return a plain DynamicCache"
        if reason is not None and reason not in _fallbacks_logged:
            _fallbacks_logged.add(reason)
            log.info("shared-prompt pass off (%s): running the plain pass", reason)
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state[:, -t - 1 : -1, :]  # [B, t, H]: position p predicts token p+1


def completion_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    entropy_grad: bool = False,
    shared_prompt: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies of the completion tokens of left-padded prompt+completion rows.

    input_ids, attention_mask: [B, P+T]; completion_mask: [B, T] (the last T columns are the
    completion). Returns (logprobs [B, T], entropies [B, T]) in float32, zero on padding.
    Logits are divided by ``temperature`` (the sampling temperature), as verl and TRL do.
    Entropies carry gradient only when ``entropy_grad`` (an entropy regularizer needs it).
    ``shared_prompt``: compute each distinct prompt once (see the module docstring).
    """
    logp, ent, _ = completion_logprobs_with_stats(
        model,
        input_ids,
        attention_mask,
        completion_mask,
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        entropy_grad=entropy_grad,
        shared_prompt=shared_prompt,
    )
    return logp, ent


def completion_logprobs_with_stats(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    entropy_grad: bool = False,
    stats: tuple[str, ...] = (),
    shared_prompt: bool = False,
    sequence_stats: tuple[str, ...] = (),
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``completion_logprobs`` plus the named per-token statistics ``{name: [B, T]}`` (0 on padding).

    The statistics are computed from the same chunked logits; under autograd they carry
    gradient (a part detaches what it does not differentiate). ``model`` may be an FSDP2
    ``ShardedPolicy`` root: the pass then runs as its ``forward`` (``train/sharding.py``).
    ``sequence_stats`` (names of ``unipo.train.sequence_stats.SEQUENCE_STATS``) add ``{name: [B, K]}``
    entries to the same dict: per-token vectors of the same hidden states summed over each row
    (G2RL's final-layer sensitivity), without gradient.
    """
    from unipo.train.sharding import ShardedPolicy

    if isinstance(model, ShardedPolicy):
        return model(
            input_ids, attention_mask, completion_mask, temperature=temperature, chunk_tokens=chunk_tokens,
            entropy_grad=entropy_grad, stats=stats, shared_prompt=shared_prompt,
            sequence_stats=sequence_stats,
        )  # fmt: skip
    base = _unwrap(model)
    b, t = completion_mask.shape
    hidden = completion_hidden(model, input_ids, attention_mask, t, shared_prompt=shared_prompt)  # [B, T, H]
    targets = input_ids[:, -t:]  # [B, T]
    valid = completion_mask.bool()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    logp_flat, ent_flat, stat_flat = token_stats_from_hidden(
        hidden[valid],  # [N, H], padding dropped before the LM head
        base.get_output_embeddings(),
        targets[valid],
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        softcap=softcap,
        stats=stats,
    )

    def scatter(flat: Tensor) -> Tensor:  # [N] → [B, T], 0 on padding
        full = torch.zeros(b, t, dtype=torch.float32, device=input_ids.device)
        return full.masked_scatter(valid, flat.float())

    logp = scatter(logp_flat)
    ent = scatter(ent_flat if entropy_grad else ent_flat.detach())
    out = {name: scatter(v) for name, v in stat_flat.items()}
    if sequence_stats:  # {name: [B, K]}: vectors of the same hidden states, summed per row
        rows = torch.arange(b, device=input_ids.device)[:, None].expand(b, t)[valid]  # [N]
        head = base.get_output_embeddings()
        per_row = sequence_stats_from_hidden(
            hidden[valid], head, targets[valid], rows, b, tuple(sequence_stats), temperature=temperature,
            softcap=softcap, chunk_tokens=chunk_tokens or default_chunk_tokens(head),
        )  # fmt: skip
        out.update(per_row)
    return logp, ent, out
