"""Sample selection of the T2 seeds: D³S sample-level down-sampling (across groups, or within
them for D³S-I; with its schedule and the advantage that keeps the full groups' A), PF-PPO policy
filtration, and HPT's SFT/RL switch (with its advantage and its SFT term over the demonstration
rows).

Selections run after rewards and before the advantage: ``sel(batch) -> (batch, metrics)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from unipo.batch import SFT_KEY, SFT_ROW_KEY, RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.base import LossInputs, Metrics, flagged, group_index, group_stats, masked_mean, scalar
from unipo.parts.registry import part_name, register

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm


def _scores(batch: RolloutBatch, key: str | None, name: str) -> Tensor:  # [B]
    if key is None:
        if batch.rewards is None:
            raise ValueError(f"{name} needs batch.rewards (or key= a metadata field)")
        return batch.rewards.float()
    if not batch.metadata or any(key not in m for m in batch.metadata):
        raise ValueError(f"{name} key={key!r} must be present in every batch.metadata item")
    return torch.tensor([float(m[key]) for m in batch.metadata])


def linear_schedule(start: float, end: float, steps: int, step: int) -> float:
    """start → end linearly over ``steps`` steps, then end (end at once when steps ≤ 0)."""
    if steps <= 0:
        return end
    return start + (end - start) * min(step / steps, 1.0)


def max_variance_subset(values: Tensor, k: int) -> Tensor:
    """Indices of the size-k subset of ``values`` [G] with the largest (population) variance.

    The optimum takes the j largest and k − j smallest values for some j (moving any chosen
    value toward the extremes never lowers the variance), so j = 0..k is searched; ties go to
    the smallest j. Values are ranked with a stable sort, so equal values keep index order.
    """
    g = values.numel()
    k = min(k, g)
    order = torch.sort(values, descending=True, stable=True).indices  # [G]
    best, best_var = order[:k], -1.0
    for j in range(k + 1):
        idx = torch.cat([order[:j], order[g - (k - j) :]]) if k - j > 0 else order[:j]
        var = float(values[idx].var(unbiased=False)) if idx.numel() > 1 else 0.0
        if var > best_var + 1e-12:
            best, best_var = idx, var
    return torch.sort(best).values


D3S_ADV_KEY = "d3s_group_advantage"  # metadata key: a row's GRPO advantage within its full group


def full_group_advantage(scores: Tensor, group_ids: Tensor, eps: float) -> Tensor:  # [B]
    """GRPO advantage (r − mean_G)/(std_G + ε) over each full group (unbiased std; a lone row: 0)."""
    mean, std, count = group_stats(scores, group_ids, unbiased=True)
    return (scores.float() - mean) / (std + eps) * (count > 1)


@register("selection", "d3s_samples")
@dataclass(frozen=True)
class D3SSamples:
    """D³S sample-level down-sampling (Wang et al., "Learning More with Less: A Dynamic Dual-Level
    Down-Sampling Framework for Efficient Policy Optimization", arXiv 2509.22115).

    A_i = the GRPO advantage of row i within its *full* group (``full_group_advantage``), then
    keep the rows whose advantages have the largest (population) variance Var(A):
      "across" (D³S, the paper's main method): k = max(min_keep, round(f·B)) rows of the whole
               batch; groups compete, so uninformative groups (all A = 0) go first;
      "within" (D³S-I, its intra-group variant): per group of G rows, k = max(min_keep, round(f·G)).
    The subset is ``max_variance_subset`` (the j largest and k − j smallest A for the best j).
    Each kept row carries its full-group A in ``metadata["d3s_group_advantage"]``, which the
    ``d3s_group_norm`` advantage uses, so selection and update see the same A (the "across"
    scope requires it: re-normalizing a partial group would change A, or zero a lone kept row).
    Schedule: f goes linearly from ``keep_start`` (aggressive) to ``keep_end`` over
    ``schedule_steps`` steps, counted by ``on_step_end`` (stateful, saved by ``state_dict()``).

    What was verified: the abstract (Var(A) sample level "across groups", |A|·H token level, a
    schedule that "starts with aggressive down-sampling ... and gradually relaxes") and a
    third-party summary naming the cross-group main method and the intra-group D³S-I. The paper
    body and its supplementary code could not be retrieved: A from the full group, the
    schedule's linear shape and its values (0.5 → 1.0 over 100 steps) are UNVERIFIED, this
    library's reading.
    """

    scope: Literal["across", "within"] = "across"
    keep_start: float = 0.5
    keep_end: float = 1.0
    schedule_steps: int = 100
    min_keep: int = 2
    key: str | None = None
    eps: float = 1e-6
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not (0 < self.keep_start <= 1 and 0 < self.keep_end <= 1) or self.min_keep < 1:
            raise ValueError(f"d3s_samples keep fractions must be in (0, 1] and min_keep ≥ 1, got {self}")
        if self.scope not in ("across", "within"):
            raise ValueError(
                f"d3s_samples scope must be 'across' (D³S) or 'within' (D³S-I), got {self.scope!r}"
            )
        self._state["step"] = 0

    @property
    def keep_fraction(self) -> float:
        return linear_schedule(self.keep_start, self.keep_end, self.schedule_steps, self._state["step"])

    def check(self, algorithm: Algorithm) -> str | None:
        if self.scope == "across" and part_name(algorithm.advantage) != "d3s_group_norm":
            return (
                "d3s_samples(scope='across') keeps parts of groups; their advantages must be the full "
                "groups' (advantage=d3s_group_norm), not recomputed on the kept rows"
            )
        return None

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        self._state["step"] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._state["step"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state["step"] = int(state["step"])

    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch, Metrics]:
        scores = _scores(batch, self.key, "d3s_samples")  # [B]
        adv = full_group_advantage(scores, batch.group_ids, self.eps)  # [B]
        frac = self.keep_fraction
        if self.scope == "across":
            k = min(max(self.min_keep, round(frac * batch.size)), batch.size)
            kept = max_variance_subset(adv, k) if batch.size else torch.zeros(0, dtype=torch.long)
        else:
            idx, n = group_index(batch.group_ids)
            keep: list[Tensor] = []
            for g in range(n):
                members = (idx == g).nonzero(as_tuple=True)[0]  # [G] row indices, batch order
                k = max(self.min_keep, round(frac * members.numel()))
                keep.append(members[max_variance_subset(adv[members], k)])
            kept = torch.sort(torch.cat(keep)).values if keep else torch.zeros(0, dtype=torch.long)
        out = batch.select(kept)
        meta = out.metadata or [{} for _ in range(out.size)]
        out = out.replace(metadata=[{**m, D3S_ADV_KEY: float(a)} for m, a in zip(meta, adv[kept].tolist())])
        return out, {
            "selection/d3s_keep_fraction": scalar(frac),
            "selection/d3s_kept_frac": scalar(kept.numel() / max(batch.size, 1)),
            "selection/d3s_kept_groups": scalar(float(torch.unique(out.group_ids).numel())),
        }


@register("advantage", "d3s_group_norm")
@dataclass(frozen=True)
class D3SAdvantage:
    """D³S's advantage: each row's GRPO advantage within its full group, as ``d3s_samples``
    computed it before dropping rows (``metadata["d3s_group_advantage"]``), on every token.

    Rows without that entry (no D³S selection ran) get ``group_norm`` over the batch they are in
    (unbiased std, the same ε). Source: as ``d3s_samples`` (arXiv 2509.22115: the sample level
    selects on Var(A) of the rollouts' advantages; UNVERIFIED that the update reuses them).
    """

    eps: float = 1e-6

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        mask = batch.completion_mask
        adv, metrics = GroupNorm(scale_by_std=True, eps=self.eps)(batch)  # [B, T] fallback
        meta = batch.metadata or [{} for _ in range(batch.size)]
        have = [D3S_ADV_KEY in m for m in meta]
        if any(have):
            pre = torch.tensor([float(m.get(D3S_ADV_KEY, 0.0)) for m in meta], device=mask.device)  # [B]
            rows = torch.tensor(have, device=mask.device)
            adv = torch.where(rows[:, None], pre[:, None].to(mask.dtype) * mask, adv)
            row_adv = (adv.abs() * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B]
            metrics["advantage/abs_mean"] = scalar(row_adv.mean())
        metrics["advantage/d3s_full_group_frac"] = scalar(sum(have) / max(batch.size, 1))
        return adv, metrics


@register("selection", "pf_filter")
@dataclass(frozen=True)
class PFFilter:
    """PF-PPO policy filtration by reward reliability (Policy Filtration in RLHF to Fine-Tune LLM
    for Code Generation, arXiv 2409.06957).

    The reward model is most reliable at the extremes of its scale, so per prompt keep only:
      "best_worst" (BW, default): the highest- and the lowest-reward response;
      "best_random" (BR): the highest and one other drawn uniformly at random;
      "best_of_n" (BoN): the highest only.
    Ties go to the first row. BR's draw uses a CPU generator seeded with seed·1_000_003 +
    group id (reruns select the same rows). Source: the paper's filtering strategies as recalled
    (PAPER-recall; BR and BW were its strongest variants). verl implements PF-PPO instead as
    batch-level resampling (``compute_pf_ppo_reweight_data``: "max_min" = BW-like weights 1/0,
    "max_random" = 0.4/0.1, "pow" = |r|²), with replacement, over the whole batch.
    """

    rule: Literal["best_worst", "best_random", "best_of_n"] = "best_worst"
    key: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in ("best_worst", "best_random", "best_of_n"):
            raise ValueError(f"pf_filter rule must be best_worst|best_random|best_of_n, got {self.rule!r}")

    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch, Metrics]:
        scores = _scores(batch, self.key, "pf_filter")
        idx, n = group_index(batch.group_ids)
        keep: list[int] = []
        for g in range(n):
            members = (idx == g).nonzero(as_tuple=True)[0].tolist()
            s = scores[members]
            best = members[int(torch.argmax(s))]
            keep.append(best)
            others = [m for m in members if m != best]
            if not others or self.rule == "best_of_n":
                continue
            if self.rule == "best_worst":
                keep.append(others[int(torch.argmin(scores[others]))])
            else:
                gid = int(batch.group_ids[members[0]])
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + gid)
                keep.append(others[int(torch.randint(len(others), (1,), generator=gen))])
        keep.sort()
        return batch.select(keep), {"selection/pf_kept_frac": scalar(len(keep) / max(batch.size, 1))}


# ------------------------------------------------------------------ HPT
# Source: TsinghuaC3I/Unify-Post-Training@ae332f5, files under hpt/verl/verl/mix_src/ (named below)
# run by exp_scripts/train.sh: unify_strategy=switch, switch_gate=0, offline_loss_type=sft,
# sft_loss_coef=1.0, entropy_coeff=0.001, grpo_use_std=False, loss_remove_token_mean=True,
# loss_remove_clip=True, n_verify=8 rollouts, 8 GPUs.


@register("selection", "hpt_switch")
@dataclass(frozen=True)
class HPTSwitch:
    """HPT's switch between RL and SFT per prompt ("Towards a Unified View of LLM Post-Training",
    arXiv 2509.04419, Hybrid Post-Training).

    For each group, the solve count k = #{rollouts with reward ≥ ``solved_reward``}. If k > γ
    (``gate``, a count) the group stays (RL); otherwise, when the items carry a demonstration, its
    rollouts are replaced by one row whose completion is the demonstration, marked
    ``metadata["hpt_sft"]``: the ``hpt_sft`` regularizer trains on it (coef × token mean of −log π
    over such rows), the RL term does not (``hpt`` gives it A = 0).
    Source: mix_trainer.py:MIXRayPPOTrainer.select_on_off_ada_balance (``on_solve_num <=
    switch_gate`` → remove the 8 rollouts, add 1 off-policy row; default gate 0) and fit (the
    off-policy row's response is the target, its ``prefix_mask`` all true). Deviation: a rollout
    counts as solved when its reward is ≥ ``solved_reward`` (the code: == 1, the same on 0/1 rewards).

    Data contract: the demonstration is read from ``batch.metadata[i]["sft_target_ids"]``, a
    list of token ids (parts cannot tokenize). ``needs_demonstrations`` makes the collect step
    put it there: the task's demonstration (its reference answer, or a ``"demonstration"``
    column) + EOS, tokenized as the SFT warm start does (``unipo.train.sft.demonstration_ids``).
    The SFT row's completion is those ids with completion_mask 1 on each. Without a
    demonstration a failing group stays RL (a no-op on tasks without reference answers).
    """

    needs_demonstrations = True  # class attribute, not a field: read by Algorithm.needs_demonstrations

    gate: int = 0
    solved_reward: float = 1.0
    key: str | None = None
    sft_reward: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.gate, bool) or not isinstance(self.gate, int) or self.gate < 0:
            raise ValueError(
                f"hpt_switch gate is a solve count (an int ≥ 0: SFT when at most that many rollouts "
                f"of a group are solved), got {self.gate!r}"
            )

    def check(self, algorithm: Algorithm) -> str | None:
        if part_name(algorithm.advantage) != "hpt":
            return "hpt_switch's SFT rows need advantage=hpt (A = 0 on them: the RL term skips them)"
        if not any(SFT_ROW_KEY in getattr(r, "row_flags", ()) for r in algorithm.regularizers):
            return "hpt_switch's SFT rows need the hpt_sft regularizer (nothing else trains on them)"
        return None

    def _sft_row(self, batch: RolloutBatch, row: int, ids: list[int]) -> RolloutBatch:
        one = batch.select([row])
        comp = torch.tensor([ids], dtype=one.completion_ids.dtype)  # [1, L]
        meta = dict(one.metadata[0]) if one.metadata else {}
        meta.update({SFT_ROW_KEY: True, "completion": None})
        return RolloutBatch(
            prompt_ids=one.prompt_ids,
            prompt_mask=one.prompt_mask,
            completion_ids=comp,
            completion_mask=torch.ones(comp.shape, dtype=torch.float32),
            group_ids=one.group_ids,
            truncated=torch.zeros(1, dtype=torch.bool),
            rewards=torch.tensor([self.sft_reward]),
            weight_version=one.weight_version,  # the step's version (a demonstration is not sampled)
            metadata=[meta],
        )

    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch, Metrics]:
        solved = _scores(batch, self.key, "hpt_switch") >= self.solved_reward  # [B]
        idx, n = group_index(batch.group_ids)
        keep: list[int] = []
        sft_rows: list[RolloutBatch] = []
        for g in range(n):
            members = (idx == g).nonzero(as_tuple=True)[0].tolist()
            demo = batch.metadata[members[0]].get(SFT_KEY) if batch.metadata else None
            if int(solved[members].sum()) <= self.gate and demo:
                sft_rows.append(self._sft_row(batch, members[0], list(demo)))
            else:
                keep.extend(members)
        out = batch.select(torch.tensor(keep, dtype=torch.long))  # may be empty: every group SFT
        if sft_rows:
            out = RolloutBatch.concat([b for b in [out, *sft_rows] if b.size])
        return out, {
            "selection/hpt_sft_groups": scalar(float(len(sft_rows))),
            "selection/hpt_rl_frac": scalar(1 - len(sft_rows) / max(n, 1)),
        }


@register("advantage", "hpt")
@dataclass(frozen=True)
class HPTAdvantage:
    """HPT's advantage: GRPO's on RL rows, A = 0 on the SFT rows of ``hpt_switch``.

    A = r − mean_G r (``scale_by_std=False``, the script's ``grpo_use_std=False``; True divides by
    std_G + ε) for rollouts; the SFT rows are left to the ``hpt_sft`` regularizer, as the code
    feeds only ``on_policy_mask`` rows to the policy loss (mix_actor.py, offline_loss_type=sft).
    """

    scale_by_std: bool = False
    eps: float = 1e-6

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        sft = batch.flags(SFT_ROW_KEY)  # [B]
        if sft.any():
            adv = adv.masked_fill(sft[:, None].to(adv.device), 0.0)
        metrics["advantage/hpt_sft_frac"] = scalar(sft.float().mean())
        return adv, metrics


@register("regularizer", "hpt_sft")
@dataclass(frozen=True)
class HPTSFT:
    """HPT's SFT term over the demonstration rows: coef · Σ_{demo tokens} −log π_θ / N_demo.

    N_demo counts the demonstration tokens of the whole accumulated minibatch
    (``LossInputs.flag_tokens["hpt_sft"]``), so the term is ``coef`` × their token mean however the
    minibatch is cut into micro-batches, and its weight does not shrink with the share of
    demonstration tokens in the batch. 0 when there are none (the code skips its NaN).
    Source: mix_actor.py:MIXDataParallelPPOActor.update_policy (offline_loss_type == "sft":
    ``sft_loss * sft_loss_coef + pg_loss``) and mix_core_alg.py:compute_sft_pure_loss
    (``masked_mean(−log_prob, eos_mask)`` over ``prefix_mask.any(-1)`` rows); coef 1.0 (train.sh;
    0.3 for Qwen2.5-Math-1.5B). Deviation: the code takes that mean per micro-batch and adds the
    micro-batch terms (gradient_accumulation = 1 with dynamic batch sizes), so its weight grows with
    the number of micro-batches holding demonstrations; here one mean over the minibatch.
    """

    coef: float = 1.0

    row_flags = (SFT_ROW_KEY,)
    aggregated = True  # a 0-dim term with its own denominator, added after the aggregate

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        rows, n_tokens, _ = flagged(x, SFT_ROW_KEY)  # [B]
        demo = x.mask * rows[:, None]  # [B, T] 1 on demonstration tokens
        nll = torch.where(demo.bool(), -x.logprobs, torch.zeros_like(x.logprobs))  # [B, T]
        return self.coef * nll.sum() / max(n_tokens, 1.0), {
            "regularizer/hpt_sft_nll": scalar(masked_mean(-x.logprobs.detach(), demo)),
            "regularizer/hpt_sft_tokens": scalar(n_tokens),
        }
