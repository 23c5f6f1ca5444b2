"""The prompts of a step: the resumable walk over the training examples (``PromptSampler``, which the
default prompt scheduler and the preference trainer use) and one round's prompts (``Prompts``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PromptSampler:
    """Deterministic, resumable walk over the training examples: a fresh permutation per epoch."""

    n: int
    seed: int
    position: int = 0  # examples drawn so far (the resume point)
    _perm: list[int] = field(default_factory=list, repr=False)
    _epoch: int = -1

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._epoch = epoch
        return self._perm

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.n)
            out.append(self._order(epoch)[i])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for n={state['n']}, seed={state['seed']}; run has {self.n}, {self.seed}"
            )
        self.position = state["position"]


@dataclass
class Prompts:
    """One round's prompts: task examples, their token ids and texts, and, from a prompt scheduler, the
    samples each gets and their indices into the training examples (``metadata["example_id"]``)."""

    examples: list[dict[str, Any]]
    ids: list[list[int]]
    texts: list[str]
    group_sizes: list[int] | None = None  # samples per prompt; None: the run's group size each
    example_ids: list[int] | None = None  # indices into the training examples; None: not recorded

    def __len__(self) -> int:
        return len(self.examples)

    def take(self, pick: slice | list[int]) -> Prompts:
        """The prompts at ``pick`` (a slice or positions), every field alike."""

        def sub(xs: list[Any] | None) -> list[Any] | None:
            if xs is None:
                return None
            return xs[pick] if isinstance(pick, slice) else [xs[i] for i in pick]

        return Prompts(sub(self.examples), sub(self.ids), sub(self.texts), sub(self.group_sizes),
                       sub(self.example_ids))  # fmt: skip

    def sizes(self, group_size: int) -> list[int]:
        return list(self.group_sizes) if self.group_sizes is not None else [group_size] * len(self)
