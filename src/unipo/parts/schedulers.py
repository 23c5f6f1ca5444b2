"""Prompt schedulers: which prompts a step samples, and how many completions each gets, decided before
generation (``parts/base.py``, kind ``scheduler``).

    plan(k, step) -> PromptPlan      k training-example indices (+ a group size each) for a round
    observe(batch) -> metrics        every scored round, before the selections (rows carry
                                     metadata["example_id"]); the per-prompt statistics live here
    bind(examples, seed, group_size) once, by the trainer; state_dict() is checkpointed as its sampler

``uniform`` (the default) is the trainer's shuffled-epoch walk (``PromptSampler``), bit for bit; MMR1's
variance-aware sampling (``mmr1_vas``) and Rollout-GDRO's allocation (``rollout_gdro``) are here, PCL's
value-model curriculum in ``scheduler_pcl.py``. Every decision is a function of the scheduler's state
and its seeded generator, both checkpointed, so a resumed run plans exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unipo.batch import EXAMPLE_KEY, RolloutBatch
from unipo.parts.advantages_risk import difficulty_bin, groups_in_order
from unipo.parts.base import Metrics, PromptPlan
from unipo.parts.registry import part_name, register
from unipo.train.prompts import PromptSampler

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm

_STATE = dict(default_factory=dict, init=False, repr=False, compare=False, hash=False)


@dataclass
class GroupOutcome:
    """One observed group: its prompt's example index, rewards [n] and completions (token-id lists)."""

    example_id: int
    rewards: Tensor  # [n] float
    completions: list[list[int]]


def group_outcomes(batch: RolloutBatch) -> list[GroupOutcome]:
    """The groups of a scored round (batch order), or a clear error when rows lack their example index."""
    if batch.size == 0:
        return []
    meta = batch.metadata or [{}] * batch.size
    out = []
    for rows in groups_in_order(batch.group_ids.cpu()):
        eid = meta[rows[0]].get(EXAMPLE_KEY)
        if eid is None:
            raise ValueError(
                "a prompt scheduler observed rows without metadata['example_id']: collect() records it "
                "only for prompts it was given with example_ids (the trainer's plans)"
            )
        ids, mask = batch.completion_ids[rows], batch.completion_mask[rows].bool()  # [n, T] each
        out.append(GroupOutcome(int(eid), batch.rewards[rows].float().cpu(),
                                [ids[i][mask[i]].tolist() for i in range(len(rows))]))  # fmt: skip
    return out


class SchedulerBase:
    """What every scheduler shares: ``bind`` (the dataset size, seed, G and the shuffled-epoch walk),
    the check against parts that assume equal groups, and the sampler's part of the state."""

    variable_group_size = False
    _state: dict[str, Any]

    def bind(self, examples: Sequence[Mapping[str, Any]], seed: int, group_size: int) -> None:
        if not examples:
            raise ValueError(f"scheduler {part_name(self)!r}: the task has no training examples")
        self._state.update(n=len(examples), seed=int(seed), group_size=int(group_size),
                           sampler=PromptSampler(len(examples), seed=int(seed)), examples=examples,
                           gen=torch.Generator().manual_seed(int(seed) * 7_919 + 11))  # fmt: skip

    def _bound(self) -> dict[str, Any]:
        if "sampler" not in self._state:
            raise RuntimeError(f"scheduler {part_name(self)!r} is not bound: call bind(examples, seed, G)")
        return self._state

    def check(self, algorithm: Algorithm) -> str | None:
        if not self.variable_group_size:
            return None
        fixed = [part_name(p) for p in algorithm.parts() if getattr(p, "equal_groups", False)]
        if fixed:
            return (
                f"it gives prompts different numbers of samples, and {fixed} assume every group has "
                "rollout.group_size rows; use another scheduler or drop them"
            )
        return None

    def observe(self, batch: RolloutBatch) -> Metrics:
        return {}

    def generation_calls(self, k: int, group_size: int) -> list[tuple[int, int]]:
        """(prompts, samples per prompt) of the largest ``generate`` calls a step can make: the
        trainer's pre-run KV-cache check sizes each. A plan of ``k`` prompts × G by default."""
        return [(k, group_size)]

    def base_state(self) -> dict[str, Any]:
        s = self._bound()
        return {"sampler": s["sampler"].state_dict(), "gen": s["gen"].get_state()}

    def load_base_state(self, state: Mapping[str, Any]) -> None:
        s = self._bound()
        s["sampler"].load_state_dict(state["sampler"])
        s["gen"].set_state(state["gen"])


@register("scheduler", "uniform")
@dataclass(frozen=True)
class UniformScheduler(SchedulerBase):
    """Uniform prompts, G samples each: a fresh seeded permutation of the training examples per epoch,
    walked in order (``PromptSampler``); refills continue the walk. The trainer's behaviour without a
    scheduler, bit for bit, and its checkpoint state ({position, n, seed}) is the sampler's."""

    _state: dict[str, Any] = field(**_STATE)

    def plan(self, k: int, step: int) -> PromptPlan:
        return PromptPlan(tuple(self._bound()["sampler"].take(k)))

    def state_dict(self) -> dict[str, Any]:
        return self._bound()["sampler"].state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._bound()["sampler"].load_state_dict(dict(state))


def distinct_ngrams(completions: list[list[int]], n: int) -> float:
    """distinct-n of a group: |unique n-grams| / |n-grams| over all its completions (0 with none)."""
    grams = [tuple(c[i : i + n]) for c in completions for i in range(len(c) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@register("scheduler", "mmr1_vas")
@dataclass(frozen=True)
class MMR1VAS(SchedulerBase):
    """MMR1's Variance-Aware Sampling (Leng et al., arXiv 2509.21268, §3 and Algorithm 1).

    Each prompt x has a Variance Promotion Score from its last observed group of N completions:

        P(x) = (1/N) Σ_i 1[r_i ≥ solved_at]        OVS(x) = P(x)(1 − P(x))
        TDS(x) = distinct-n of the group           VPS(x) = α·OVS(x) + β·TDS(x)

    (with ``momentum`` m: VPS ← m·VPS_old + (1 − m)·VPS_new). A round of B prompts takes ⌊λB⌋ with
    replacement with probability ∝ w(x) = (VPS(x) − min VPS)/(max VPS − min VPS + 1e-8) over the dataset
    (Algorithm 1 line 13; the code's min-max weights) and B − ⌊λB⌋ from the uniform shuffled walk
    (line 14), interleaved weighted/uniform as the code's ``MixedCurriculumSampler``. A prompt not yet
    scored gets the mean VPS of the scored ones. With ``refresh_every`` T > 0, steps 0, T, 2T, ...
    first score every training prompt with ``probe_samples`` completions (lines 2–5, 7–10: the
    scheduler's ``probe`` rollouts, never trained on); every observed group also updates its prompt.
    Source: LengSicong/MMR1@d8161a0 verl/curriculum/metrics.py:calculate_learnability_metric,
    samplers.py:MixedCurriculumSampler, verl/trainer/ray_trainer.py:_compute_curriculum_weights.
    """

    mix: float = 0.5  # λ: the weighted share of a round
    alpha: float = 0.8  # OVS weight (paper §6.1, Appendix C)
    beta: float = 0.2  # TDS weight
    ngram: int = 3  # TDS = distinct-n
    solved_at: float = 1.0  # a completion is correct when its reward is ≥ this
    momentum: float = 0.0  # the code's curriculum_momentum
    refresh_every: int = 0  # T_update: full-dataset scoring sweeps every T steps (0: online only)
    probe_samples: int | None = None  # N completions per prompt in a sweep (None: G)
    probe_batch: int = 64  # prompts per sweep round
    _state: dict[str, Any] = field(**_STATE)

    def __post_init__(self) -> None:
        if not 0 <= self.mix <= 1 or self.alpha < 0 or self.beta < 0 or self.ngram < 1:
            raise ValueError(
                f"mmr1_vas needs mix in [0, 1], alpha, beta ≥ 0 and ngram ≥ 1, got mix={self.mix}, "
                f"alpha={self.alpha}, beta={self.beta}, ngram={self.ngram}"
            )
        if not 0 <= self.momentum < 1 or self.refresh_every < 0 or self.probe_batch < 1:
            raise ValueError(
                f"mmr1_vas needs momentum in [0, 1), refresh_every ≥ 0 and probe_batch ≥ 1, got "
                f"{self.momentum}, {self.refresh_every}, {self.probe_batch}"
            )
        if self.probe_samples is not None and self.probe_samples < 2:
            raise ValueError(f"mmr1_vas probe_samples must be ≥ 2, got {self.probe_samples}")
        self._state.update(vps={}, sweep_step=-1, sweep_pos=0)

    def weights(self) -> Tensor:
        """[n] the weighted sampler's probabilities ∝ min-max normalized VPS (unscored: the scored mean)."""
        s = self._bound()
        vps = s["vps"]
        prior = sum(vps.values()) / len(vps) if vps else 0.0
        v = torch.tensor([vps.get(i, prior) for i in range(s["n"])], dtype=torch.float64)  # [n]
        w = (v - v.min()) / (v.max() - v.min() + 1e-8)
        return w if float(w.sum()) > 0 else torch.ones_like(w)

    def plan(self, k: int, step: int) -> PromptPlan:
        s = self._bound()
        n_w = math.floor(self.mix * k)
        draw = torch.multinomial(self.weights(), n_w, replacement=True, generator=s["gen"]) if n_w else None
        weighted = draw.tolist() if draw is not None else []
        uniform = s["sampler"].take(k - n_w)
        order = [x for pair in zip(weighted, uniform) for x in pair]
        order += weighted[len(uniform) :] + uniform[len(weighted) :]
        scored = [s["vps"][i] for i in order if i in s["vps"]]
        return PromptPlan(tuple(order), metrics={
            "sched/weighted_prompts": float(n_w),
            "sched/scored_frac": len(s["vps"]) / s["n"],
            "sched/vps_chosen_mean": sum(scored) / len(scored) if scored else math.nan,
        })  # fmt: skip

    def probe(self, step: int) -> PromptPlan | None:
        s = self._bound()
        if self.refresh_every <= 0 or step % self.refresh_every:
            return None
        if s["sweep_step"] != step:
            s.update(sweep_step=step, sweep_pos=0)
        start = s["sweep_pos"]
        if start >= s["n"]:
            return None
        stop = min(s["n"], start + self.probe_batch)
        s["sweep_pos"] = stop
        size = self.probe_samples or s["group_size"]
        return PromptPlan(tuple(range(start, stop)), (size,) * (stop - start))

    def generation_calls(self, k: int, group_size: int) -> list[tuple[int, int]]:
        """The step's plan and, with sweeps on, a sweep round: ``probe_batch`` prompts × N."""
        sweep = [(self.probe_batch, self.probe_samples or group_size)] if self.refresh_every > 0 else []
        return [(k, group_size), *sweep]

    def observe(self, batch: RolloutBatch) -> Metrics:
        vps, ovs_all, tds_all = self._bound()["vps"], [], []
        for g in group_outcomes(batch):
            p = float((g.rewards >= self.solved_at).double().mean())
            ovs, tds = p * (1 - p), distinct_ngrams(g.completions, self.ngram)
            new = self.alpha * ovs + self.beta * tds
            vps[g.example_id] = self.momentum * vps[g.example_id] + (1 - self.momentum) * new if (
                g.example_id in vps) else new  # fmt: skip
            ovs_all.append(ovs)
            tds_all.append(tds)
        if not ovs_all:
            return {}
        return {"sched/ovs_mean": sum(ovs_all) / len(ovs_all), "sched/tds_mean": sum(tds_all) / len(tds_all),
                "sched/pass_rate_mean": float(batch.rewards.ge(self.solved_at).float().mean())}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        s = self._bound()
        ids = sorted(s["vps"])
        return {**self.base_state(), "vps_ids": ids, "vps": [s["vps"][i] for i in ids],
                "sweep_step": s["sweep_step"], "sweep_pos": s["sweep_pos"]}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.load_base_state(state)
        vps = {int(i): float(v) for i, v in zip(state["vps_ids"], state["vps"])}
        self._state.update(vps=vps, sweep_step=int(state["sweep_step"]), sweep_pos=int(state["sweep_pos"]))


def sqrt_allocation(v: Tensor, budget: int, n_min: int, n_max: int) -> tuple[list[int], float]:
    """Integer samples per prompt by the square-root (Neyman) law under a total budget, and its μ.

        n_i(μ) = clamp(√(v_i/μ), n_min, n_max),   μ (the shadow price of a sample) such that Σ_i n_i = budget

    (Rollout-GDRO's Eq. 30–31 with box constraints; v_i floored at 1e-6, so a prompt of zero variance
    gets n_min unless the budget forces more), solved by bisection on log μ, then rounded: ⌊n_i⌋ and one
    more for the largest fractional parts (ties: the earlier prompt) until the sum is the budget.
    Needs len(v)·n_min ≤ budget ≤ len(v)·n_max.
    """
    p = int(v.numel())
    if not p * n_min <= budget <= p * n_max:
        raise ValueError(f"a budget of {budget} samples cannot give {p} prompts each {n_min}..{n_max}")
    v = v.double().clamp(min=1e-6)  # [P]

    def total(log_mu: float) -> Tensor:  # [P] continuous allocation at μ = e^log_mu
        return (v / math.exp(log_mu)).sqrt().clamp(n_min, n_max)

    lo = math.log(float(v.min()) / n_max**2) - 1.0  # every n_i at n_max: the sum ≥ budget
    hi = math.log(float(v.max()) / n_min**2) + 1.0  # every n_i at n_min: the sum ≤ budget
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(total(mid).sum()) > budget else (lo, mid)
    x = total(hi)  # [P] Σ x ≤ budget: hi only ever moves to a μ whose sum is at most the budget
    n = x.floor().long()  # [P]
    order = sorted(range(p), key=lambda i: (-float(x[i] - n[i]), i))  # largest fraction first
    while int(n.sum()) < budget:  # one pass gives the fractions their sample; more only off float dust
        for i in order:
            if int(n.sum()) < budget and n[i] < n_max:
                n[i] += 1
    return n.tolist(), math.exp(hi)


@register("scheduler", "rollout_gdro")
@dataclass(frozen=True)
class GDRORollout(SchedulerBase):
    """Rollout-GDRO: a compute-neutral reallocation of completions across online difficulty bins
    (Panaganti et al., Group DRO-Driven RL for LLM Reasoning, arXiv 2601.19280, §3.3, §4.3).

    Prompts are drawn as ``uniform`` does (Rollout-GDRO changes only how many samples each gets). A
    prompt's bin is ``difficulty_bin`` (the ``gdro`` advantage's rule, b = ⌊(1 − p̂)·K⌋) of its solve
    rate p̂ averaged over its last ``history`` observations. Each bin keeps an EMA of the within-group
    reward variance of its prompts (unbiased; p(1 − p)·n/(n − 1) for a 0/1 reward),

        v_b ← (1 − β)·v_b + β·mean_{groups of b this round} Var(r)      (the first round: v_b = the mean)

    and a round of P prompts with a budget of P·G samples gives the prompts with a known bin variance
    the square-root allocation of the variance proxy Σ_b q_b v_b/n_b (Theorem 4.2, Eq. 30–31),

        n_i = clamp(√(v_{b(i)}/μ), n_min, n_max),   Σ_i n_i = G·#known     (``sqrt_allocation``)

    and every other prompt G, so the mean stays G (compute-neutral). Sources: the paper (Eq. 10–11,
    19–21, 28–31) and kishanpb/verl-gdro@b391899 (verl/utils/budget_allocation.py,
    verl/trainer/group_dro_grpo.py: rollout_choose_arms, update_rollout_arm_losses;
    algorithm_comparison/run_rollout_groupdro.sh: n_min = 2, n_max = 3·G, EMA β = 0.4, history 50).
    """

    bins: int = 4  # K: the gdro advantage's
    solved_at: float = 1.0
    n_min: int = 2
    n_max: int | None = None  # None: 3·G (the script's rollout_budget_n_max_multiplier)
    history: int = 50  # H: observations of a prompt its bin averages
    ema: float = 0.4  # β of the bin variance
    variable_group_size = True
    _state: dict[str, Any] = field(**_STATE)

    def __post_init__(self) -> None:
        if self.bins < 1 or self.n_min < 2 or self.history < 1 or not 0 < self.ema <= 1:
            raise ValueError(
                f"rollout_gdro needs bins ≥ 1, n_min ≥ 2 (a group baseline needs two), history ≥ 1 and "
                f"ema in (0, 1], got bins={self.bins}, n_min={self.n_min}, history={self.history}, "
                f"ema={self.ema}"
            )
        self._state.update(hist={}, v=[0.0] * self.bins, t=[0] * self.bins)

    def bind(self, examples: Sequence[Mapping[str, Any]], seed: int, group_size: int) -> None:
        super().bind(examples, seed, group_size)
        n_max = self._n_max(group_size)
        if not self.n_min <= group_size <= n_max:
            raise ValueError(
                f"rollout_gdro keeps the mean at rollout.group_size={group_size}, which must lie in "
                f"[n_min, n_max] = [{self.n_min}, {n_max}]"
            )
        self._state["n_max"] = n_max

    def _n_max(self, group_size: int) -> int:
        return self.n_max if self.n_max is not None else 3 * group_size  # the script's 3·G default

    def generation_calls(self, k: int, group_size: int) -> list[tuple[int, int]]:
        """Equal groups before any bin is known; later up to k·G/n_max prompts of n_max samples each
        (the budget k·G is kept), generated in one call per size."""
        n_max = self._n_max(group_size)
        return [(k, group_size), (max(1, k * group_size // n_max), n_max)]

    def bin_of(self, example_id: int) -> int | None:
        h = self._bound()["hist"].get(example_id)
        return int(difficulty_bin(torch.tensor(sum(h) / len(h)), self.bins)) if h else None

    def plan(self, k: int, step: int) -> PromptPlan:
        s = self._bound()
        idx, g = s["sampler"].take(k), s["group_size"]
        bins = [self.bin_of(i) for i in idx]
        known = [j for j, b in enumerate(bins) if b is not None and s["t"][b] > 0]
        sizes, mu = [g] * k, math.nan
        if known:
            v = torch.tensor([s["v"][bins[j]] for j in known])  # [P_known]
            alloc, mu = sqrt_allocation(v, g * len(known), self.n_min, s["n_max"])
            for j, n in zip(known, alloc):
                sizes[j] = n
        metrics = {"sched/alloc_min": float(min(sizes)), "sched/alloc_max": float(max(sizes)),
                   "sched/alloc_mean": sum(sizes) / k, "sched/alloc_known_frac": len(known) / k,
                   "sched/shadow_price": mu}  # fmt: skip
        return PromptPlan(tuple(idx), tuple(sizes), metrics)

    def observe(self, batch: RolloutBatch) -> Metrics:
        s = self._bound()
        signal: dict[int, list[float]] = {}
        for g in group_outcomes(batch):
            rate = float((g.rewards >= self.solved_at).double().mean())
            b = self.bin_of(g.example_id)  # the bin it was planned in (the history before this round)
            b = int(difficulty_bin(torch.tensor(rate), self.bins)) if b is None else b
            if g.rewards.numel() > 1:
                signal.setdefault(b, []).append(float(g.rewards.double().var()))
            h = s["hist"].setdefault(g.example_id, [])
            h.append(rate)
            del h[: -self.history]
        for b, vals in signal.items():
            mean = sum(vals) / len(vals)
            s["v"][b] = mean if s["t"][b] == 0 else (1 - self.ema) * s["v"][b] + self.ema * mean
            s["t"][b] += 1
        return {f"sched/bin_var_{b}": s["v"][b] for b in range(self.bins)}

    def state_dict(self) -> dict[str, Any]:
        s = self._bound()
        ids = sorted(s["hist"])
        return {**self.base_state(), "hist_ids": ids, "hist": [list(s["hist"][i]) for i in ids],
                "v": list(s["v"]), "t": list(s["t"])}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.load_base_state(state)
        if len(state["v"]) != self.bins:
            raise ValueError(f"rollout_gdro state has {len(state['v'])} bins, this part has {self.bins}")
        hist = {int(i): [float(x) for x in h] for i, h in zip(state["hist_ids"], state["hist"])}
        self._state.update(hist=hist, v=[float(x) for x in state["v"]], t=[int(x) for x in state["t"]])
