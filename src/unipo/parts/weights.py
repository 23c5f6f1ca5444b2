"""Token weights: ``w(x: LossInputs) -> (weights [B, T] >= 0, metrics)``.

``policy_loss`` multiplies the surrogate by the product of every token weight (detached);
regularizers are not weighted. Selections here are made *within the micro-batch* that the
loss is computed on, as the official codes do (verl computes the policy loss per micro-batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, scalar
from unipo.parts.registry import part_name, register

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm


def token_covariance(x: LossInputs) -> Tensor:  # [B, T], no grad, 0 on padding
    """Cov_i = (log π_θ(y_i) − mean_j log π_θ(y_j))·(A_i − mean_j A_j), means over valid tokens.

    The per-token term of Cov(log π, A) that drives the entropy change (Cui et al., arXiv
    2505.22617); shared by Clip-Cov and KL-Cov.
    """
    m = x.mask
    n = m.sum().clamp(min=1)
    logp = x.logprobs.detach()
    adv = x.advantages.detach()
    logp_c = logp - (logp * m).sum() / n
    adv_c = adv - (adv * m).sum() / n
    return logp_c * adv_c * m


@register("token_weight", "forking_tokens")
@dataclass(frozen=True)
class ForkingTokens:
    """High-entropy minority ("forking") tokens only: the 80/20 rule (Wang et al., arXiv 2506.01939).

    Which of the N valid tokens of the micro-batch are kept (weight 0 elsewhere), by ``rule``:
      "count" (official code, default): exactly k = ⌈ρ·N⌉ tokens, the highest entropies
          (Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR@6f5dda6 verl/trainer/ppo/core_algos.py
          ``get_global_entropy_top_mask``: ``max(1, int(N·ρ + 0.9999))`` via ``torch.topk``).
          Ties at the k-th entropy are cut to keep exactly k: here the earlier tokens (row-major
          order) win, a deterministic choice where ``torch.topk`` leaves the order unspecified.
      "quantile" (TRL): every token with H ≥ τ, τ = torch.quantile(H, 1 − ρ) (linear
          interpolation), so all tokens tied at τ are kept and the count may exceed ⌈ρN⌉
          (huggingface/trl@f2cd577 trl/trainer/grpo_trainer.py ``get_high_entropy_mask`` with
          threshold 1 − ``top_entropy_quantile``; TRL gathers the entropies across processes).

    ``denominator`` (FORMULAS §7, mask vs. denominator), with k the kept count:
      "selected" (official code, default): w = 1[kept]·N/k, so with token_mean over one
          micro-batch the loss is the mean over the *kept* tokens, as the official
          ``agg_loss(mask=response_mask·top_mask)``.
      "all" (paper formula, TRL): w = 1[kept], full-token denominator. TRL's rule is
          ``rule="quantile", denominator="all"``.

    Entropy source: ``x.entropies`` (current policy, detached), else ``x.old_entropies``.
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    rho: float = 0.2
    denominator: Literal["all", "selected"] = "selected"
    rule: Literal["count", "quantile"] = "count"

    def __post_init__(self) -> None:
        if not 0 < self.rho <= 1:
            raise ValueError(f"forking_tokens rho must be in (0, 1], got {self.rho}")
        if self.denominator not in ("all", "selected"):
            raise ValueError(
                f"forking_tokens denominator must be 'all' or 'selected', got {self.denominator!r}"
            )
        if self.rule not in ("count", "quantile"):
            raise ValueError(f"forking_tokens rule must be 'count' or 'quantile', got {self.rule!r}")

    def keep(self, ent: Tensor) -> Tensor:
        """[N] bool: the kept tokens among the N valid entropies ``ent`` (N ≥ 1)."""
        n = ent.numel()
        if self.rule == "quantile":
            return ent >= torch.quantile(ent, 1 - self.rho)
        k = max(1, math.ceil(n * self.rho - 1e-9))  # ⌈ρN⌉, robust to float error in ρN
        order = torch.sort(ent, descending=True, stable=True).indices  # ties: earlier tokens first
        kept = torch.zeros(n, dtype=torch.bool, device=ent.device)
        kept[order[:k]] = True
        return kept

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ent = x.entropies if x.entropies is not None else x.old_entropies
        if ent is None:
            raise ValueError("forking_tokens needs token entropies (LossInputs.entropies or old_entropies)")
        valid = x.mask.bool()
        flat_ent = ent.detach().float()[valid]  # [N]
        n = flat_ent.numel()
        weights = torch.zeros_like(x.mask)
        if n == 0:
            return weights, {"token_weight/forking_frac": scalar(0.0)}
        kept = self.keep(flat_ent)  # [N] bool
        k = int(kept.sum())
        scale = n / k if self.denominator == "selected" else 1.0
        weights[valid] = kept.to(weights.dtype) * scale
        return weights, {
            "token_weight/forking_frac": scalar(k / n),
            "token_weight/forking_threshold": scalar(flat_ent[kept].min()),
        }


@register("token_weight", "clip_cov")
@dataclass(frozen=True)
class ClipCov:
    """Clip-Cov (Cui et al., "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

    Over the N valid tokens of the micro-batch, Cov_i = (log π_i − mean log π)(A_i − mean A).
    Candidates: ω_low < Cov_i < ω_high, and not already clipped by the PPO surrogate with
    bounds [1−ε_low, 1+ε_high]. n = max(⌊r·N⌋, 1) candidates (or all, if fewer) are picked
    uniformly at random and get weight 0 (their gradient is detached); all others weight 1.

    Source: PRIME-RL/Entropy-Mechanism-of-RL@8850579 verl/trainer/ppo/core_algos.py
    ``compute_policy_loss_clip_cov`` (= verl's). Defaults r = 2e-4, ω = (1, 5). ε_low/ε_high must
    equal the ``ppo_clip`` surrogate's (checked); the official scripts use ε = 1 on both sides
    (ρ ∈ [0, 2]). They also set ``clip_ratio_c=10.0``, which this loss never reads: there is no
    dual clip. Randomness: a CPU ``torch.Generator`` seeded with ``seed·1_000_003 + x.step``, so a
    step picks the same tokens on every rerun (the code draws ``torch.randperm`` from the global RNG).
    """

    micro_batch_statistics = True  # a statistic over the rows of its micro-batch: keep their order

    ratio: float = 2e-4
    cov_low: float = 1.0
    cov_high: float = 5.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"clip_cov ratio is a fraction in (0, 1], got {self.ratio}")
        if self.cov_low >= self.cov_high:
            raise ValueError(f"clip_cov needs cov_low < cov_high, got {self.cov_low}, {self.cov_high}")

    def check(self, algorithm: Algorithm) -> str | None:
        s = algorithm.surrogate
        if part_name(s) != "ppo_clip":
            return (
                f"clip_cov only detaches tokens the PPO clip did not already clip, so it needs "
                f"surrogate=ppo_clip, not {part_name(s)}"
            )
        if (s.eps_low, s.eps_high) != (self.eps_low, self.eps_high):
            return (
                f"clip_cov eps_low/eps_high ({self.eps_low}, {self.eps_high}) must equal the ppo_clip "
                f"surrogate's ({s.eps_low}, {s.eps_high}) to know which tokens are already clipped"
            )
        return None

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        valid = x.mask.bool()
        ratio = x.ratio.detach()
        adv = x.advantages
        already = (-adv * ratio.clamp(1 - self.eps_low, 1 + self.eps_high)) > (-adv * ratio)
        cov = token_covariance(x)
        cand = valid & ~already & (cov > self.cov_low) & (cov < self.cov_high)
        idx = cand.nonzero()  # [C, 2]
        n_valid = int(valid.sum())
        n_pick = min(max(int(self.ratio * n_valid), 1), idx.shape[0])
        weights = torch.ones_like(x.mask)
        if n_pick > 0:
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + x.step)
            perm = torch.randperm(idx.shape[0], generator=gen)[:n_pick].to(idx.device)
            chosen = idx[perm]
            weights[chosen[:, 0], chosen[:, 1]] = 0.0
        return weights, {
            "token_weight/clip_cov_frac": scalar(n_pick / max(n_valid, 1)),
            "token_weight/clip_cov_candidates": scalar(float(idx.shape[0])),
        }


@register("token_weight", "overlong_filter")
@dataclass(frozen=True)
class OverlongFilter:
    """Overlong filtering: weight 0 on every token of a truncated completion (DAPO arXiv 2503.14476;
    "Tricks or Traps?" arXiv 2508.08221; TRL ``mask_truncated_completions=True``).

    Reads ``x.truncated`` [B] bool (the trainer passes ``batch.truncated``). Denominators are
    unchanged: a filtered sequence still counts in token_mean's token count.
    """

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.truncated is None:
            raise ValueError("overlong_filter needs LossInputs.truncated [B] bool (pass batch.truncated)")
        keep = (~x.truncated.bool()).to(x.mask.dtype)  # [B]
        return keep[:, None].expand_as(x.mask).clone(), {
            "token_weight/truncated_frac": scalar(1 - keep.mean()) if keep.numel() else scalar(0.0)
        }
