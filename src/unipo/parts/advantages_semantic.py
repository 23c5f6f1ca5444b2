"""Advantages that compare the *answers* of a group: SEED-GRPO, COPO, polychromic (set) advantages.

Semantic equivalence is the equality of the final answers that the task's verifier reads
(``extract_answer`` of ``batch.metadata[i]["completion"]``: the last ``<answer>`` tag or
``\\boxed{}``, else the whole text), whitespace-normalized. The papers cluster responses with a
semantic-equivalence model (bidirectional entailment); no model is downloaded here, so two
answers are equivalent only when they are written the same way (``1/2`` and ``0.5`` differ).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.advantages_norm import group_sums, rewards_of
from unipo.parts.base import Metrics, broadcast_to_tokens, group_index, scalar
from unipo.parts.registry import register
from unipo.rewards.verifiers import extract_answer


def answer_clusters(batch: RolloutBatch, part: str) -> Tensor:  # [B] long
    """One id per (group, final answer): rows of a group with the same answer share an id."""
    meta = batch.metadata
    if not meta or any("completion" not in m for m in meta):
        raise ValueError(
            f"{part} clusters completions by their final answer and needs batch.metadata[i]['completion'] "
            "(the completion text, which collect() stores) for every row"
        )
    answers = [" ".join(extract_answer(str(m["completion"])).split()) for m in meta]
    keys = list(zip(batch.group_ids.tolist(), answers))
    ids: dict[tuple[int, str], int] = {}
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)


def cluster_entropy(cluster: Tensor, idx: Tensor, n: int, mass: Tensor | None = None) -> Tensor:
    """Per group [G]: −Σ_k p_k·log p_k over its answer clusters, p_k = the cluster's share of the
    group's ``mass`` [B] (default: one per row, so p_k = n_k/G)."""
    mass = torch.ones_like(cluster, dtype=torch.float64) if mass is None else mass.double()
    cluster = cluster.to(idx.device)
    per_cluster = torch.zeros(int(cluster.max()) + 1 if cluster.numel() else 0, dtype=torch.float64)
    per_cluster = per_cluster.index_add_(0, cluster, mass.cpu())  # [C]
    owner = torch.zeros_like(per_cluster, dtype=torch.long).index_copy_(0, cluster, idx.cpu())  # [C] group
    total = group_sums(mass.cpu(), idx.cpu(), n)  # [G]
    p = per_cluster / total[owner].clamp(min=1e-300)  # [C]
    return group_sums(-torch.xlogy(p, p), owner, n)  # [G]


@register("advantage", "seed_grpo")
@dataclass(frozen=True)
class SeedGRPO:
    """SEED-GRPO: semantic-entropy-modulated GRPO advantage (Chen et al., arXiv 2505.12346).

    The group's semantic entropy over its answer clusters C_k (see the module docstring),
    SE(q) = −Σ_k p(C_k)·log p(C_k), scales every advantage of the prompt down with the model's
    uncertainty, relative to its maximum SE_max = log G (all G answers different):

        Â_i = A_i · f(α·SE(q)/SE_max),    A_i = GRPO's (r_i − mean_G r)/(std_G r + ε)
        f(x) = max(1 − x, 0)  (``modulation="linear"``)   or   1/(1 + x)  (``"reciprocal"``)

    p(C_k) = n_k/G (``weighting="count"``) or the cluster's share of the length-normalized
    likelihoods exp(mean_t log π_old(o_t)) of its responses (``"likelihood"``, Kuhn et al.'s
    probability-weighted estimate). Source: arXiv 2505.12346 abstract (uncertainty-aware scaling
    of the advantage by the semantic entropy of the group's answers); FORMULAS-rlvr §13 (f linear,
    SE_max = log G). Deviations: the form of f and α = 1 could not be checked against the paper
    (UNVERIFIED; a third-party reimplementation uses f = 1/(1+x) with α = 0.0417); clusters are
    exact answer matches, not an entailment model's.
    """

    alpha: float = 1.0
    modulation: Literal["linear", "reciprocal"] = "linear"
    weighting: Literal["count", "likelihood"] = "count"
    scale_by_std: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.modulation not in ("linear", "reciprocal"):
            raise ValueError(
                f"seed_grpo needs alpha ≥ 0 and modulation 'linear' or 'reciprocal', got alpha={self.alpha}, "
                f"modulation={self.modulation!r}"
            )
        if self.weighting not in ("count", "likelihood"):
            raise ValueError(f"seed_grpo weighting must be 'count' or 'likelihood', got {self.weighting!r}")

    @property
    def needs_old_logprobs(self) -> bool:
        return self.weighting == "likelihood"

    def semantic_entropy(self, batch: RolloutBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(SE [G], SE_max = log G [G], group index [B])."""
        idx, n = group_index(batch.group_ids.cpu())
        mass = None
        if self.weighting == "likelihood":
            if batch.old_logprobs is None:
                raise ValueError(
                    "seed_grpo weighting='likelihood' needs batch.old_logprobs before the advantage"
                )
            mask = batch.completion_mask.double().cpu()
            mean_lp = (batch.old_logprobs.double().cpu() * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B]
            mass = torch.exp(mean_lp - mean_lp.max())  # a common shift cancels within each group
        se = cluster_entropy(answer_clusters(batch, "seed_grpo"), idx, n, mass)
        count = group_sums(torch.ones(idx.numel(), dtype=torch.float64), idx, n)
        return se, count.clamp(min=1).log(), idx

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        se, se_max, idx = self.semantic_entropy(batch)
        x = self.alpha * se / se_max.clamp(min=1e-12)  # [G]; a lone row has SE = 0
        scale = (1 - x).clamp(min=0) if self.modulation == "linear" else 1 / (1 + x)  # [G]
        row_scale = scale[idx].to(adv.device, adv.dtype)  # [B]
        out = adv * row_scale[:, None]
        mask = batch.completion_mask
        metrics.update(
            {
                "advantage/semantic_entropy": scalar(se.mean().float() if se.numel() else 0.0),
                "advantage/seed_scale_mean": scalar(row_scale.mean() if row_scale.numel() else 0.0),
                "advantage/abs_mean": scalar((out.abs() * mask).sum() / mask.sum().clamp(min=1)),
            }
        )
        return out, metrics


@register("advantage", "copo")
@dataclass(frozen=True)
class COPO:
    """COPO: consistency-aware blend of local (group) and global (batch) advantages (Han et al.,
    arXiv 2508.04138).

    A group whose G answers agree has a zero GRPO advantage; COPO keeps it learning from a global,
    batch-level advantage and blends the two by the group's answer entropy H(q) over its answer
    clusters (see the module docstring), normalized by its maximum log G:

        A_loc = (r_i − mean_G r)/(std_G r + ε)         A_glob = (r_i − mean_B r)/(std_B r + ε)
        w(q) = H(q)/log G ∈ [0, 1]                     A_i = w(q)·A_loc + (1 − w(q))·A_glob

    (std unbiased; B: every completion of the batch). A consistent group (H = 0) learns from the
    global term alone, a fully diverse one from the local term. Source: arXiv 2508.04138 abstract
    (a global reward from outcome consistency so consistent groups keep a signal; an entropy-based
    soft blend of local and global optimization); FORMULAS-rlvr §13. Deviations: the paper's code
    (hijih/copo-code) and body could not be retrieved, so the global term, the blend weight and
    blending advantages instead of losses are this library's reading (UNVERIFIED); answers are
    clustered by exact match.
    """

    eps: float = 1e-6

    min_group_size = 1  # the global term carries the reward signal even with one completion a prompt

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = rewards_of(batch, "copo")  # [B]
        local, metrics = GroupNorm(scale_by_std=True, eps=self.eps)(batch)  # [B, T]
        std = r.std() if r.numel() > 1 else torch.zeros((), dtype=r.dtype, device=r.device)
        glob = (r - r.mean()) / (std + self.eps)  # [B]
        idx, n = group_index(batch.group_ids.cpu())
        h = cluster_entropy(answer_clusters(batch, "copo"), idx, n)  # [G]
        count = group_sums(torch.ones(idx.numel(), dtype=torch.float64), idx, n)  # [G]
        w = torch.where(count > 1, h / count.clamp(min=2).log(), torch.zeros_like(h))  # [G]
        w_row = w[idx].to(local.device, local.dtype)  # [B]
        mask = batch.completion_mask
        adv = w_row[:, None] * local + (1 - w_row)[:, None] * broadcast_to_tokens(glob.float(), mask)
        metrics.update(
            {
                "advantage/copo_local_weight": scalar(w_row.mean() if w_row.numel() else 0.0),
                "advantage/abs_mean": scalar((adv.abs() * mask).sum() / mask.sum().clamp(min=1)),
            }
        )
        return adv, metrics


@register("advantage", "polychromic")
@dataclass(frozen=True)
class Polychromic:
    """Polychromic (set-RL) advantage (Hamid et al., "Polychromic Objectives for Reinforcement
    Learning", arXiv 2509.25424).

    The objective scores *sets* of n responses to one prompt by reward and diversity:
    f_poly(g) = (1/n)·Σ_{i∈g} r_i · d(g), with d(g) = (number of distinct answers in g)/n. Per
    group, M sets of n rows are drawn (every n-subset when there are at most ``num_sets`` of them,
    else ``num_sets`` random ones from a generator seeded by ``seed`` and the group id), the
    baseline is their mean V(q) = mean_g f_poly(g), and a response shares the advantage of the sets
    that contain it:

        A_i = mean_{g ∋ i} f_poly(g) − V(q)         (0 for a row in no set)

    Source: arXiv 2509.25424 abstract (set reinforcement learning with a polychromic objective,
    adapted PPO); FORMULAS-rlvr and a third-party reimplementation's summary (f_poly = mean reward
    × diversity, one shared advantage per set). Deviations (the paper body was not available,
    UNVERIFIED): the averaging over overlapping sets and V(q) as the sets' mean instead of a value
    network or vine rollouts; diversity counts distinct final answers (exact match), not the
    paper's task-specific semantic classes. A group smaller than n gets A = 0.
    """

    set_size: int = 4
    num_sets: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.set_size < 1 or self.num_sets < 1:
            raise ValueError(
                f"polychromic needs set_size ≥ 1 and num_sets ≥ 1, got {self.set_size}, {self.num_sets}"
            )

    def sets(self, size: int, group_id: int) -> list[tuple[int, ...]]:
        """The n-subsets (positions 0..size−1) drawn for a group of ``size`` rows."""
        n = self.set_size
        if size < n:
            return []
        if math.comb(size, n) <= self.num_sets:
            return list(itertools.combinations(range(size), n))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(group_id))
        return [tuple(sorted(torch.randperm(size, generator=gen)[:n].tolist())) for _ in range(self.num_sets)]

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = rewards_of(batch, "polychromic").cpu()  # [B]
        cluster = answer_clusters(batch, "polychromic")  # [B]
        adv = torch.zeros_like(r)
        values, diversities = [], []
        for gid in torch.unique(batch.group_ids.cpu()).tolist():
            rows = torch.nonzero(batch.group_ids.cpu() == gid, as_tuple=True)[0]  # batch order
            chosen = self.sets(rows.numel(), gid)
            if not chosen:
                continue
            members = rows[torch.tensor(chosen)]  # [M, n] batch rows
            distinct = [len(set(cluster[m].tolist())) for m in members]
            div = torch.tensor(distinct, dtype=torch.float64) / self.set_size  # [M] d(g)
            f = r[members].mean(1) * div  # [M]
            v = f.mean()
            total = torch.zeros(r.numel(), dtype=torch.float64).index_add_(
                0, members.reshape(-1), f[:, None].expand_as(members).reshape(-1)
            )
            hits = torch.zeros(r.numel(), dtype=torch.float64).index_add_(
                0, members.reshape(-1), torch.ones(members.numel(), dtype=torch.float64)
            )
            covered = rows[hits[rows] > 0]
            adv[covered] = total[covered] / hits[covered] - v
            values.append(float(v))
            diversities.append(float(div.mean()))
        out = broadcast_to_tokens(adv.float().to(batch.completion_mask.device), batch.completion_mask)
        return out, {
            "advantage/poly_value": scalar(sum(values) / len(values) if values else 0.0),
            "advantage/poly_diversity": scalar(sum(diversities) / len(diversities) if diversities else 0.0),
            "advantage/abs_mean": scalar(adv.abs().mean() if adv.numel() else 0.0),
        }
