"""On-policy preference data: sample G completions per prompt, score them, build pairs or ranked lists.

With a prompt set and a verifier alone (OPA-DPO-style on-policy data), ``sample_preferences``
samples from the current policy (and, for XPO, from the reference), scores every completion with a
``RewardSet``, and turns each prompt's group into preference examples:

    best_worst   one pair: the highest-scored vs the lowest-scored completion (first index on ties)
    all_pairs    every (i, j) with s_i > s_j
    list         one ranked list of the whole group, best first (listwise losses, Curry-DPO)
    policy_vs_reference   the k-th policy sample vs the k-th reference sample (XPO)

Ties give no pair: a group whose scores all tie yields nothing (counted in ``pairs/tied_prompts``).
``CurriculumOrdering`` (Curry-DPO) orders ranked pairs from easy to hard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from unipo.preference.batch import PreferenceExample
from unipo.rollout.base import RolloutEngine, SamplingParams
from unipo.train.collect import score


def best_worst(scores: Sequence[float]) -> list[tuple[int, int]]:
    """[(index of the max, index of the min)], first occurrence of each; [] when all scores tie."""
    hi = max(range(len(scores)), key=lambda i: (scores[i], -i))
    lo = min(range(len(scores)), key=lambda i: (scores[i], i))
    return [(hi, lo)] if scores[hi] > scores[lo] else []


def all_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    """Every (i, j) with s_i > s_j, in index order; tied scores give no pair."""
    n = len(scores)
    return [(i, j) for i in range(n) for j in range(n) if scores[i] > scores[j]]


PAIRINGS: dict[str, Callable[[Sequence[float]], list[tuple[int, int]]]] = {
    "best_worst": best_worst,
    "all_pairs": all_pairs,
}


def ranked(scores: Sequence[float]) -> list[int] | None:
    """Indices sorted by score, best first (stable on ties); None when all scores tie."""
    if len(scores) < 2 or max(scores) == min(scores):
        return None
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _p_hard(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _p_bt(a: float, b: float) -> float:
    return 1.0 / (1.0 + math.exp(-(a - b)))


WIN_PROB: dict[str, Callable[[float, float], float]] = {"hard": _p_hard, "bradley_terry": _p_bt}


def win_rates(scores: Sequence[float], kind: str = "hard") -> list[float]:
    """SPPO's P̂(y_i ≻ π) = (1/K)·Σ_j P(y_i ≻ y_j), j = i included (it contributes ½).

    ``hard``: P = 1 / ½ / 0 by comparing scores (a verifier's 0/1 rewards); ``bradley_terry``:
    P = σ(s_i − s_j) (scores are reward-model logits, as PairRM's in the SPPO code).
    """
    p = WIN_PROB[kind]
    return [sum(p(a, b) for b in scores) / len(scores) for a in scores]


def group_examples(
    prompt_ids: list[int],
    responses: list[list[int]],
    scores: list[float],
    *,
    strategy: str,
    win_prob: str = "hard",
    from_reference: list[bool] | None = None,
    metadata: list[dict[str, Any]] | None = None,
) -> list[PreferenceExample]:
    """The preference examples of one prompt's scored group (see the module docstring)."""
    rates = win_rates(scores, win_prob)
    meta = metadata or [{} for _ in responses]

    def make(idx: list[int]) -> PreferenceExample:
        return PreferenceExample(
            prompt_ids=prompt_ids,
            responses=[responses[i] for i in idx],
            scores=[scores[i] for i in idx],
            win_prob=[rates[i] for i in idx],
            from_reference=[from_reference[i] for i in idx] if from_reference is not None else None,
            metadata={"prompt": meta[0].get("prompt"), "responses": [meta[i].get("completion") for i in idx]},
        )

    if strategy == "list":
        order = ranked(scores)
        return [make(order)] if order is not None else []
    if strategy == "policy_vs_reference":
        if from_reference is None:
            raise ValueError("strategy policy_vs_reference needs samples from the reference model")
        pol = [i for i, r in enumerate(from_reference) if not r]
        ref = [i for i, r in enumerate(from_reference) if r]
        pairs = [(a, b) if scores[a] >= scores[b] else (b, a) for a, b in zip(pol, ref)]
        return [make([a, b]) for a, b in pairs if scores[a] > scores[b]]
    if strategy not in PAIRINGS:
        raise ValueError(f"unknown pair strategy {strategy!r}; allowed: list, policy_vs_reference, "
                         f"{', '.join(PAIRINGS)}")  # fmt: skip
    return [make([i, j]) for i, j in PAIRINGS[strategy](scores)]


def subset(example: PreferenceExample, idx: list[int]) -> PreferenceExample:
    """The example restricted to responses ``idx`` (in that order), with every per-response field."""
    fields: dict[str, Any] = {"responses": [example.responses[k] for k in idx],
                              "scores": [example.scores[k] for k in idx]}  # fmt: skip
    for name in ("win_prob", "from_reference", "ref_logprobs", "anchor_logprobs", "ref_weights", "variants"):
        v = getattr(example, name)
        fields[name] = [v[k] for k in idx] if v is not None else None
    return example.replace(**fields)


def expand_list(example: PreferenceExample, strategy: str) -> list[PreferenceExample]:
    """A ranked list as pairs (``best_worst`` / ``all_pairs``); tied responses give no pair."""
    return [subset(example, [i, j]) for i, j in PAIRINGS[strategy](example.scores)]


def sample_preferences(
    *,
    engine: RolloutEngine,
    reward_set: Any,
    examples: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    prompt_texts: list[str],
    group_size: int,
    sampling: SamplingParams,
    strategy: str,
    win_prob: str = "hard",
    reference_engine: RolloutEngine | None = None,
    builder: Callable[..., tuple[list[PreferenceExample], dict[str, float]]] | None = None,
) -> tuple[list[PreferenceExample], dict[str, float]]:
    """Sample, score and pair: G completions per prompt from ``engine`` (plus G from
    ``reference_engine`` when given), scored by ``reward_set``; items whose reward is None are left out.

    ``builder(examples, prompt_ids, prompt_texts, groups)`` replaces ``strategy`` when given (OPA-DPO's
    corrected pairs, ``opa.OPAPairing.build``): ``groups[i]`` holds prompt i's scored samples as
    (token ids, score, from_reference, {"prompt", "completion"}); it returns (examples, metrics)."""
    t0 = time.perf_counter()
    sources = [(engine, False)] + ([(reference_engine, True)] if reference_engine is not None else [])
    gens = [(eng.generate(prompt_ids, group_size, sampling), is_ref) for eng, is_ref in sources]
    t_gen = time.perf_counter() - t0
    out: list[PreferenceExample] = []
    metrics: dict[str, float] = {}
    per_prompt: list[list[tuple[list[int], float, bool, dict[str, Any]]]] = [[] for _ in examples]
    policy_rewards: list[float] = []
    t0 = time.perf_counter()
    for gen, is_ref in gens:
        rows_ex = [ex for ex in examples for _ in range(group_size)]
        rows_prompt = [p for p in prompt_texts for _ in range(group_size)]
        lengths = gen.completion_mask.sum(1).long().tolist()
        extra = {"completion_length": lengths, "truncated": gen.truncated.tolist(),
                 "max_new_tokens": [sampling.max_new_tokens] * len(lengths)}  # fmt: skip
        totals, rmetrics, _ = score(reward_set, rows_ex, rows_prompt, gen.completions, extra)
        if not is_ref:
            metrics.update(rmetrics)
        for row, total in enumerate(totals):
            if total is None:
                continue
            ids = gen.completion_ids[row][gen.completion_mask[row].bool()].tolist()
            meta = {"prompt": rows_prompt[row], "completion": gen.completions[row]}
            per_prompt[row // group_size].append((ids, float(total), is_ref, meta))
            if not is_ref:
                policy_rewards.append(float(total))
    tied = 0
    gaps: list[float] = []
    if builder is not None:
        out, bmetrics = builder(examples, prompt_ids, prompt_texts, per_prompt)
        metrics.update(bmetrics)
        gaps = [ex.scores[0] - ex.scores[-1] for ex in out]
        per_prompt = []  # the builder made the pairs
    for p_ids, group in zip(prompt_ids, per_prompt):
        if len(group) < 2:
            tied += 1
            continue
        made = group_examples(
            p_ids, [g[0] for g in group], [g[1] for g in group], strategy=strategy, win_prob=win_prob,
            from_reference=[g[2] for g in group] if reference_engine is not None else None,
            metadata=[g[3] for g in group],
        )  # fmt: skip
        tied += not made
        gaps += [ex.scores[0] - ex.scores[-1] for ex in made]
        out += made
    metrics.update({
        "reward/mean": sum(policy_rewards) / max(1, len(policy_rewards)),
        "pairs/prompts": float(len(examples)),
        "pairs/examples": float(len(out)),
        "pairs/tied_prompts": float(tied),
        "pairs/score_gap": sum(gaps) / max(1, len(gaps)),
        "time/generate": t_gen,
        "time/reward": time.perf_counter() - t0,
    })  # fmt: skip
    return out, metrics


@dataclass(frozen=True)
class CurriculumOrdering:
    """Curry-DPO (Pattnaik et al. 2024, arXiv:2403.07230): ranked pairs in stages, easy to hard.

    Each ranked list R_1 > … > R_K gives the pairs (R_1, R_K), (R_1, R_{K−1}), …, (R_1, R_2); stage j
    holds the (R_1, R_{K−j}) pairs, so the largest rating gap comes first (stages past
    ``max_stages`` are merged into the last). Data made only of pairs is sorted by score gap and
    cut into ``max_stages`` equal stages. Pairs with tied scores are dropped. The trainer trains
    the stages in order without shuffling, and (``iterative_reference_update``) the model after
    stage j−1 is the reference of stage j. Source: secondary summaries of the paper (K = 4, three
    iterations); orderings other than the rating gap are not implemented.
    """

    max_stages: int = 3
    iterative_reference_update: ClassVar[bool] = True
    needs_lists: ClassVar[bool] = True  # on-policy data comes as ranked lists
    keep_order: ClassVar[bool] = True  # do not shuffle within a stage

    def __call__(self, examples: list[PreferenceExample]) -> list[list[PreferenceExample]]:
        stages: list[list[tuple[float, PreferenceExample]]] = [[] for _ in range(self.max_stages)]
        if all(ex.size == 2 for ex in examples):
            pairs = [e for e in examples if e.scores[0] > e.scores[1]]
            pairs.sort(key=lambda e: e.scores[1] - e.scores[0])  # largest gap first (stable)
            size = math.ceil(len(pairs) / self.max_stages) if pairs else 1
            return [pairs[i : i + size] for i in range(0, len(pairs), size)]
        for ex in examples:
            for j in range(ex.size - 1):  # j = 0: best vs worst
                other = ex.size - 1 - j
                if ex.scores[0] > ex.scores[other]:
                    gap = ex.scores[0] - ex.scores[other]
                    stages[min(j, self.max_stages - 1)].append((gap, subset(ex, [0, other])))
        return [[p for _, p in sorted(s, key=lambda t: -t[0])] for s in stages if s]
