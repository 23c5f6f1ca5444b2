"""The rollout phase: prompts → G completions each → rewards → selections (with refill)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from unipo.batch import EXAMPLE_KEY, EXTRA_ROW_KEY, SFT_KEY, SFT_TRUNCATED_KEY, RolloutBatch
from unipo.parts.base import ExtraRollout
from unipo.rollout.base import Generation, RolloutEngine, SamplingParams
from unipo.train.dist import Dist
from unipo.train.phases import PhaseMeter
from unipo.train.prompts import Prompts, PromptSampler

log = logging.getLogger("unipo")

__all__ = ["PromptSampler", "Prompts", "collect", "score", "score_result"]

RolloutFn = Callable[[RolloutEngine, list[dict[str, Any]], list[list[int]], int, SamplingParams], Generation]
"""What produces a round's rows instead of ``engine.generate(prompt_ids, n, sampling)``:
``rollout(engine, examples, prompt_ids, n, sampling)`` (an environment's multi-turn rollout,
``unipo.envs.EnvRollout``). Its ``Generation`` may carry, besides the usual fields, ``context_mask`` and
``turn_index`` [B, T] (onto the batch), ``columns`` (per-row reward columns), ``row_metadata`` (per-row
metadata) and ``metrics`` (logged with the step's)."""


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


def training_rollout(env: RolloutFn | None, algorithm: Any) -> RolloutFn | None:
    """What samples the training groups: the environment's episodes (``env``), or the algorithm's
    rollout part (``part.generate(engine, prompt_ids, G, sampling)``, ETMR's trees), or None
    (``engine.generate``). A rollout part cannot play environment episodes: both is a ``ValueError``."""
    part = getattr(algorithm, "rollout", None)
    if part is None:
        return env
    if env is not None:
        raise ValueError(
            f"algorithm {algorithm.name!r} samples its groups with the {type(part).__name__} rollout part, "
            "which cannot run multi-turn environment episodes (env.name is set); use a preset without a "
            "rollout part with environments"
        )
    return lambda engine, _examples, ids, n, sampling: part.generate(engine, ids, n, sampling)


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
    prompts: Prompts,
    group_size: int,
    sampling: SamplingParams,
    first_group_id: int,
    demonstrations: Callable[[list[dict[str, Any]]], list[list[int] | None]] | None,
    meter: PhaseMeter,
    dist: Dist | None = None,
    flag_columns: tuple[str, ...] = (),
    rollout: RolloutFn | None = None,
) -> tuple[RolloutBatch, dict[str, float], str | None, list[Any]]:
    """``_local_round`` on this rank's share of the prompts (whole groups, whatever their sizes), every
    rank's rows then gathered in prompt order, so each rank returns the whole round (one process: the
    round)."""
    if dist is None or not dist.enabled:
        return _local_round(engine, reward_set, prompts, group_size, sampling, first_group_id, demonstrations,
                            meter, flag_columns, rollout)  # fmt: skip
    share = dist.share(len(prompts))
    local = None
    if share.stop > share.start:
        local = _local_round(
            engine, reward_set, prompts.take(share), group_size, sampling, first_group_id + share.start,
            demonstrations, meter, flag_columns, rollout,
        )  # fmt: skip
    parts = dist.all_gather_object(None if local is None else (local[0], local[1], local[2]))
    parts = [p for p in parts if p is not None]
    batch = RolloutBatch.concat([p[0] for p in parts if p[0].size] or [parts[0][0]])
    metrics = _combine_reward_metrics([(p[1], p[0].size) for p in parts])
    traceback = next((p[2] for p in parts if p[2]), None)
    demos = demonstrations(prompts.examples) if demonstrations is not None else [None] * len(prompts)
    return batch, metrics, traceback, demos


def _local_round(
    engine: RolloutEngine,
    reward_set: Any,
    prompts: Prompts,
    group_size: int,
    sampling: SamplingParams,
    first_group_id: int,
    demonstrations: Callable[[list[dict[str, Any]]], list[list[int] | None]] | None,
    meter: PhaseMeter,
    flag_columns: tuple[str, ...] = (),
    rollout: RolloutFn | None = None,
) -> tuple[RolloutBatch, dict[str, float], str | None, list[Any]]:
    """Generate and score one round in this process: (batch, reward metrics, traceback, demonstrations).

    Prompts with different group sizes (a scheduler's allocation) are generated in one call per size
    and their rows put back in prompt order; prompt i's rows carry group id ``first_group_id + i``."""
    sizes = prompts.sizes(group_size)
    gids = [first_group_id + i for i in range(len(prompts))]
    if len(set(sizes)) <= 1:
        return _generate_and_score(engine, reward_set, prompts, sizes[0] if sizes else group_size, sampling,
                                   gids, demonstrations, meter, flag_columns, rollout)  # fmt: skip
    parts = []
    for size in dict.fromkeys(sizes):  # distinct sizes in order of first appearance
        pick = [i for i, s in enumerate(sizes) if s == size]
        parts.append(_generate_and_score(
            engine, reward_set, prompts.take(pick), size, sampling, [gids[i] for i in pick], demonstrations,
            meter, flag_columns, rollout,
        ))  # fmt: skip
    batch = RolloutBatch.concat([p[0] for p in parts])
    batch = batch.select(torch.argsort(batch.group_ids, stable=True))  # prompt order, rows in sample order
    metrics = _combine_reward_metrics([(p[1], p[0].size) for p in parts])
    demos = demonstrations(prompts.examples) if demonstrations is not None else [None] * len(prompts)
    return batch, metrics, next((p[2] for p in parts if p[2]), None), demos


def _generate_and_score(
    engine: RolloutEngine,
    reward_set: Any,
    prompts: Prompts,
    group_size: int,
    sampling: SamplingParams,
    group_ids_of: list[int],
    demonstrations: Callable[[list[dict[str, Any]]], list[list[int] | None]] | None,
    meter: PhaseMeter,
    flag_columns: tuple[str, ...] = (),
    rollout: RolloutFn | None = None,
) -> tuple[RolloutBatch, dict[str, float], str | None, list[Any]]:
    """``group_size`` completions of each prompt (or the rollout's rows), scored; prompt i's rows get
    group id ``group_ids_of[i]``."""
    examples, prompt_texts = prompts.examples, prompts.texts
    with meter("generate"):
        if rollout is None:
            gen = engine.generate(prompts.ids, group_size, sampling)
        else:  # an environment's episodes, a rollout part's trees (ETMR)
            gen = rollout(engine, examples, prompts.ids, group_size, sampling)
    with meter("reward"):
        # the prompt of each row: prompt·G + j, or the rollout's own map (SUPO's segments: several rows each)
        owner = getattr(gen, "row_prompt", None) or [
            g for g in range(len(examples)) for _ in range(group_size)
        ]
        rows_ex = [examples[o] for o in owner]
        rows_prompt = [prompt_texts[o] for o in owner]
        lengths = gen.completion_mask.sum(1).long().tolist()
        group_ids = torch.tensor([group_ids_of[o] for o in owner], dtype=torch.long)
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
    shared = getattr(gen, "shared_prefix", None)  # tokens tree branches took over instead of sampling
    if shared is not None:
        rmetrics["rollout/shared_prefix_frac"] = float(shared.sum()) / max(sum(lengths), 1)
    row_meta = getattr(gen, "row_metadata", None) or [{} for _ in lengths]
    rewards = torch.tensor([math.nan if r is None else float(r) for r in totals], dtype=torch.float32)
    demos = demonstrations(examples) if demonstrations is not None else [None] * len(examples)
    rows_demo = [demos[o] for o in owner]
    rows_eid = [prompts.example_ids[o] for o in owner] if prompts.example_ids else None
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
            | ({EXAMPLE_KEY: rows_eid[i]} if rows_eid is not None else {})  # the scheduler's prompt index
            | m  # the rollout's per-row metadata: ETMR's tree and fork; an episode's turn_rewards, tool_calls
            for i, (p, c, ex, d, (rc, rw), m) in enumerate(
                zip(rows_prompt, gen.completions, rows_ex, rows_demo, comps, row_meta)
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
    more: Any,  # callable k -> Prompts (or (examples, prompt_ids, prompt_texts)) for refills
    next_group_id: int = 0,
    demonstrations: Callable[[list[dict[str, Any]]], list[list[int] | None]] | None = None,
    meter: PhaseMeter | None = None,
    extra: ExtraRollout | None = None,
    dist: Dist | None = None,
    flag_columns: tuple[str, ...] = (),
    rollout: RolloutFn | None = None,
    group_sizes: list[int] | None = None,
    example_ids: list[int] | None = None,
    observe: Callable[[RolloutBatch], Any] | None = None,
) -> tuple[RolloutBatch, dict[str, float], dict[str, float], str | None]:
    """Generate, score and select until enough groups survive. Returns (batch, metrics, times, traceback).

    A prompt scheduler's plan gives each prompt its own number of samples (``group_sizes``, default
    ``group_size`` each; the prompts of one size are generated together, rows stay in prompt order) and
    its index into the training examples (``example_ids``: every row carries it in
    ``metadata["example_id"]``); ``observe`` (the scheduler's) sees every scored round, refills
    included, with the excluded items dropped and *before* the selections, so a selection that drops
    groups (dynamic sampling) does not hide their outcome from it.

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

    ``rollout`` (``RolloutFn``: an environment's multi-turn episodes, or a rollout part's trees, ETMR)
    replaces ``engine.generate`` in every round, extra rollout included; None samples one completion
    per row. Its rows' ``row_metadata`` join their metadata, and ``rollout/shared_prefix_frac`` counts
    the completion tokens tree branches share with the row they forked from.
    """
    prompts = Prompts(examples, prompt_ids, prompt_texts, group_sizes, example_ids)
    target_groups = len(prompts)
    own = prompts  # this step's prompts: the extra rollout draws on them
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
            engine, reward_set, prompts, group_size, sampling, next_group_id, demonstrations, meter, dist,
            flag_columns, rollout,
        )  # fmt: skip
        next_group_id += len(prompts)
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
        if observe is not None:
            observe(batch)
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
        got = more(target_groups - n_kept_groups)
        prompts = got if isinstance(got, Prompts) else Prompts(*got)
    out = RolloutBatch.concat([b for b in kept if b.size] or kept[:1])
    if wants_refill:
        # keep exactly the target number of groups (verl truncates to train_batch_size as well)
        groups = torch.unique_consecutive(out.group_ids)[:target_groups]
        out = out.select(torch.isin(out.group_ids, groups))
    metrics["rollout/refill_rounds"] = float(refills_used)
    metrics["rollout/kept_groups"] = float(torch.unique(out.group_ids).numel()) if out.size else 0.0
    if extra is not None:
        n_extra = max(1, int(len(own) * extra.fraction))  # the code: the first len // 4 prompts
        n_samples = extra.samples or group_size
        at_t = sampling.model_copy(
            update={"greedy": True} if extra.temperature == 0 else {"temperature": extra.temperature}
        )
        firsts = dataclasses.replace(own.take(slice(0, n_extra)), group_sizes=None)  # n_samples each
        rows, rmetrics, tb, _ = _round(
            engine, reward_set, firsts, n_samples, at_t, next_group_id, demonstrations, meter, dist,
            flag_columns, rollout,
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
