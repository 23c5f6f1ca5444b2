"""Typed containers of preference data: one example (a prompt and K ranked responses) and a batch.

A pair is the K = 2 case of a ranked list, so every preference loss reads the same shapes:

    N  examples (prompts) in the batch
    K  responses per example, sorted best first: index 0 is the chosen / top-ranked response;
       for pairs index 1 is the rejected one; shorter lists are padded (``valid`` False)
    P  prompt length (left-padded)
    T  response length (right-padded); responses end with EOS
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

_RESPONSE_TENSORS = ("ref_logprobs", "anchor_logprobs", "ref_weights")


@dataclass
class PreferenceExample:
    """One tokenized prompt with K ≥ 2 responses, sorted best first (scores non-increasing).

    The per-token reference tensors are filled in by the trainer (precomputed once and cached),
    one 1-D tensor per response with the response's length.
    """

    prompt_ids: list[int]
    responses: list[list[int]]  # K token-id lists (EOS included), best first
    scores: list[float]  # K, non-increasing; pairs without scores get [1.0, 0.0]
    win_prob: list[float] | None = None  # K estimated win rates P̂(y_k ≻ π) (SPPO); None = hard 1/0
    from_reference: list[bool] | None = None  # K: sampled from π_ref, not π_θ (XPO)
    metadata: dict[str, Any] = field(default_factory=dict)  # prompt text, response texts, source row
    ref_logprobs: list[Tensor] | None = None  # K × [len_k] log π_ref per token
    anchor_logprobs: list[Tensor] | None = None  # K × [len_k] log π_ref0 (INPO's fixed anchor)
    ref_weights: list[Tensor] | None = None  # K × [len_k] token masks from π_ref activations (SparsePO)
    variants: list[list[list[int]]] | None = None  # K × V: response k, v+1 key contents removed (SPO)

    def __post_init__(self) -> None:
        k = len(self.responses)
        if k < 2:
            raise ValueError(f"a preference example needs at least 2 responses, got {k}")
        if len(self.scores) != k:
            raise ValueError(f"{len(self.scores)} scores for {k} responses")
        if any(a < b for a, b in zip(self.scores, self.scores[1:])):
            raise ValueError(f"responses must be sorted best first; scores {self.scores} are not")
        for name in ("win_prob", "from_reference", "variants"):
            v = getattr(self, name)
            if v is not None and len(v) != k:
                raise ValueError(f"{name} has {len(v)} values for {k} responses")

    @property
    def size(self) -> int:
        return len(self.responses)

    def replace(self, **changes: Any) -> PreferenceExample:
        return replace(self, **changes)

    def to_state(self) -> dict[str, Any]:
        """A checkpointable form (``torch.load(weights_only=True)`` reads it back): lists, numbers
        and the metadata as JSON; the reference tensors are left out (recomputed after a resume)."""
        return {
            "prompt_ids": list(self.prompt_ids),
            "responses": [list(r) for r in self.responses],
            "scores": [float(x) for x in self.scores],
            "win_prob": None if self.win_prob is None else [float(x) for x in self.win_prob],
            "from_reference": None if self.from_reference is None else [bool(x) for x in self.from_reference],
            "metadata": json.dumps(self.metadata, default=str),
            "variants": self.variants,
        }

    @staticmethod
    def from_state(d: dict[str, Any]) -> PreferenceExample:
        """The inverse of ``to_state``."""
        return PreferenceExample(
            prompt_ids=d["prompt_ids"], responses=d["responses"], scores=d["scores"], win_prob=d["win_prob"],
            from_reference=d["from_reference"], metadata=json.loads(d["metadata"]), variants=d["variants"],
        )  # fmt: skip


@dataclass
class PreferenceBatch:
    """N collated examples. Every tensor's shape is written beside it; ``validate`` checks them."""

    prompt_ids: Tensor  # [N, P] long, left-padded with the pad id
    prompt_mask: Tensor  # [N, P] long, 1 on prompt tokens
    response_ids: Tensor  # [N, K, T] long, right-padded
    response_mask: Tensor  # [N, K, T] float, 1 on response tokens (EOS included)
    valid: Tensor  # [N, K] bool, False on list padding
    scores: Tensor  # [N, K] float, non-increasing over valid entries (0 on padding)
    win_prob: Tensor | None = None  # [N, K] float
    from_reference: Tensor | None = None  # [N, K] bool
    ref_logprobs: Tensor | None = None  # [N, K, T] float, log π_ref per token, 0 on padding
    anchor_logprobs: Tensor | None = None  # [N, K, T] float, log π_ref0 per token
    ref_weights: Tensor | None = None  # [N, K, T] float, token masks in [0, 1]
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def list_size(self) -> int:
        return int(self.response_ids.shape[1])

    def __len__(self) -> int:
        return self.size

    def validate(self) -> None:
        n, k, t = self.response_ids.shape
        p = self.prompt_ids.shape[1]
        expect = {
            "prompt_mask": (n, p),
            "response_mask": (n, k, t),
            "valid": (n, k),
            "scores": (n, k),
            "win_prob": (n, k),
            "from_reference": (n, k),
            "ref_logprobs": (n, k, t),
            "anchor_logprobs": (n, k, t),
            "ref_weights": (n, k, t),
        }
        for name, shape in expect.items():
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != shape:
                raise ValueError(
                    f"PreferenceBatch.{name} has shape {tuple(v.shape)}, expected {shape} "
                    f"(N={n} examples, K={k} responses, P={p}, T={t})"
                )
        if self.metadata and len(self.metadata) != n:
            raise ValueError(f"PreferenceBatch.metadata has {len(self.metadata)} items, expected {n}")

    # ------------------------------------------------------------ pair views (K = 2)
    def _pair(self, v: Tensor, i: int) -> Tensor:
        if self.list_size != 2:
            raise ValueError(f"chosen/rejected views need pairs (K=2); this batch has K={self.list_size}")
        return v[:, i]

    @property
    def chosen_ids(self) -> Tensor:  # [N, T]
        return self._pair(self.response_ids, 0)

    @property
    def rejected_ids(self) -> Tensor:  # [N, T]
        return self._pair(self.response_ids, 1)

    @property
    def chosen_mask(self) -> Tensor:  # [N, T]
        return self._pair(self.response_mask, 0)

    @property
    def rejected_mask(self) -> Tensor:  # [N, T]
        return self._pair(self.response_mask, 1)

    @property
    def margins(self) -> Tensor:  # [N] score of the best minus score of the worst valid response
        last = self.valid.long().sum(1) - 1  # [N]
        return self.scores[:, 0] - self.scores.gather(1, last[:, None]).squeeze(1)

    # ------------------------------------------------------------ model inputs
    def flat_rows(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The valid (prompt, response) rows for one forward pass.

        Returns (input_ids [R, P+T], attention_mask [R, P+T], response_mask [R, T], index [R]) where
        R = valid.sum() and ``index`` are the rows' positions in the flattened [N·K] grid.
        """
        n, k, t = self.response_ids.shape
        index = self.valid.reshape(-1).nonzero(as_tuple=True)[0]  # [R]
        prompt = self.prompt_ids.repeat_interleave(k, dim=0)[index]  # [R, P]
        pmask = self.prompt_mask.repeat_interleave(k, dim=0)[index]  # [R, P]
        resp = self.response_ids.reshape(n * k, t)[index]  # [R, T]
        rmask = self.response_mask.reshape(n * k, t)[index]  # [R, T]
        ids = torch.cat([prompt, resp], dim=1)
        attn = torch.cat([pmask.long(), rmask.long()], dim=1)
        return ids, attn, rmask, index

    def unflatten(self, rows: Tensor, index: Tensor) -> Tensor:
        """Scatter per-row values [R, T] back to [N, K, T] (zeros on list padding)."""
        n, k, t = self.response_ids.shape
        out = torch.zeros(n * k, t, dtype=rows.dtype, device=rows.device)
        out = out.index_copy(0, index.to(rows.device), rows)
        return out.view(n, k, t)

    def to(self, device: torch.device | str) -> PreferenceBatch:
        moved = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor) else None)
            for f in fields(self)
            if f.name != "metadata"
        }
        return PreferenceBatch(**moved, metadata=self.metadata)

    # ------------------------------------------------------------ collation
    @staticmethod
    def collate(examples: list[PreferenceExample], pad_id: int) -> PreferenceBatch:
        """Pad N examples into one batch: prompts on the left, responses on the right, lists at the end."""
        if not examples:
            raise ValueError("PreferenceBatch.collate needs at least one example")
        n = len(examples)
        k = max(e.size for e in examples)
        p = max(len(e.prompt_ids) for e in examples)
        t = max(len(r) for e in examples for r in e.responses)
        prompt_ids = torch.full((n, p), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((n, p), dtype=torch.long)
        response_ids = torch.full((n, k, t), pad_id, dtype=torch.long)
        response_mask = torch.zeros((n, k, t))
        valid = torch.zeros((n, k), dtype=torch.bool)
        scores = torch.zeros((n, k))
        for i, e in enumerate(examples):
            if e.prompt_ids:
                prompt_ids[i, p - len(e.prompt_ids) :] = torch.tensor(e.prompt_ids)
                prompt_mask[i, p - len(e.prompt_ids) :] = 1
            for j, r in enumerate(e.responses):
                response_ids[i, j, : len(r)] = torch.tensor(r, dtype=torch.long)
                response_mask[i, j, : len(r)] = 1.0
            valid[i, : e.size] = True
            scores[i, : e.size] = torch.tensor(e.scores)
        extra: dict[str, Tensor | None] = {}
        extra["win_prob"] = _stack_lists([e.win_prob for e in examples], n, k, torch.float32)
        extra["from_reference"] = _stack_lists([e.from_reference for e in examples], n, k, torch.bool)
        for name in _RESPONSE_TENSORS:
            per = [getattr(e, name) for e in examples]
            if any(v is None for v in per):
                extra[name] = None
                continue
            out = torch.zeros((n, k, t))
            for i, tensors in enumerate(per):
                for j, v in enumerate(tensors):
                    out[i, j, : v.numel()] = v.float()
            extra[name] = out
        return PreferenceBatch(
            prompt_ids, prompt_mask, response_ids, response_mask, valid, scores, **extra,
            metadata=[e.metadata for e in examples],
        )  # fmt: skip


def _stack_lists(values: list[Any], n: int, k: int, dtype: torch.dtype) -> Tensor | None:
    """[N] lists of ≤ K values → [N, K] (None when any example lacks them)."""
    if any(v is None for v in values):
        return None
    out = torch.zeros((n, k), dtype=dtype)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.tensor(v, dtype=dtype)
    return out
