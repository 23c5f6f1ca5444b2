"""Selections of the agent presets: LOOP's advantage filter (at the end), and
SPEAR: self-imitation with progressive exploration (Qin et al., "Learn the Ropes, Then Trust the Wins",
arXiv 2509.22601): a curriculum tool-call bonus early on, and a replay buffer of past successes whose
advantages are recalibrated against a historical baseline and whose weight ramps up.

Two parts cooperate through the rows' metadata: the ``spear_replay`` selection (state: the buffer, the
history of group reward means, the step) adds the bonus to every row's reward and appends replayed rows
marked ``metadata["spear_replay"]`` with their advantage in ``metadata["spear_advantage"]``; the
``spear`` advantage gives fresh rows the group-mean advantage and replayed rows theirs.

A replayed row keeps what it was sampled with: the sampler's log-probs μ (``rollout_logprobs``) and the
weight version that sampled it (``weight_version``), so the trainer's π_old pass at the current weights
and the corrections (π_old/μ) see it as the off-policy sample it is; it is marked
``metadata["replayed"]`` (``unipo.batch.REPLAYED_ROW_KEY``), which exempts it from the staleness check
of freshly sampled rows (its age is bounded by ``tolerate_steps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unipo.batch import REPLAYED_ROW_KEY, RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.base import Metrics, broadcast_to_tokens, group_stats, scalar
from unipo.parts.registry import register

_STATE = dict(default_factory=dict, init=False, repr=False, compare=False, hash=False)
REPLAY_KEY, ADV_KEY = "spear_replay", "spear_advantage"
_ROW_TENSORS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "context_mask",
    "turn_index",
    "rollout_logprobs",
)
REPLAY_GROUP_BASE = 1 << 40  # replayed rows get group ids far above any fresh group's


def cosine_decay(step: int, steps: int) -> float:
    """(cos(π·step/steps) + 1)/2 for step ≤ steps, else 0: 1 → 0."""
    return (math.cos(math.pi * step / steps) + 1) / 2 if 0 <= step <= steps and steps > 0 else 0.0


@register("selection", "spear_replay")
@dataclass(frozen=True)
class SPEARReplay:
    """The SPEAR rollout side (see the module docstring).

    Bonus: r ← r + min(1, 0.1·turns)·(cos(π·s/S_tool) + 1)/2 for s ≤ S_tool (``metadata["turns"]``).
    Buffer: rows with r above their group mean (A > 0) are kept with their step; entries older than
    ``tolerate_steps`` are dropped. Replay (from earlier steps): A = r − b, b the median of the recorded
    group means (the last ``baseline_size`` of them), rows with A < 0 dropped, a random subset of the
    largest power of two ≤ min(rows, ``buffer_size``), and A scaled by coef·(1 − cos(π·s/S_replay))/2 for
    s ≤ S_replay (coef after).
    Source: TencentYoutuResearch/SPEAR@7e84315 verl-agent/verl/trainer/ppo/ray_trainer_hybrid.py
    (``TrajectoryBufferBatch``: ``update_batch``, ``get_buffer``, ``maintain_reward_statistics``,
    ``prepare_for_selection`` with ``weight_decay_trajectory_replay = −1``), agent_system/reward_manager/
    episode.py (cosine tool-call reward), verl/workers/actor/dp_actor.py (replay loss ramp), and
    examples/gigpo_trainer/run_alfworld_spear.sh (S_tool = 200, S_replay = 100, tolerate 5, coef 1).
    A replayed row keeps its sampler log-probs and weight version (module docstring); the code keeps the
    stored batch's ``old_log_probs`` (π_old at the step that stored it) as its replay loss's π_old.
    Deviations: the replay rows join the step's batch (one optimizer pass) instead of a separate replay
    loss pass; their loss is the preset's surrogate (the script uses clip-cov for replay); the current
    step's successes are replayed from the next step on; the baseline is the median over recorded group
    means (the code's ``reward_mean_50p``).
    """

    buffer_size: int = 2048
    tolerate_steps: int = 5
    baseline_size: int = 10240
    tool_steps: int = 200
    replay_steps: int = 100
    replay_coef: float = 1.0
    seed: int = 0
    _state: dict[str, Any] = field(**_STATE)

    def __post_init__(self) -> None:
        self._state.update(step=0, buffer=[], means=[], pending=None)

    def bonus(self, turns: list[float]) -> Tensor:  # [B]
        scale = cosine_decay(self._state["step"], self.tool_steps)
        return torch.tensor([min(1.0, 0.1 * t) * scale for t in turns], dtype=torch.float32)

    def ramp(self) -> float:
        s = self._state["step"]
        if s > self.replay_steps:
            return self.replay_coef
        return self.replay_coef * (1 - math.cos(math.pi * s / self.replay_steps)) / 2

    def _replay(self) -> tuple[list[dict[str, Any]], float]:
        step, means = self._state["step"], self._state["means"]
        old = [e for e in self._state["buffer"] if e["step"] < step]
        if not old or not means:
            return [], float("nan")
        base = float(torch.tensor(means[-self.baseline_size :]).median())
        keep = [e for e in old if e["reward"] - base >= 0]
        n = min(len(keep), self.buffer_size)
        n = 1 << (n.bit_length() - 1) if n >= 2 else 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        picked = [keep[i] for i in torch.randperm(len(keep), generator=g)[:n].tolist()]
        return [dict(e, advantage=(e["reward"] - base) * self.ramp()) for e in picked], base

    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch, Metrics]:
        meta = batch.metadata or [{} for _ in range(batch.size)]
        rewards = batch.rewards.float() + self.bonus([float(m.get("turns", 0)) for m in meta])
        fresh = batch.replace(rewards=rewards)
        mean, _, _ = group_stats(rewards, fresh.group_ids)
        step = self._state["step"]
        versions = fresh.weight_version.tolist() if fresh.weight_version is not None else [None] * fresh.size
        entries = [{"step": step, "reward": float(rewards[i]), "turns": meta[i].get("turns", 0),
                    "weight_version": versions[i], "truncated": bool(fresh.truncated[i]),
                    **{k: getattr(fresh, k)[i].clone() for k in _ROW_TENSORS
                       if getattr(fresh, k) is not None}}
                   for i in range(fresh.size) if float(rewards[i]) > float(mean[i])]  # fmt: skip
        groups = torch.unique(fresh.group_ids)
        group_means = [float(rewards[fresh.group_ids == g].mean()) for g in groups]
        replay, base = self._replay()
        self._state["pending"] = (entries, group_means)
        bonus = rewards.mean() - batch.rewards.float().mean()
        metrics: Metrics = {"selection/spear_bonus_mean": scalar(bonus),
                            "selection/spear_replayed": scalar(float(len(replay)))}  # fmt: skip
        if not replay:
            return fresh, metrics
        metrics["selection/spear_baseline"] = scalar(base)
        age = sum(step - e["step"] for e in replay) / len(replay)
        metrics["selection/spear_replay_age_mean"] = scalar(age)
        # an entry of a checkpoint written before rows kept their version: the step's (as it was then)
        known = fresh.weight_version is not None and fresh.size > 0
        fallback = int(fresh.weight_version.max()) if known else None
        rows = [self._row(e, k, fallback) for k, e in enumerate(replay)]
        return RolloutBatch.concat([fresh, *rows]), metrics

    def _row(self, e: dict[str, Any], k: int, fallback: int | None = None) -> RolloutBatch:
        """The stored row as it was sampled (ids, masks, sampler log-probs, weight version)."""
        tensors = {name: e[name][None] for name in _ROW_TENSORS if name in e}
        v = e["weight_version"] if e.get("weight_version") is not None else fallback
        return RolloutBatch(
            **tensors, group_ids=torch.tensor([REPLAY_GROUP_BASE + k]),
            truncated=torch.tensor([bool(e.get("truncated", False))]),
            weight_version=torch.tensor([v], dtype=torch.long) if v is not None else None,  # [1]
            rewards=torch.tensor([e["reward"]]),
            metadata=[{REPLAY_KEY: True, REPLAYED_ROW_KEY: True, ADV_KEY: e["advantage"],
                       "turns": e["turns"]}],
        )  # fmt: skip

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if self._state["pending"] is not None:
            entries, group_means = self._state["pending"]
            step = self._state["step"]
            self._state["buffer"] = [e for e in self._state["buffer"] + entries
                                     if step - e["step"] <= self.tolerate_steps]  # fmt: skip
            self._state["means"] = (self._state["means"] + group_means)[-self.baseline_size :]
            self._state["pending"] = None
        self._state["step"] += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self._state["step"],
            "buffer": list(self._state["buffer"]),
            "means": list(self._state["means"]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state.update(step=int(state["step"]), buffer=list(state["buffer"]), means=list(state["means"]),
                           pending=None)  # fmt: skip


@register("advantage", "spear")
@dataclass(frozen=True)
class SPEARAdvantage:
    """SPEAR's advantage: fresh rows A = r − mean_g(r) (no std: the script's ``norm_adv_by_std_in_grpo
    False``; r already has the tool-call bonus), replayed rows their recalibrated, ramped
    ``metadata["spear_advantage"]`` (``spear_replay``)."""

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=False)(batch)  # [B, T]
        replay = batch.flags(REPLAY_KEY)
        if bool(replay.any()):
            meta = batch.metadata
            stored = torch.tensor([float(m.get(ADV_KEY, 0.0)) if m.get(REPLAY_KEY) else 0.0 for m in meta])
            adv = torch.where(replay[:, None], broadcast_to_tokens(stored, batch.completion_mask), adv)
        metrics["advantage/spear_replay_frac"] = scalar(replay.float().mean() if batch.size else 0.0)
        return adv, metrics


@register("selection", "loo_filter")
@dataclass(frozen=True)
class LeaveOneOutFilter:
    """LOOP's rollout filter: drop rows whose leave-one-out advantage |r_i − mean_{j≠i} r_j| is below
    ``threshold`` (computed on the whole group before anything is dropped).

    Source: apple/ml-loop@6ade7b9 phi_agents/rl/train.py (``_filter_rollouts`` with ``abs_adv_threshold``
    0.01, ``pos_adv_only`` false). With 0/1 rewards this drops exactly the groups of equal rewards.
    No refill (LOOP trains on what survives).
    """

    threshold: float = 0.01

    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch, Metrics]:
        r = batch.rewards.float()
        mean, _, count = group_stats(r, batch.group_ids)
        loo = (count / (count - 1).clamp(min=1)) * (r - mean) * (count > 1)  # r_i − mean of the others
        keep = loo.abs() >= self.threshold
        return batch.select(keep), {
            "selection/loo_filtered_frac": scalar(1 - keep.float().mean() if r.numel() else 0.0)
        }
