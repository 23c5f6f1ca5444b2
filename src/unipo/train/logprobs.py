"""Completion log-probs and entropies from one forward pass, chunked over tokens.

The model's decoder runs once; the LM head, log-softmax and entropy are applied to chunks
of ``chunk_tokens`` hidden states at a time, so the full ``[tokens, vocab]`` logits /
log-softmax never exist at once. Under autograd each chunk is checkpointed: its logits are
recomputed in backward instead of being stored, so training memory also stays at one chunk.

The same function serves old, reference and current-policy log-probs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model (through peft / DDP wrappers)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that ignore left padding, as ``generate`` uses: cumsum(mask) − 1, ≥ 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _chunk_stats(
    hidden: Tensor, lm_head: nn.Module, targets: Tensor, temperature: float, softcap: float | None
) -> tuple[Tensor, Tensor]:
    logits = lm_head(hidden).float()  # [n, V]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)  # [n]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse  # [n]
    probs = torch.softmax(logits, dim=-1)  # [n, V]
    entropy = lse - (probs * logits).sum(-1)  # H = logZ − Σ p·z
    return logp, entropy


def token_logprobs_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """log π(target) and full-vocabulary entropy for N hidden states.

    hidden [N, H], targets [N] → (logp [N], entropy [N]), float32. Chunked over N.
    """
    logps, ents = [], []
    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if use_ckpt:
            lp, ent = checkpoint(_chunk_stats, h, lm_head, y, temperature, softcap, use_reentrant=False)
        else:
            lp, ent = _chunk_stats(h, lm_head, y, temperature, softcap)
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps), torch.cat(ents)


def completion_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies of the completion tokens of left-padded prompt+completion rows.

    input_ids, attention_mask: [B, P+T]; completion_mask: [B, T] (the last T columns are the
    completion). Returns (logprobs [B, T], entropies [B, T]) in float32, zero on padding.
    Logits are divided by ``temperature`` (the sampling temperature), as verl and TRL do.
    Entropies carry gradient only when ``entropy_grad`` (an entropy regularizer needs it).
    """
    base = _unwrap(model)
    b, t = completion_mask.shape
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = out.last_hidden_state[:, -t - 1 : -1, :]  # [B, T, H]: position p predicts token p+1
    targets = input_ids[:, -t:]  # [B, T]
    valid = completion_mask.bool()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    logp_flat, ent_flat = token_logprobs_from_hidden(
        hidden[valid],  # [N, H], padding dropped before the LM head
        base.get_output_embeddings(),
        targets[valid],
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        softcap=softcap,
    )
    logp = torch.zeros(b, t, dtype=torch.float32, device=input_ids.device)
    ent = torch.zeros(b, t, dtype=torch.float32, device=input_ids.device)
    logp = logp.masked_scatter(valid, logp_flat)
    ent = ent.masked_scatter(valid, ent_flat if entropy_grad else ent_flat.detach())
    return logp, ent


@torch.no_grad()
def batched_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    micro_batch: int,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """``completion_logprobs`` without grad over micro-batches of rows (old / ref log-probs)."""
    was_training = model.training
    model.eval()
    parts = [
        completion_logprobs(
            model,
            input_ids[i : i + micro_batch],
            attention_mask[i : i + micro_batch],
            completion_mask[i : i + micro_batch],
            **kwargs,
        )
        for i in range(0, input_ids.shape[0], micro_batch)
    ]
    model.train(was_training)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
