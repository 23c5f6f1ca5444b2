"""Log-probs of preference responses: the policy's (with grad) and the reference's (precomputed, cached).

Both go through ``unipo.train.logprobs`` (one decoder pass, LM head chunked over tokens). Reference
values are per token, computed once per example and kept on the example (in memory); the trainer
can also write them to ``ref_logprobs.safetensors`` in the run directory, keyed by a fingerprint
of the token ids and the reference's identity, and reuse them on resume.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from unipo.preference.batch import PreferenceBatch, PreferenceExample
from unipo.train.logprobs import _unwrap, completion_logprobs, position_ids_from_mask
from unipo.train.nograd import batched_logprobs

REFERENCE_FIELDS = ("ref_logprobs", "anchor_logprobs", "ref_weights")


def policy_logprobs(model: nn.Module, batch: PreferenceBatch, chunk_tokens: int | None = None) -> Tensor:
    """log π_θ of every response token, with grad: [N, K, T] (0 on padding and list padding)."""
    ids, attn, rmask, index = batch.flat_rows()  # [R, P+T], [R, P+T], [R, T], [R]
    lp, _ = completion_logprobs(model, ids, attn, rmask, chunk_tokens=chunk_tokens)  # [R, T]
    return batch.unflatten(lp, index)


@torch.no_grad()
def activation_masks(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> Tensor:
    """SparsePO's activation-based token masks m [R, T] in [0, 1] from ``model``'s residual stream.

    For each hidden-state layer (embeddings and every block output): the mean over the hidden
    dimension at the position that predicts each response token, min–max rescaled over the
    response's tokens; then the mean over layers. A response of one token (no spread) gets 1.
    """
    base = _unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    was_training = model.training
    model.eval()
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        output_hidden_states=True,
    )
    model.train(was_training)
    t = response_mask.shape[1]
    acts = torch.stack([h[:, -t - 1 : -1].float().mean(-1) for h in out.hidden_states])  # [L+1, R, T]
    on = response_mask.bool()[None]  # [1, R, T]
    lo = acts.masked_fill(~on, float("inf")).amin(-1, keepdim=True)  # [L+1, R, 1]
    hi = acts.masked_fill(~on, float("-inf")).amax(-1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > 0, (acts - lo) / span.clamp(min=1e-12), torch.ones_like(acts))
    return scaled.mean(0) * response_mask  # [R, T]


@torch.no_grad()
def batch_reference(
    model: nn.Module, batch: PreferenceBatch, activations: bool = False
) -> tuple[Tensor, Tensor | None]:
    """log π of every response token under ``model`` (no grad) [N, K, T], and SparsePO's activation
    masks [N, K, T] when ``activations``."""
    ids, attn, rmask, index = batch.flat_rows()  # [R, P+T], [R, P+T], [R, T], [R]
    lp, _ = batched_logprobs(model, ids, attn, rmask, micro_batch=max(1, ids.shape[0]))
    w = batch.unflatten(activation_masks(model, ids, attn, rmask), index) if activations else None
    return batch.unflatten(lp, index), w


def reference_values(
    model: nn.Module,
    examples: list[PreferenceExample],
    *,
    pad_id: int,
    device: torch.device,
    micro_batch: int,
    activations: bool = False,
) -> list[tuple[list[Tensor], list[Tensor] | None]]:
    """Per example: (K per-token log-prob tensors, K activation-mask tensors or None), on the CPU."""
    out: list[tuple[list[Tensor], list[Tensor] | None]] = []
    for start in range(0, len(examples), micro_batch):
        chunk = examples[start : start + micro_batch]
        lp, w = batch_reference(model, PreferenceBatch.collate(chunk, pad_id).to(device), activations)
        lp, w = lp.cpu(), (w.cpu() if w is not None else None)  # [n, K, T]
        for i, ex in enumerate(chunk):
            lens = [len(r) for r in ex.responses]
            per_lp = [lp[i, j, :n].clone() for j, n in enumerate(lens)]
            per_w = [w[i, j, :n].clone() for j, n in enumerate(lens)] if w is not None else None
            out.append((per_lp, per_w))
    return out


def fingerprint(examples: list[PreferenceExample], identity: str) -> str:
    """sha256 of every example's token ids plus ``identity`` (which model / round made the values)."""
    h = hashlib.sha256(identity.encode())
    for ex in examples:
        h.update(json.dumps([ex.prompt_ids, ex.responses]).encode())
    return h.hexdigest()


def save_reference_cache(path: Path, examples: list[PreferenceExample], key: str) -> None:
    """Write the examples' reference tensors (flattened per field) and ``key`` to ``path``."""
    tensors: dict[str, Tensor] = {}
    for name in REFERENCE_FIELDS:
        vals = [getattr(ex, name) for ex in examples]
        if all(v is not None for v in vals):
            tensors[name] = torch.cat([t.float() for v in vals for t in v]).contiguous()
    if tensors:
        save_file(tensors, str(path), metadata={"fingerprint": key})


def load_reference_cache(path: Path, examples: list[PreferenceExample], key: str) -> bool:
    """Fill the examples' reference tensors from ``path`` if its fingerprint is ``key``; True if used."""
    if not path.exists():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("fingerprint") != key:
            return False
    tensors = load_file(str(path))
    for name, flat in tensors.items():
        pos = 0
        for ex in examples:
            parts = []
            for r in ex.responses:
                parts.append(flat[pos : pos + len(r)].clone())
                pos += len(r)
            setattr(ex, name, parts)
        if pos != flat.numel():
            raise ValueError(f"reference cache {path} does not match the data ({flat.numel()} != {pos})")
    return True


def attach_reference(
    examples: list[PreferenceExample],
    model: nn.Module,
    *,
    anchor: nn.Module | None,
    pad_id: int,
    device: torch.device,
    micro_batch: int,
    activations: bool,
    refresh: bool,
    cache: Path | None,
    identity: str,
    context: AbstractContextManager[Any],
) -> None:
    """Fill ``ref_logprobs`` (+ ``ref_weights``, + ``anchor_logprobs`` from ``anchor``) on the examples.

    Values already present are kept unless ``refresh`` (the reference changed). With ``cache`` the
    values are read from / written to that safetensors file, keyed by ``fingerprint(examples, identity)``.
    """
    have = all(ex.ref_logprobs is not None for ex in examples)
    have = have and (anchor is None or all(ex.anchor_logprobs is not None for ex in examples))
    if have and not refresh:
        return
    key = fingerprint(examples, f"{identity}|activations={activations}|anchor={anchor is not None}")
    if cache is not None and load_reference_cache(cache, examples, key):
        return
    with context:
        vals = reference_values(model, examples, pad_id=pad_id, device=device, micro_batch=micro_batch,
                                activations=activations)  # fmt: skip
    for ex, (lp, w) in zip(examples, vals):
        ex.ref_logprobs, ex.ref_weights = lp, w
    if anchor is not None:
        vals = reference_values(anchor, examples, pad_id=pad_id, device=device, micro_batch=micro_batch)
        for ex, (lp, _) in zip(examples, vals):
            ex.anchor_logprobs = lp
    if cache is not None:
        save_reference_cache(cache, examples, key)
