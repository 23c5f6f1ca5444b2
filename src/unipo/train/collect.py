"""The rollout phase: prompts → G completions each → rewards → selections (with refill)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from unipo.batch import EXTRA_ROW_KEY, SFT_KEY, SFT_TRUNCATED_KEY, RolloutBatch
from unipo.parts.base import ExtraRollout
from unipo.rollout.base import Generation, RolloutEngine, SamplingParams
from unipo.train.dist import Dist
from unipo.train.phases import PhaseMeter

log = logging.getLogger("unipo")

RolloutFn = Callable[[RolloutEngine, list[dict[str, Any]], list[list[int]], int, SamplingParams], Generation]
"""What produces a round's rows instead of ``engine.generate(prompt_ids, n, sampling)``:
``rollout(engine, examples, prompt_ids, n, sampling)`` (an environment's multi-turn rollout,
``unipo.envs.EnvRollout``). Its ``Generation`` may carry, besides the usual fields, ``context_mask`` and
``turn_index`` [B, T] (onto the batch), ``columns`` (per-row reward columns), ``row_metadata`` (per-row
metadata) and ``metrics`` (logged with the step's)."""


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


def score_result(
    reward_set: Any,
    examples: list[dict[str, Any]],
    prompts: list[str],
    completions: list[str],
    extra_columns: dict[str, list[Any]],
) -> Any:
    """Run the reward set with the examples' columns; returns its ``RewardResult``."""
    columns: dict[str, list[Any]] = {}
    keys = {k for ex in examples for k in ex if k != "question"}
    for k in keys:
        columns[k] = [ex.get(k) for ex in examples]
    columns.update(extra_columns)
    return reward_set(prompts, completions, **columns)


def score(
    reward_set: Any,
    examples: list[dict[str, Any]],
    prompts: list[str],
    completions: list[str],
    extra_columns: dict[str, list[Any]],
) -> tuple[list[float | None], dict[str, float], str | None]:
    """Run the reward set; returns (totals with None for excluded items, metrics, first traceback)."""
    result = score_result(reward_set, examples, prompts, completions, extra_columns)
    return result.total, result.metrics(), result.first_traceback


def _combine_reward_metrics(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Reward metrics of the ranks' shares as one batch's: ``*_mean`` weighted by rows (NaN shares
    left out), every other key (failure counts) summed."""
    out: dict[str, float] = {}
    for key in {k for m, _ in parts for k in m}:
        if key.endswith("_mean"):
            pairs = [(m[key], n) for m, n in parts if key in m and n and not math.isnan(m[key])]
            total = sum(n for _, n in pairs)
            out[key] = sum(v * n for v, n in pairs) / total if total else math.nan
        else:
            out[key] = sum(m.get(key, 0.0) for m, _ in parts)
    return out


def row_components(
    reward_set: Any, result: Any
) -> list[tuple[dict[str, Any] | None, dict[str, float] | None]]:
    """Per row (its reward components {name: value}, their weights {name: weight}) when the reward set
    has several terms (GDPO normalizes each apart), else (None, None)."""
    comps = getattr(result, "components", None) or {}
    if len(comps) < 2:
        return [(None, None)] * len(result.total)
    weights = {name: float(w) for name, _, w in getattr(reward_set, "rewards", ())} or None
    return [({k: v[i] for k, v in comps.items()}, weights) for i in range(len(result.total))]


def _round(
    engine: RolloutEngine,
    reward_set: Any,
    examples: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    prompt_texts: list[str],
    group_size: int,
    sampling: SamplingParams,
    first_group_id: int,
    demonstrations: Callable[[list[dict[str, Any]]], list[list[int] | None]] | None,
    meter: PhaseMeter,
    dist: Dist | None = None,
    flag_columns: tuple[str, ...] = (),
    rollout: RolloutFn | None = None,
) -> tuple[RolloutBatch, dict[str, float], str | None, list[Any]]:
    """``_local_round`` on this rank's share of the prompts (whole groups), every rank's rows then
    gathered in prompt order, so each rank returns the whole round (one process: the round)."""
    if dist is None or not dist.enabled:
        return _local_round(engine, reward_set, examples, prompt_ids, prompt_texts, group_size, sampling,
                            first_group_id, demonstrations, meter, flag_columns, rollout)  # fmt: skip
    share = dist.share(len(examples))
    local = None
    if share.stop > share.start:
        local = _local_round(
            engine, reward_set, examples[share], prompt_ids[share], prompt_texts[share], group_size, sampling,
            first_group_id + share.start, demonstrations, meter, flag_columns, rollout,
        )  # fmt: skip
    parts = dist.all_gather_object(None if local is None else (local[0], local[1], local[2]))
    parts = [p for p in parts if p is not None]
    batch = RolloutBatch.concat([p[0] for p in parts if p[0].size] or [parts[0][0]])
    metrics = _combine_reward_metrics([(p[1], p[0].size) for p in parts])
    traceback = next((p[2] for p in parts if p[2]), None)
    demos = demonstrations(examples) if demonstrations is not None else [None] * len(examples)
    return batch, metrics, traceback, demos


def _local_round(
    engine: RolloutEngine,
    reward_set: Any,
    examples: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    prompt_texts: list[str],
    group_size: int,
    sampling: SamplingParams,
    first_group_id: int,
    demonstrations: Callable[[list[dict[str, Any]]], list[list[int] | None]] | None,
    meter: PhaseMeter,
    flag_columns: tuple[str, ...] = (),
    rollout: RolloutFn | None = None,
) -> tuple[RolloutBatch, dict[str, float], str | None, list[Any]]:
    """Generate and score one round in this process: (batch, reward metrics, traceback, demonstrations)."""
    with meter("generate"):
        if rollout is None:
            gen = engine.generate(prompt_ids, group_size, sampling)
        else:
            gen = rollout(engine, examples, prompt_ids, group_size, sampling)
    with meter("reward"):
        # the prompt of each row: prompt·G + j, or the rollout's own map (SUPO's segments: several rows each)
        owner = getattr(gen, "row_prompt", None) or [
            g for g in range(len(examples)) for _ in range(group_size)
        ]
        rows_ex = [examples[o] for o in owner]
        rows_prompt = [prompt_texts[o] for o in owner]
        lengths = gen.completion_mask.sum(1).long().tolist()
        group_ids = torch.tensor(owner, dtype=torch.long) + first_group_id
        extra = {
            "completion_length": lengths,
            "truncated": gen.truncated.tolist(),
            "max_new_tokens": [sampling.max_new_tokens] * len(lengths),
            "group_id": group_ids.tolist(),  # rows of one prompt share it: group rewards (TTRL, EMPO)
            **getattr(gen, "columns", {}),  # a multi-turn rollout's env_reward, tool_calls, turns, ...
        }
        result = score_result(reward_set, rows_ex, rows_prompt, gen.completions, extra)
        totals, rmetrics, tb = result.total, result.metrics(), result.first_traceback
        rmetrics.update(getattr(gen, "metrics", {}))
        comps = row_components(reward_set, result)
    rewards = torch.tensor([math.nan if r is None else float(r) for r in totals], dtype=torch.float32)
    demos = demonstrations(examples) if demonstrations is not None else [None] * len(examples)
    rows_demo = [demos[o] for o in owner]
    row_meta = getattr(gen, "row_metadata", None) or [{}] * len(rows_ex)
    context_mask, turn_index = getattr(gen, "context_mask", None), getattr(gen, "turn_index", None)
    batch = RolloutBatch(
        prompt_ids=gen.prompt_ids.cpu(),
        prompt_mask=gen.prompt_mask.cpu(),
        completion_ids=gen.completion_ids.cpu(),
        completion_mask=gen.completion_mask.cpu(),
        group_ids=group_ids,
        truncated=gen.truncated.cpu(),
        rewards=rewards,
        context_mask=context_mask.cpu() if context_mask is not None else None,
        turn_index=turn_index.cpu() if turn_index is not None else None,
        rollout_logprobs=gen.logprobs.cpu() if gen.logprobs is not None else None,
        weight_version=gen.weight_version.cpu() if gen.weight_version is not None else None,
        metadata=[
            {"prompt": p, "completion": c, "answer": ex.get("answer"), "reward_components": rc}
            | ({"reward_weights": rw} if rw is not None else {})
            | ({SFT_KEY: list(d)} if d is not None else {})
            | ({SFT_TRUNCATED_KEY: True} if getattr(d, "truncated", False) else {})
            | {k: ex[k] for k in flag_columns if k in ex}  # example columns parts read as row flags
            | m  # a multi-turn rollout's per-row turn_rewards, turn_ok, tool_calls, ...
            for p, c, ex, d, (rc, rw), m in zip(
                rows_prompt, gen.completions, rows_ex, rows_demo, comps, row_meta
            )
        ],
    )
    return batch, rmetrics, tb, demos


def collect(
    *,
    engine: RolloutEngine,
    reward_set: Any,
    selections: tuple[Any, ...],
    examples: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    prompt_texts: list[str],
    group_size: int,
    sampling: SamplingParams,
    max_refill_rounds: int,
    more: Any,  # callable k -> (examples, prompt_ids, prompt_texts) for refills
    next_group_id: int = 0,
    demonstrations: Callable[[list[dict[str, Any]]], list[list[int] | None]] | None = None,
    meter: PhaseMeter | None = None,
    extra: ExtraRollout | None = None,
    dist: Dist | None = None,
    flag_columns: tuple[str, ...] = (),
    rollout: RolloutFn | None = None,
) -> tuple[RolloutBatch, dict[str, float], dict[str, float], str | None]:
    """Generate, score and select until enough groups survive. Returns (batch, metrics, times, traceback).

    With several reward terms every row carries ``metadata["reward_components"]`` ({name: value}) and
    ``metadata["reward_weights"]`` ({name: weight}) (GDPO's per-term normalization); else None / absent.

    Generation and scoring run as the ``generate`` and ``reward`` phases of ``meter`` (the
    trainer's, which also measures their peak memory; a CPU meter of its own when None);
    ``times`` holds their seconds, summed over refill rounds.

    ``demonstrations`` (given when a part ``needs_demonstrations``, e.g. HPT's switch) maps the
    examples to their SFT target ids (``unipo.train.sft.demonstration_ids``); every row of an
    example that has one carries them in ``metadata["sft_target_ids"]`` before the selections run,
    and ``metadata["sft_target_truncated"] = True`` when they were cut at ``max_new_tokens``; the
    examples drawn with a cut one (refill rounds included) are counted in ``hpt/demonstrations_truncated``.

    ``extra`` (a part's ``extra_rollout`` request, AEPO's, ReMax's) is drawn once the main batch is
    selected and refilled: ``extra.samples`` (default G) completions for each of the first
    ⌊fraction·P⌋ (at least one) of this step's own prompts (refills excluded), at
    ``extra.temperature`` (0: greedy decoding); they are scored, rows with no reward
    dropped, marked ``metadata["extra_rollout"] = True`` with group ids after the main ones, and
    ``extra.merge(main, extra_rows)`` (else an append) gives the batch returned. They never go through
    the selections nor count toward the target groups (``rollout/kept_groups`` is the main batch's).

    ``flag_columns`` (the algorithm's ``row_flags``) are example columns copied into each row's
    metadata, so that a part reads them as row flags (AdaCoT's ``adacot_slm``).

    With several processes (``dist``) every rank is given the same prompts; each generates and
    scores its share of them (whole groups) and the rows are gathered, so the selections, the
    refill decision and everything after run on the whole batch, identically on every rank.

    ``rollout`` (``RolloutFn``; an environment's multi-turn rollout) replaces ``engine.generate`` in
    every round, extra rollout included; None samples one completion per row.
    """
    target_groups = len(examples)
    own = (examples, prompt_ids, prompt_texts)  # this step's prompts: the extra rollout draws on them
    kept: list[RolloutBatch] = []
    metrics: dict[str, float] = {}
    meter = meter if meter is not None else PhaseMeter("cpu")
    start = {k: meter.times.get(k, 0.0) for k in ("generate", "reward")}
    traceback = None
    n_kept_groups = 0
    refills_used = 0
    rounds = 0
    while True:
        batch, rmetrics, tb, demos = _round(
            engine, reward_set, examples, prompt_ids, prompt_texts, group_size, sampling,
            next_group_id, demonstrations, meter, dist, flag_columns, rollout,
        )  # fmt: skip
        next_group_id += len(examples)
        rewards = batch.rewards
        traceback = traceback or tb
        if rounds == 0:
            metrics.update(rmetrics)
        else:  # refill rounds only add to the failure counts
            _add_failures(metrics, rmetrics)
        if demonstrations is not None:  # examples whose demonstration was cut at max_new_tokens
            cut = float(sum(bool(getattr(d, "truncated", False)) for d in demos))
            metrics["hpt/demonstrations_truncated"] = metrics.get("hpt/demonstrations_truncated", 0.0) + cut
        if rounds == 0:
            metrics["rollout/completions"] = float(batch.size)
            if demonstrations is not None:
                metrics["rollout/demonstration_frac"] = sum(d is not None for d in demos) / max(len(demos), 1)
            metrics["rollout/excluded"] = float(torch.isnan(rewards).sum())
            metrics["rollout/reward_mean_all"] = float(torch.nanmean(rewards)) if batch.size else 0.0
        finite = ~torch.isnan(rewards)
        batch = batch.select(finite)  # excluded items (reward None / failed) leave the batch here
        for sel in selections:
            batch, smetrics = sel(batch)
            metrics.update({k: float(v) for k, v in smetrics.items()})
        kept.append(batch)
        n_kept_groups += int(torch.unique(batch.group_ids).numel()) if batch.size else 0
        rounds += 1
        wants_refill = any(getattr(s, "refill", False) for s in selections)
        if not wants_refill or n_kept_groups >= target_groups or refills_used >= max_refill_rounds:
            break
        refills_used += 1
        examples, prompt_ids, prompt_texts = more(target_groups - n_kept_groups)
    out = RolloutBatch.concat([b for b in kept if b.size] or kept[:1])
    if wants_refill:
        # keep exactly the target number of groups (verl truncates to train_batch_size as well)
        groups = torch.unique_consecutive(out.group_ids)[:target_groups]
        out = out.select(torch.isin(out.group_ids, groups))
    metrics["rollout/refill_rounds"] = float(refills_used)
    metrics["rollout/kept_groups"] = float(torch.unique(out.group_ids).numel()) if out.size else 0.0
    if extra is not None:
        n_extra = max(1, int(len(own[0]) * extra.fraction))  # the code: the first len // 4 prompts
        n_samples = extra.samples or group_size
        at_t = sampling.model_copy(
            update={"greedy": True} if extra.temperature == 0 else {"temperature": extra.temperature}
        )
        rows, rmetrics, tb, _ = _round(
            engine, reward_set, own[0][:n_extra], own[1][:n_extra], own[2][:n_extra], n_samples, at_t,
            next_group_id, demonstrations, meter, dist, flag_columns, rollout,
        )  # fmt: skip
        traceback = traceback or tb
        _add_failures(metrics, rmetrics)
        rows = rows.select(~torch.isnan(rows.rewards))
        for m in rows.metadata:
            m[EXTRA_ROW_KEY] = True
        metrics["rollout/extra_completions"] = float(n_extra * n_samples)
        metrics["rollout/extra_temperature"] = extra.temperature
        metrics["rollout/extra_reward_mean"] = float(rows.rewards.mean()) if rows.size else math.nan
        if extra.merge is not None:
            out, mmetrics = extra.merge(out, rows)
            metrics.update({k: float(v) for k, v in mmetrics.items()})
        elif rows.size:
            out = RolloutBatch.concat([b for b in (out, rows) if b.size])
    times = {f"time/{k}": meter.times.get(k, 0.0) - start[k] for k in start}
    return out, metrics, times, traceback


def _add_failures(metrics: dict[str, float], rmetrics: dict[str, float]) -> None:
    """Add a later round's reward failures (refills, the extra rollout) to the step's counts."""
    for k in ("rewards/errors", "rewards/excluded"):
        metrics[k] = metrics.get(k, 0.0) + rmetrics.get(k, 0.0)
