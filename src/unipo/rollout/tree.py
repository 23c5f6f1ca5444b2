"""ETMR: ETTRL's entropy-fork tree rollout, a ``rollout`` part (how each group of G rows is sampled).

Per prompt, M = G / (1 + B·N) trees. A tree starts from one full sample (its root); the N positions
of the root's completion with the highest entropy H_t of the distribution the token was drawn from
are its fork points; from each fork point t, B branches continue the root's first t completion tokens
with fresh samples (the token at t itself is drawn again). The group is the M·(1 + B·N) leaves:

    rows of a tree = [root, (fork 1: B branches), ..., (fork N: B branches)],  forks in position order

Every branch is a real sample of the engine: ``engine.generate([prompt + root[:t]], B, params')`` with
the same sampling settings (temperature, top-p/k, stop strings, per-token temperature) and the budget
left, params' = params with max_new_tokens − t and min_new_tokens − t (≥ 0). The branch row is the root's
t tokens (with the root's sampler log-probs and entropies) followed by the continuation; its
``shared_prefix`` is t. One engine call per distinct fork depth t.

Source: Liu et al., ETTRL (arXiv 2508.11356) §ETMR as a survey note gives it (FORMULAS-preference.md
§ETTRL: M trees from a full sample each, top-N entropy fork points, B branches each, R = M(1 + B·N)
leaves, majority vote over all leaves, N = 3, B = 2); the paper body and code could not be read
(tried: the arXiv html page and chatpaper.com/paper/180862 are stored only as their opening; the file
index holds no text of the paper and no ETTRL repository). A third secondary note (a paper wiki page)
gives the paper's runs as M = 12, N = 2, B = 2 (60 leaves against TTRL's 64) and a token ratio
(1 + 0.5·B·N)/(1 + B·N) for uniformly placed forks; UNVERIFIED, like N = 3, B = 2 here.
Deviations: the entropy is that of the processed sampling distribution (after temperature / top-k /
top-p, as ``SampledLogprobs`` records it); the fork token is resampled (the branch shares t tokens,
not t + 1); a root shorter than N tokens forks at its positions again in entropy order (an empty root
at position 0, a fresh sample); ties in H_t go to the earlier position.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unipo.parts.registry import register
from unipo.rollout.base import Generation, SamplingParams
from unipo.rollout.hf import left_pad


def fork_positions(entropies: Tensor, length: int, n: int) -> list[int]:
    """The ``n`` positions of a completion of ``length`` valid tokens to fork at: highest entropy
    first (ties: the earlier position), repeated in that order when length < n; [0]·n for length 0.
    entropies [T] (only the first ``length`` are read). Returned in position order."""
    if length <= 0:
        return [0] * n
    order = torch.sort(-entropies[:length].float(), stable=True).indices.tolist()  # highest H first
    return sorted(order[i % length] for i in range(n))


@register("rollout", "etmr")
@dataclass(frozen=True)
class EntropyForkTree:
    """ETTRL's entropy-fork tree majority rollout (ETMR): M = G/(1 + B·N) trees per prompt, each a
    root sample plus B fresh continuations from each of its N highest-entropy tokens (module
    docstring: rows, sampling, source and deviations). ``forks`` = N, ``branches`` = B."""

    forks: int = 3
    branches: int = 2

    engines = ("hf",)  # rollout.engine values whose samples carry per-token entropies

    def __post_init__(self) -> None:
        if self.forks < 1 or self.branches < 1:
            raise ValueError(f"etmr needs forks ≥ 1 and branches ≥ 1, got forks={self.forks}, "
                             f"branches={self.branches}")  # fmt: skip

    @property
    def leaves_per_tree(self) -> int:
        return 1 + self.branches * self.forks

    def check_rollout(self, group_size: int, engine: str) -> str | None:
        if engine not in self.engines:
            return (
                f"rollout.engine={engine} cannot run ETMR's tree rollout: it forks at the sampled tokens' "
                f"entropies, which only rollout.engine={'/'.join(self.engines)} returns; use "
                "rollout.engine=hf"
            )
        if group_size % self.leaves_per_tree:
            return (
                f"rollout.group_size={group_size} is not a multiple of the {self.leaves_per_tree} leaves of "
                f"one tree (1 + branches·forks = 1 + {self.branches}·{self.forks}); use a multiple, or set "
                "algorithm.params.etmr.forks / branches"
            )
        return None

    def generate(self, engine: Any, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        """G = ``n`` rows per prompt (row = prompt·n + j), as ``engine.generate`` returns them."""
        per = self.leaves_per_tree
        if not prompts:
            return engine.generate(prompts, n, params)
        if n % per:
            raise ValueError(f"etmr: {self.check_rollout(n, 'hf')}")
        m = n // per
        roots = engine.generate(prompts, m, params.model_copy(update={"return_entropy": True}))
        if roots.entropies is None:
            raise ValueError(
                f"etmr: the rollout engine {type(engine).__name__} returned no per-token entropies; ETMR's "
                "tree rollout needs rollout.engine=hf"
            )
        lengths = roots.completion_mask.sum(1).long().tolist()  # [P·M]
        forks = [fork_positions(roots.entropies[r], lengths[r], self.forks) for r in range(len(lengths))]
        by_depth: dict[int, list[tuple[int, int]]] = defaultdict(list)  # t → [(root row, fork index)]
        for r, positions in enumerate(forks):
            for k, t in enumerate(positions):
                by_depth[t].append((r, k))
        cont: dict[tuple[int, int], tuple[Generation, int]] = {}  # (root, fork) → (generation, first row)
        for t, items in sorted(by_depth.items()):
            budget = params.model_copy(update={
                "max_new_tokens": params.max_new_tokens - t,
                "min_new_tokens": max(params.min_new_tokens - t, 0),
                "return_entropy": True,
            })  # fmt: skip
            branch_prompts = [prompts[r // m] + roots.completion_ids[r, :t].tolist() for r, _ in items]
            gen = engine.generate(branch_prompts, self.branches, budget)
            for i, key in enumerate(items):
                cont[key] = (gen, i * self.branches)
        return self._assemble(engine, prompts, m, roots, forks, cont)

    def _assemble(
        self, engine: Any, prompts: list[list[int]], m: int, roots: Generation, forks: list[list[int]],
        cont: dict[tuple[int, int], tuple[Generation, int]],
    ) -> Generation:  # fmt: skip
        """The group rows in tree order: root, then each fork's B branches (prefix + continuation)."""
        ids: list[Tensor] = []
        logp: list[Tensor] = []
        ent: list[Tensor] = []
        trunc: list[bool] = []
        version: list[int] = []
        shared: list[int] = []
        meta: list[dict] = []
        for r in range(len(forks)):
            tree = r % m
            n_root = int(roots.completion_mask[r].sum())
            ids.append(roots.completion_ids[r, :n_root].cpu())
            logp.append(_row(roots.logprobs, r, n_root))
            ent.append(_row(roots.entropies, r, n_root))
            trunc.append(bool(roots.truncated[r]))
            version.append(_version(roots, r))
            shared.append(0)
            meta.append({"etmr_tree": tree, "etmr_fork_at": -1, "etmr_fork_entropy": None})
            for k, t in enumerate(forks[r]):
                gen, first = cont[(r, k)]
                h_t = float(roots.entropies[r, t]) if t < n_root else None
                for j in range(first, first + self.branches):
                    c = int(gen.completion_mask[j].sum())
                    head, tail = roots.completion_ids[r, :t].cpu(), gen.completion_ids[j, :c].cpu()
                    ids.append(torch.cat([head, tail]))
                    logp.append(torch.cat([_row(roots.logprobs, r, t), _row(gen.logprobs, j, c)]))
                    ent.append(torch.cat([_row(roots.entropies, r, t), _row(gen.entropies, j, c)]))
                    trunc.append(bool(gen.truncated[j]))
                    version.append(_version(gen, j))
                    shared.append(t)
                    meta.append({"etmr_tree": tree, "etmr_fork_at": t, "etmr_fork_entropy": h_t})
        pad = _pad_id(engine)
        width = max(max((len(x) for x in ids), default=0), 1)
        cids = torch.stack([nn.functional.pad(x.long().cpu(), (0, width - len(x)), value=pad) for x in ids])
        mask = torch.stack([(torch.arange(width) < len(x)).float() for x in ids])  # [B, T]
        n = m * self.leaves_per_tree
        p_ids, p_mask = left_pad([p for p in prompts for _ in range(n)], pad, "cpu")
        texts = engine.tokenizer.batch_decode(cids, skip_special_tokens=True) if len(ids) else []
        return Generation(
            p_ids, p_mask, cids, mask, torch.tensor(trunc, dtype=torch.bool), texts,
            logprobs=torch.stack([nn.functional.pad(x.cpu(), (0, width - len(x))) for x in logp]),
            weight_version=torch.tensor(version, dtype=torch.long),
            entropies=torch.stack([nn.functional.pad(x.cpu(), (0, width - len(x))) for x in ent]),
            shared_prefix=torch.tensor(shared, dtype=torch.long), row_metadata=meta,
        )  # fmt: skip


def _row(values: Tensor | None, r: int, n: int) -> Tensor:  # [n] float on the CPU; zeros when absent
    return torch.zeros(n) if values is None else values[r, :n].float().cpu()


def _version(gen: Generation, r: int) -> int:
    return -1 if gen.weight_version is None else int(gen.weight_version[r])


def _pad_id(engine: Any) -> int:
    pad = getattr(engine, "pad_id", None)
    if pad is None:
        tok = engine.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad if pad is not None else 0)
