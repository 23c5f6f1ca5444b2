"""Outcome and progress credit for agent trajectories: SPA-RL, R³L, SUPO, and AEPO's entropy-aware advantage.

Rows are whole trajectories (``unipo.envs``); turn structure comes from ``batch.turn_index`` and
``metadata`` (``unipo.parts.agent_turns``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm, masked_whiten
from unipo.parts.advantages_entropy import old_entropies
from unipo.parts.agent_turns import broadcast_turns, row_turns, turn_returns
from unipo.parts.base import Metrics, broadcast_to_tokens, group_index, masked_mean, scalar
from unipo.parts.registry import register

_STATE = dict(default_factory=dict, init=False, repr=False, compare=False, hash=False)
_TRUNCATED_ENDS = ("turns", "tokens", "length")


@register("advantage", "spa")
@dataclass(frozen=True)
class SPAProgress:
    """SPA-RL: stepwise progress attribution (Wang et al., arXiv 2505.20732).

    A progress estimator gives each turn a contribution c_k, trained so that a trajectory's contributions
    add up to its outcome, min Σ_i (Σ_k c_{i,k} − R_i)²; a turn's reward is its contribution plus a
    grounding bonus when its action was executed (``turn_ok``; the last turn always gets it), and the
    advantage is the turn's reward-to-go, whitened over the batch's model tokens:

        r_k = c_k + β·1[ok_k or k = K−1],      A_k = Σ_{j ≥ k} γ^{j−k} r_j

    The estimator here is linear, c_k = w·φ_k + b, over φ_k = hashed token bigrams of turn k and the
    observation that follows it (``features`` buckets, averaged); it is fitted by ``epochs`` full-batch
    gradient steps on the step's rows after they are scored (state saved in checkpoints).
    Source: WangHanLinHenry/SPA-RL-Agent@ed20087 prm/train_our_progress_model.py (``prm_model``: a linear
    head on each turn's last token, summed over turns, MSE to the final reward) and prm/rl_data_org.py
    (grounding 0.5 when the next observation is not "Nothing happens", and 0.5 on the final turn).
    Deviations: the estimator is a linear model over token-bigram features trained online on the RL
    batches, not an LLM backbone trained offline on exploration rollouts and then frozen; the policy
    update is critic-free (reward-to-go, whitened) where the authors run step-level PPO with a value head;
    rl_data_org.py as published overwrites the turn values with the final reward minus the task's
    leave-one-out mean, which is not followed (the paper's estimator contributions are).
    """

    features: int = 256
    lr: float = 0.5
    epochs: int = 20
    grounding: float = 0.5
    gamma: float = 1.0
    _state: dict[str, Any] = field(**_STATE)

    uses_groups = False
    min_group_size = 1

    def __post_init__(self) -> None:
        if self.features < 1 or self.epochs < 0 or self.lr < 0:
            raise ValueError(
                f"spa needs features ≥ 1, epochs ≥ 0, lr ≥ 0; got {self.features}, {self.epochs}, {self.lr}"
            )
        self._state.update(w=torch.zeros(self.features + 1), pending=None)  # weights, then the bias

    def turn_features(self, batch: RolloutBatch) -> list[Tensor]:
        """Per row, φ [K, features + 1] (the last column is 1, for the bias)."""
        turns, ids = batch.turns(), batch.completion_ids
        seen = batch.context_mask if batch.context_mask is not None else batch.completion_mask
        out = []
        for i, k in enumerate(row_turns(batch)):
            owner, cur = [], -1
            for t in range(ids.shape[1]):  # a turn owns its tokens and the observation after it
                if not bool(seen[i, t]):
                    break
                cur = int(turns[i, t]) if int(turns[i, t]) >= 0 else cur
                owner.append(cur)
            phi = torch.zeros(k, self.features + 1)
            row = ids[i].tolist()
            for t in range(1, len(owner)):
                if owner[t] >= 0:
                    phi[owner[t], (row[t - 1] * 1_000_003 + row[t]) % self.features] += 1.0
            phi[:, : self.features] /= phi[:, : self.features].sum(1, keepdim=True).clamp(min=1)
            phi[:, -1] = 1.0
            out.append(phi)
        return out

    def contributions(self, phis: list[Tensor]) -> list[Tensor]:
        w = self._state["w"]
        return [phi @ w for phi in phis]

    def fit(self, phis: list[Tensor], outcomes: Tensor) -> Tensor:
        """``epochs`` gradient steps of ½·mean_i (Σ_k c_{i,k} − R_i)² from the current weights; returns
        them."""
        w = self._state["w"].clone()
        sums = torch.stack([phi.sum(0) for phi in phis]) if phis else torch.zeros(0, w.numel())  # [B, D+1]
        for _ in range(self.epochs):
            err = sums @ w - outcomes  # [B]
            w = w - self.lr * (sums * err[:, None]).mean(0)
        return w

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        phis = self.turn_features(batch)
        contrib = self.contributions(phis)
        outcomes = torch.tensor([sum(r) for r in turn_returns(batch)], dtype=torch.float32)
        per_turn = []
        for i, c in enumerate(contrib):
            ok = (batch.metadata[i] if batch.metadata else {}).get("turn_ok", [True] * len(c))
            r = [float(c[k]) + self.grounding * float(k == len(c) - 1 or bool(ok[k] if k < len(ok) else True))
                 for k in range(len(c))]  # fmt: skip
            acc, ret = 0.0, [0.0] * len(r)
            for k in reversed(range(len(r))):
                acc = r[k] + self.gamma * acc
                ret[k] = acc
            per_turn.append(ret)
        mask = batch.completion_mask.float()
        adv = masked_whiten(broadcast_turns(per_turn, batch), mask)
        pred = torch.tensor([float(c.sum()) for c in contrib])
        self._state["pending"] = self.fit(phis, outcomes)
        return adv, {
            "advantage/spa_estimator_mse": scalar(((pred - outcomes) ** 2).mean() if pred.numel() else 0.0),
            "advantage/abs_mean": scalar(masked_mean(adv.abs(), mask)),
        }

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if self._state["pending"] is not None:
            self._state.update(w=self._state["pending"], pending=None)

    def state_dict(self) -> dict[str, Any]:
        return {"w": self._state["w"].tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state.update(w=torch.tensor(state["w"], dtype=torch.float32), pending=None)


def shared_prefix_lengths(batch: RolloutBatch) -> list[int]:
    """Per row, the longest prefix of its completion ids it shares with a *different* trajectory of its
    group whose reward differs (0 when none does): the tokens before the pivot where they diverge."""
    idx, _ = group_index(batch.group_ids)
    lengths = batch.completion_mask.sum(1).long().tolist() if batch.context_mask is None else \
        batch.context_mask.sum(1).long().tolist()  # fmt: skip
    ids = batch.completion_ids.tolist()
    r = batch.rewards.tolist()
    out = []
    for i in range(batch.size):
        best = 0
        for j in range(batch.size):
            if j == i or int(idx[j]) != int(idx[i]) or r[j] == r[i]:
                continue
            n = 0
            while n < min(lengths[i], lengths[j]) and ids[i][n] == ids[j][n]:
                n += 1
            if n < max(lengths[i], lengths[j]):  # an identical trajectory does not diverge anywhere
                best = max(best, n)
        out.append(best)
    return out


@register("advantage", "r3l")
@dataclass(frozen=True)
class R3LAdvantage:
    """R³L: pivotal credit and positive amplification (Shi et al., arXiv 2601.03715).

        s_i = r_i − mean_g(r)     (0 baseline for a group of one)
        s_i ← 1 if r_i ≥ success;   s_i ← 3·s_i if s_i ≥ 0 otherwise        A_i = s_i / (1 + τ)

    on the row's model tokens after its pivot: tokens of the prefix it shares with a differently rewarded
    row of its group (``shared_prefix_lengths``) get A = 0 (R³L trains only the diverging suffix of a
    retried trajectory). The 1/(1+τ) is the OPMD loss's, folded in; the preset pairs it with plain
    REINFORCE on log π (``regularized_reinforce`` without regularizer), which is that loss.
    Source: shiweijiezero/R3L@d503f6c trinity/algorithm/advantage_fn/opmd_advantage.py
    (``OPMDReweightAdvGroupAdvantage``), policy_loss_fn/opmd_policy_loss.py, and
    common/workflows/envs/R3L/alfworld/R3L_workflow.py (``_adjust_action_mask_for_retry``).
    Deviations: the reflect-then-retry rollout (a language reflection chooses the pivot turn and a second
    attempt restarts there) is not carried, so the pivot is where a row first departs from a differently
    rewarded sibling; the masked prefix keeps counting in the aggregate's denominators (the authors set
    its action mask to 0).
    """

    success: float = 1.0
    amplify: float = 3.0
    tau: float = 1.0
    pivotal: bool = True

    min_group_size = 1  # a lone row's baseline is 0: A = r (amplified) / (1 + τ) still carries the reward

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        from unipo.parts.base import group_stats

        r = batch.rewards.float()
        mean, _, count = group_stats(r, batch.group_ids)
        s = torch.where(count > 1, r - mean, r)
        s = torch.where(r >= self.success, torch.ones_like(s), torch.where(s >= 0, self.amplify * s, s))
        adv = broadcast_to_tokens(s / (1 + self.tau), batch.completion_mask)
        cut = shared_prefix_lengths(batch) if self.pivotal else [0] * batch.size
        cols = torch.arange(adv.shape[1])[None, :]
        adv = torch.where(cols < torch.tensor(cut)[:, None], torch.zeros(()), adv)
        mask = batch.completion_mask.float()
        return adv, {"advantage/r3l_masked_prefix_frac": scalar(masked_mean((adv == 0).float(), mask)),
                     "advantage/abs_mean": scalar(masked_mean(adv.abs(), mask))}  # fmt: skip


@register("advantage", "supo")
@dataclass(frozen=True)
class SUPOAdvantage:
    """SUPO: one advantage per trajectory, shared by all its summarized segments (Lu et al., "Scaling LLM
    Multi-turn RL with End-to-end Summarization-based Context Management", arXiv 2510.06727).

    With summarization (``env.summary_tokens``) one episode becomes several rows, its segments, each
    carrying ``metadata["episode"]`` (its row in the group) and the episode's reward. The group baseline
    is taken over *episodes* (each counted once, however many segments it has):

        A_e = (R_e − mean_g(R)) / (std_g(R) + ε),    every segment of episode e gets A_e on its tokens

    and an episode cut by a limit (turns, tokens, length) gets A = 0 (``mask_truncated``). Source: arXiv
    2510.06727 abstract (summaries trained end to end with the tool-use turns; standard RL infrastructure
    on the segments). Deviations: the group statistics over episodes, the unbiased std and the masking of
    truncated episodes are this library's reading, UNVERIFIED (paper body and code not read).
    """

    scale_by_std: bool = True
    mask_truncated: bool = True
    eps: float = 1e-6

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        meta = batch.metadata or [{}] * batch.size
        keys = [(int(g), m.get("episode", i)) for i, (g, m) in enumerate(zip(batch.group_ids.tolist(), meta))]
        first: dict[tuple[int, Any], int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        reps = sorted(first.values())
        sub = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)
        ep_batch = batch.select(reps)
        ep_adv, _ = sub(ep_batch)
        ep_mask = ep_batch.completion_mask.float()
        values = (ep_adv * ep_mask).sum(1) / ep_mask.sum(1).clamp(min=1)  # [E]
        by_key = {keys[i]: float(values[n]) for n, i in enumerate(reps)}
        a = torch.tensor([by_key[k] for k in keys])
        cut = torch.tensor([m.get("env_end") in _TRUNCATED_ENDS for m in meta])
        if self.mask_truncated:
            a = torch.where(cut, torch.zeros(()), a)
        adv = broadcast_to_tokens(a, batch.completion_mask)
        return adv, {"advantage/supo_segments_per_episode": scalar(batch.size / max(len(reps), 1)),
                     "advantage/abs_mean": scalar(masked_mean(adv.abs(), batch.completion_mask))}  # fmt: skip


@register("advantage", "aepo_agentic")
@dataclass(frozen=True)
class EntropyAwareAdvantage:
    """Agentic AEPO's entropy-aware advantage (Dong et al., "Agentic Entropy-Balanced Policy Optimization",
    arXiv 2510.14545): the GRPO advantage scaled up on uncertain tokens,

        Ĥ_t = (H_t − mean H)/std H over the batch's model tokens (π_old entropies)     A_t = A_i·(1 + α·Ĥ_t)

    Source: arXiv 2510.14545 abstract ("entropy-aware advantage estimation to prioritize learning on
    high-uncertainty tokens"). Deviations: the z-scored entropy and α = 0.2 are UNVERIFIED (the
    authors' AEPO code is not in their public repository; a third-party description gives this form);
    distinct from the Arbitrary-Entropy AEPO (``aepo`` regularizer).
    """

    alpha: float = 0.2
    scale_by_std: bool = True
    eps: float = 1e-6

    needs_old_logprobs = True

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        mask = batch.completion_mask.float()
        ent = old_entropies(batch, "aepo_agentic")
        valid = ent[mask.bool()]
        if valid.numel() < 2:
            return adv, metrics
        z = (ent - valid.mean()) / (valid.std() + self.eps)
        out = adv * (1 + self.alpha * z) * mask
        metrics["advantage/aepo_entropy_scale_mean"] = scalar(masked_mean(1 + self.alpha * z, mask))
        return out, metrics
