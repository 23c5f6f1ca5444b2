"""Prompt Curriculum Learning (Gao et al., arXiv 2510.01135): a value model of the policy's expected
reward per prompt picks, from a larger candidate pool, the prompts it predicts closest to p ≈ 0.5.

    candidates  D_km = the next pool·m prompts of the shuffled walk
    choose      D_m = argmin_{S ⊆ D_km, |S| = m} Σ_{x ∈ S} |V(x) − τ|       (the m closest, greedily)
    learn       min_V Σ_i (V(x_i) − (1/n) Σ_j r(x_i, y_ij))²               on the step's own groups

(the paper's Eq. 1 and its value loss; V lags the policy by one step, as in the paper). The value
model here is small and learned: a logistic regression on hashed character 1..n-gram counts of the
prompt text (L2-normalized), trained by ``train_steps`` Adam steps on every observed round.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.base import Metrics, PromptPlan
from unipo.parts.registry import register
from unipo.parts.schedulers import SchedulerBase, group_outcomes

_STATE = dict(default_factory=dict, init=False, repr=False, compare=False, hash=False)


def ngram_features(text: str, n: int, dim: int) -> Tensor:
    """[dim] float64: counts of the text's character k-grams (k = 1..n), each hashed (crc32 of "k:gram",
    stable across processes) into one of ``dim`` buckets, L2-normalized (zeros for an empty text)."""
    counts = torch.zeros(dim, dtype=torch.float64)
    for k in range(1, n + 1):
        for i in range(len(text) - k + 1):
            counts[zlib.crc32(f"{k}:{text[i : i + k]}".encode()) % dim] += 1.0
    norm = counts.norm()
    return counts / norm if norm > 0 else counts


@register("scheduler", "pcl")
@dataclass(frozen=True)
class PCL(SchedulerBase):
    """Prompt Curriculum Learning: of ``pool``·k candidate prompts, the k whose predicted expected reward
    V(x) = σ(w·φ(x) + b) is closest to ``target`` (τ; ties: the earlier candidate), G samples each.

    φ(x) = ``ngram_features`` of the example's question (``features`` buckets, 1..``ngram``-grams); V is
    fit to each observed group's mean reward by ``train_steps`` Adam steps (``lr``) on the mean squared
    error, starting from w = 0, b = 0 (V = 0.5 everywhere: the first plan takes the first k candidates).
    Source: arXiv 2510.01135 (Algorithm: km candidates, greedy |V − τ| selection, the regression of V
    on the n responses' mean reward; m = 512, n = 16, k = 4, τ = 0.5); no code was found.
    """

    pool: int = 4  # k: candidates per chosen prompt
    target: float = 0.5  # τ
    features: int = 4096
    ngram: int = 3
    lr: float = 0.05
    train_steps: int = 8
    _state: dict[str, Any] = field(**_STATE)

    def __post_init__(self) -> None:
        if self.pool < 1 or self.features < 1 or self.ngram < 1 or self.lr <= 0 or self.train_steps < 0:
            raise ValueError(
                f"pcl needs pool ≥ 1, features ≥ 1, ngram ≥ 1, lr > 0 and train_steps ≥ 0, got "
                f"pool={self.pool}, features={self.features}, ngram={self.ngram}, lr={self.lr}, "
                f"train_steps={self.train_steps}"
            )

    def bind(self, examples: Sequence[Mapping[str, Any]], seed: int, group_size: int) -> None:
        super().bind(examples, seed, group_size)
        weight = torch.zeros(self.features + 1, dtype=torch.float64, requires_grad=True)  # [D + 1] w, b
        self._state.update(weight=weight, opt=torch.optim.Adam([weight], lr=self.lr), phi={})

    def phi(self, example_ids: Sequence[int]) -> Tensor:
        """[N, D] the features of these examples (cached; a function of the text only)."""
        s = self._bound()
        for i in example_ids:
            if i not in s["phi"]:
                text = str(s["examples"][i].get("question", ""))
                s["phi"][i] = ngram_features(text, self.ngram, self.features)
        if not example_ids:
            return torch.zeros(0, self.features, dtype=torch.float64)
        return torch.stack([s["phi"][i] for i in example_ids])

    def predict(self, example_ids: Sequence[int]) -> Tensor:
        """[N] V(x): the predicted expected reward of each example."""
        w = self._bound()["weight"].detach()
        return torch.sigmoid(self.phi(example_ids).double() @ w[:-1] + w[-1])

    def plan(self, k: int, step: int) -> PromptPlan:
        cand = self._bound()["sampler"].take(self.pool * k)
        v = self.predict(cand)  # [pool·k]
        gap = (v - self.target).abs()
        pick = sorted(sorted(range(len(cand)), key=lambda i: (float(gap[i]), i))[:k])  # candidate order
        chosen = torch.tensor(pick, dtype=torch.long)
        return PromptPlan(tuple(cand[i] for i in pick), metrics={
            "sched/pred_chosen_mean": float(v[chosen].mean()) if pick else math.nan,
            "sched/pred_gap_mean": float(gap[chosen].mean()) if pick else math.nan,
            "sched/pred_pool_mean": float(v.mean()) if cand else math.nan,
        })  # fmt: skip

    def observe(self, batch: RolloutBatch) -> Metrics:
        s = self._bound()
        groups = group_outcomes(batch)
        if not groups:
            return {}
        ids = [g.example_id for g in groups]
        target = torch.tensor([float(g.rewards.double().mean()) for g in groups], dtype=torch.float64)  # [N]
        phi = self.phi(ids).double()  # [N, D]
        err = self.predict(ids) - target  # [N] before this round's fit: V lags the policy by one step
        metrics = {"sched/pass_rate_mean": float(target.mean()), "sched/value_mse": float((err**2).mean())}
        if len(groups) > 1 and float(target.var()) > 0:
            metrics["sched/value_explained_var"] = 1.0 - float(err.var() / target.var())
        w, opt = s["weight"], s["opt"]
        with torch.enable_grad():  # collect may run under a no-grad context
            for _ in range(self.train_steps):
                opt.zero_grad(set_to_none=True)
                loss = ((torch.sigmoid(phi @ w[:-1] + w[-1]) - target) ** 2).mean()
                loss.backward()
                opt.step()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        s = self._bound()
        # a snapshot: Adam's state_dict holds its live moment tensors, which the next fit updates in place
        opt = copy.deepcopy(s["opt"].state_dict())
        return {**self.base_state(), "weight": s["weight"].detach().clone(), "opt": opt}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.load_base_state(state)
        s = self._bound()
        if tuple(state["weight"].shape) != tuple(s["weight"].shape):
            raise ValueError(
                f"pcl state has a value model of {tuple(state['weight'].shape)} weights, this part "
                f"{tuple(s['weight'].shape)} (features + 1)"
            )
        with torch.no_grad():
            s["weight"].copy_(state["weight"])
        s["opt"].load_state_dict(state["opt"])
