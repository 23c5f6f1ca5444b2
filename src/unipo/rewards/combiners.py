"""Reward combiners: what replaces ``RewardSet``'s weighted sum when a run sets ``reward_combiner``.

A combiner is called once per scored batch, ``combiner(components, weights) -> (total, metrics)``,
with every component's values (None = excluded) and the configured weights; an item whose
component is None gets a None total. Both combiners here keep state across batches and
checkpoint it (``state_dict`` / ``load_state_dict``, saved by ``Trainer.state`` through
``RewardSet.state_dict``); their metrics are logged per component as ``rewards/<key>``.
Under data-parallel collection each rank would update its own state from its share: the means
they read must then be all-reduced first (not done here: collection is one process today).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Components = dict[str, list[float | None]]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _rows(components: Components) -> int:
    return len(next(iter(components.values()))) if components else 0


@dataclass
class LagrangeCombiner:
    """Constrained RLHF with one Lagrange multiplier per constrained reward (Moskovitz et al.,
    arXiv 2310.04373, "Confronting Reward Model Overoptimization with Constrained RLHF").

        total_i = (m − Σ_k σ(λ_k)) · Σ_{j unconstrained} w_j r_{j,i} + Σ_k σ(λ_k) · w_k r_{k,i}
        L(λ) = Σ_k σ(λ_k) · (mean_i r_{k,i} − θ_k)        one SGD step on λ per scored batch

    m constraints r_k ≥ θ_k (``thresholds``: component name → θ_k). σ is the sigmoid (``equality``:
    tanh, so a component above its threshold is pushed back down, the paper's equality constraints).
    The SGD step follows the authors' code (tedmoskovitz/ConstrainedRL4LMs@11ac8fe0
    rl4lms/algorithms/constrained_ppo/constrained_ppo.py: squash_fn, mixed_advantages,
    lagrange_loss, SGD(lr=1e-2, momentum=0.1), gradient clipped to max_grad_norm):
    g_k = σ'(λ_k)(mean r_k − θ_k), g ← g·min(1, c/‖g‖), b ← μ b + g, λ ← λ − lr b.
    The total uses the multipliers before this batch's step.

    Deviations: the mixture is taken of rewards, not of separately normalized advantages (the
    code mixes per-component GAE advantages, each whitened); λ starts at ``init`` (default 0,
    σ = 0.5) instead of N(0, 0.01²); one dual step per scored batch (refill rounds are batches),
    not one per PPO minibatch.
    """

    thresholds: dict[str, float]
    lr: float = 1e-2
    momentum: float = 0.1
    max_grad_norm: float | None = 0.5
    init: float = 0.0
    equality: bool = False
    lambdas: dict[str, float] = field(default_factory=dict)
    buffers: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise ValueError("reward_combiner lagrange needs thresholds: {component name: threshold}")
        if self.lr <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                f"lagrange lr must be > 0 and momentum in [0, 1); got {self.lr}, {self.momentum}"
            )
        for name in self.thresholds:
            self.lambdas.setdefault(name, float(self.init))
            self.buffers.setdefault(name, 0.0)

    def check(self, names: Sequence[str]) -> None:
        missing = sorted(set(self.thresholds) - set(names))
        if missing:
            raise ValueError(
                f"reward_combiner lagrange constrains {missing}, which are not reward terms {list(names)}"
            )

    def squash(self, x: float) -> float:
        return math.tanh(x) if self.equality else 1.0 / (1.0 + math.exp(-x))

    def squash_grad(self, x: float) -> float:
        return 1.0 - math.tanh(x) ** 2 if self.equality else self.squash(x) * (1.0 - self.squash(x))

    def __call__(
        self, components: Components, weights: dict[str, float]
    ) -> tuple[list[float | None], dict[str, float]]:
        sig = {k: self.squash(v) for k, v in self.lambdas.items()}
        objective_scale = len(self.thresholds) - sum(sig.values())
        total: list[float | None] = []
        for i in range(_rows(components)):
            values = {name: col[i] for name, col in components.items()}
            if any(v is None for v in values.values()):
                total.append(None)
                continue
            obj = sum(weights[n] * v for n, v in values.items() if n not in self.thresholds)  # type: ignore[operator]
            con = sum(sig[n] * weights[n] * values[n] for n in self.thresholds)  # type: ignore[operator]
            total.append(objective_scale * obj + con)
        metrics: dict[str, float] = {}
        grads: dict[str, float] = {}
        for name, theta in self.thresholds.items():
            mean = _mean(components[name])
            metrics[f"lagrange/{name}"] = sig[name]
            if mean is not None:
                grads[name] = self.squash_grad(self.lambdas[name]) * (mean - theta)
                metrics[f"lagrange/{name}_violation"] = mean - theta
        norm = math.sqrt(sum(g * g for g in grads.values()))
        scale = min(1.0, self.max_grad_norm / norm) if self.max_grad_norm and norm > 0 else 1.0
        for name, g in grads.items():
            self.buffers[name] = self.momentum * self.buffers[name] + g * scale
            self.lambdas[name] -= self.lr * self.buffers[name]
        metrics["lagrange/objective_scale"] = objective_scale
        return total, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": dict(self.lambdas), "buffers": dict(self.buffers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lambdas.update({k: float(v) for k, v in state["lambdas"].items()})
        self.buffers.update({k: float(v) for k, v in state["buffers"].items()})


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Volume dominated by ``points`` above ``ref`` (all objectives maximized), by slicing along
    the first objective (Fonseca et al. 2006): exact, fine for a handful of objectives."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return max(0.0, max(p[0] for p in points) - ref[0])
    ordered = sorted(points, key=lambda p: p[0])
    volume, lower = 0.0, ref[0]
    for i, p in enumerate(ordered):
        if p[0] > lower:  # the slab [lower, p0] is covered by every point from i on
            volume += (p[0] - lower) * hypervolume([q[1:] for q in ordered[i:]], ref[1:])
            lower = p[0]
    return volume


@dataclass
class HypervolumeCombiner:
    """Hypervolume-guided reward weighting (Lu et al., arXiv 2509.11452, "Learning to Optimize
    Multi-Objective Alignment Through Dynamic Reward Weighting", §hypervolume-guided adaptation).

        total_i = m_t · Σ_k w_k r_{k,i}
        p_t = (mean_i r_{k,i})_k           this batch's point in objective space
        c_t = HV(B ∪ {p_t}; ref) − HV(B; ref),   m_{t+1} = 0.5 + 1.5 · tanh(c_t)

    ``ref`` is the first point seen (the buffer's first entry, as the code's reference point), B the
    later points that added volume (a point joins B only when c_t > 0). Components in ``minimize``
    are negated first. Follows yining610/dynamic-reward-weighting@238fe655
    verl/utils/reward_score/dynamic_math/hypervolumn_contribution.py:compute_score and
    verl/trainer/ppo/ray_trainer_vanilla.py (meta_reward scales the next step's rewards).
    Deviations: the point is the training batch's mean reward per component, not a validation run
    after each step; the paper's second method (gradient-based weights, softmax(log w + η·G Gᵀ 1))
    needs one policy gradient per objective and is not carried by a reward combiner.
    """

    minimize: tuple[str, ...] = ()
    meta: float = 1.0
    buffer: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __call__(
        self, components: Components, weights: dict[str, float]
    ) -> tuple[list[float | None], dict[str, float]]:
        total: list[float | None] = []
        for i in range(_rows(components)):
            values = [col[i] for col in components.values()]
            if any(v is None for v in values):
                total.append(None)
            else:
                total.append(self.meta * sum(weights[n] * col[i] for n, col in components.items()))  # type: ignore[operator]
        metrics = {"hypervolume/meta_reward": self.meta}
        means = {n: _mean(col) for n, col in components.items()}
        if self.names and list(components) != self.names:
            raise ValueError(
                f"hypervolume combiner: components changed from {self.names} to {list(components)}"
            )
        if all(m is not None for m in means.values()):
            self.names = list(components)
            point = [-m if n in self.minimize else m for n, m in means.items()]  # type: ignore[operator]
            if not self.buffer:
                self.buffer.append(point)
                contribution = 0.0
            else:
                ref, front = self.buffer[0], self.buffer[1:]
                contribution = max(hypervolume([*front, point], ref) - hypervolume(front, ref), 0.0)
                if contribution > 0:
                    self.buffer.append(point)
                self.meta = 0.5 + 1.5 * math.tanh(contribution)
            metrics["hypervolume/contribution"] = contribution
            metrics["hypervolume/front_size"] = float(len(self.buffer) - 1)
        return total, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "buffer": [list(p) for p in self.buffer], "names": list(self.names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meta = float(state["meta"])
        self.buffer = [list(map(float, p)) for p in state["buffer"]]
        self.names = list(state["names"])


COMBINERS: dict[str, type] = {"lagrange": LagrangeCombiner, "hypervolume": HypervolumeCombiner}


def make_combiner(name: str, **params: Any) -> Any:
    """The combiner ``name`` (``lagrange``, ``hypervolume``) with ``params``; ValueError naming the
    allowed names or fields otherwise."""
    if name not in COMBINERS:
        raise ValueError(f"unknown reward_combiner {name!r}; allowed: {sorted(COMBINERS)}")
    try:
        return COMBINERS[name](**params)
    except TypeError as err:
        raise ValueError(f"reward_combiner {name!r}: bad params {params}: {err}") from None
