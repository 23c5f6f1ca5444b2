"""A stand-in rollout engine whose "model" is a Python function of the context text: for testing
environments and rollouts without a model (``ScriptedEngine(tokenizer, policy)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from unipo.rollout.base import Generation, SamplingParams


class ScriptedEngine:
    """The continuation of a context is ``policy(decoded context)``, tokenized; it stops after EOS or the
    first stop string and at ``max_new_tokens`` (``truncated`` then), and reports sampler log-probs of
    ``logprob`` per token, as an engine that returns them (vLLM) does, and every row's weight version
    (``version``, set by ``update_weights``). ``calls`` records (prompts, n) of every ``generate``."""

    shares_weights = True
    supports_sleep = False
    supports_pause = False

    def __init__(self, tokenizer: Any, policy: Callable[[str], str], logprob: float = -0.5) -> None:
        self.tok, self.policy, self.logprob = tokenizer, policy, logprob
        self.calls: list[tuple[int, int]] = []
        self.version: int | None = 0

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        rows, cut = [], []
        for p in prompts:
            for _ in range(n):
                ids = self.tok(self.policy(self.tok.decode(p)), add_special_tokens=False)["input_ids"]
                out, open_ended = [], True
                for t in ids[: params.max_new_tokens]:
                    out.append(t)
                    if t == self.tok.eos_token_id or any(
                        self.tok.decode(out).endswith(s) for s in params.stop
                    ):
                        open_ended = False
                        break
                rows.append(out)
                cut.append(open_ended)
        self.calls.append((len(prompts), n))
        width = max([len(r) for r in rows] + [1])
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for i, r in enumerate(rows):
            if r:
                ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1.0
        p_ids = torch.zeros(len(rows), 1, dtype=torch.long)
        gen = Generation(p_ids, torch.ones_like(p_ids), ids, mask, torch.tensor(cut))
        gen.logprobs = self.logprob * mask  # [B, T]
        gen.weight_version = torch.full((len(rows),), int(self.version or 0), dtype=torch.long)  # [B]
        return gen

    def update_weights(self, weights: Any, version: int) -> None:
        self.version = version

    def close(self) -> None:
        return None
