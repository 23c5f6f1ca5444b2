"""Test-time RL without labels: rewards computed from a prompt's group of completions alone.

Both read the ``group_id`` column (rows of one prompt share it; ``collect`` passes it) and an
answer per completion: ``extract_answer`` (the last ``<answer>`` tag, else the last ``\\boxed{}``,
else the whole text), or, with ``answer_pattern`` (a regular expression), its last match in the
completion (group 1 when the pattern has a group) and no answer when it does not match (for a
worked format whose answer follows a mark, so that a completion without one cannot vote). Answers
are compared by ``match``: ``"exact"`` (equal stripped strings) or ``"math"`` (math-verify
equivalence, as the authors' graders). An empty answer never votes and
scores 0. Called item by item (``RewardSet``'s retry after a raising batch call) each item is its
own group: these rewards do not raise on well-formed input, so that path is not expected.
Run them with ``task.hide_labels=true``: the training rows then carry no label at all.
``ttrl_vote`` is the majority vote as an algorithm's reward part (the ``ettrl`` preset's): it is
``label_free``, so a run of that algorithm hides the labels and has no task-verifier term by itself.
ETTRL's entropy-fork tree rollouts (ETMR, ``unipo.rollout.tree``) and entropy-based advantage
reshaping (EAR, ``unipo.parts.advantages_entropy``) change the rollout and the advantage, not the reward.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from unipo.parts.registry import register
from unipo.rewards.verifiers import extract_answer


def _matcher(match: str) -> Callable[[str, str], bool]:
    if match == "exact":
        return lambda a, b: a == b
    if match == "math":
        from math_verify import parse, verify

        from unipo.rewards.verifiers import _as_latex

        def same(a: str, b: str) -> bool:
            pa, pb = parse(_as_latex(a), parsing_timeout=None), parse(_as_latex(b), parsing_timeout=None)
            return bool(pa) and bool(pb) and bool(verify(pb, pa, timeout_seconds=None))

        return same
    raise ValueError(f"match must be 'exact' or 'math', got {match!r}")


def answers_of(completions: Sequence[str], pattern: str | None) -> list[str]:
    """The answer of each completion: ``extract_answer`` when ``pattern`` is None; else the stripped
    last match of the regular expression ``pattern`` (its group 1 when it has groups), "" (no
    answer: no vote, reward 0) when it does not match."""
    if pattern is None:
        return [extract_answer(c) for c in completions]
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"answer_pattern {pattern!r} is not a regular expression: {e}") from None
    out = []
    for c in completions:
        matches = list(rx.finditer(c))
        last = matches[-1] if matches else None
        out.append("" if last is None else last.group(1 if rx.groups else 0).strip())
    return out


def _groups(group_id: Sequence[Any] | None, n: int, who: str) -> dict[Any, list[int]]:
    if group_id is None:
        raise ValueError(f"{who} needs the group_id column (rows of one prompt share it; collect passes it)")
    if len(group_id) != n:
        raise ValueError(f"column 'group_id' has {len(group_id)} values but there are {n} completions")
    out: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(group_id):
        out[g].append(i)
    return out


def clusters(answers: Sequence[str], same: Callable[[str, str], bool]) -> list[int]:
    """Cluster id per answer: each unassigned answer opens a cluster and takes every later answer
    equivalent to it (EMPO's get_semantic_ids_by_rule); an empty answer is a cluster of its own."""
    ids = [-1] * len(answers)
    next_id = 0
    for i, a in enumerate(answers):
        if ids[i] != -1:
            continue
        ids[i] = next_id
        if a:
            for j in range(i + 1, len(answers)):
                if ids[j] == -1 and answers[j] and same(a, answers[j]):
                    ids[j] = next_id
        next_id += 1
    return ids


class _Counted:
    """Per-call metrics summed until ``pop_metrics`` (read by ``RewardSet`` after each call)."""

    prefix = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: Counter[str] = Counter()
        self._groups = 0

    def _add(self, groups: int, **sums: float) -> None:
        with self._lock:
            self._groups += groups
            self._sums.update(sums)

    def pop_metrics(self) -> dict[str, float]:
        with self._lock:
            sums, groups = self._sums, self._groups
            self._sums, self._groups = Counter(), 0
        return {f"{self.prefix}/{k}": v / groups for k, v in sums.items()} if groups else {}


class MajorityVote(_Counted):
    """TTRL majority-vote pseudo-reward (Zuo et al., arXiv 2504.16084; the seed ETTRL, arXiv
    2508.11356, builds on it).

        ŷ = the most frequent answer of the group (ties: the first one met)
        r_i = 1 if answer_i ≡ ŷ else 0

    Source: PRIME-RL/TTRL@3e2cc937 verl/verl/utils/reward_score/ttrl/ttt_metrics.py:
    test_time_train_metrics (Counter(...).most_common(1), then the verifier against ŷ). Logged:
    ``ttrl/majority_ratio`` (share of the group that voted ŷ, averaged over groups).
    Deviations: the vote is over the group that is trained on (TTRL votes over n_votes_per_prompt
    samples and trains on the first n_samples_per_prompt); empty answers do not vote.
    """

    prefix = "ttrl"

    def __call__(
        self, prompts: list[str], completions: list[str], group_id: Sequence[Any] | None = None, *,
        match: str = "exact", answer_pattern: str | None = None, **columns: Any,
    ) -> list[float | None]:  # fmt: skip
        same = _matcher(match)
        answers = answers_of(completions, answer_pattern)
        out: list[float | None] = [0.0] * len(completions)
        ratio = 0.0
        groups = _groups(group_id, len(completions), "the ttrl reward")
        for rows in groups.values():
            votes = Counter(answers[i] for i in rows if answers[i])
            if not votes:
                continue
            label, count = votes.most_common(1)[0]
            ratio += count / len(rows)
            for i in rows:
                out[i] = 1.0 if answers[i] and same(answers[i], label) else 0.0
        self._add(len(groups), majority_ratio=ratio)
        return out


class SemanticEntropy(_Counted):
    """EMPO semantic-entropy minimization (Zhang et al., arXiv 2504.05812, "Right Question is
    Already Half the Answer").

        clusters c of the group's answers by equivalence, p(c) = |c| / G,
        H = −Σ_c p(c) log p(c)
        r_i = p(c(i)) if H < H_max (default log G: not all answers differ), and answer_i non-empty
        r_i = 0 otherwise

    Maximizing E[p(c(i))] lowers the semantic entropy of the group. Source:
    QingyangZhang/EMPO@c5eccd40 trl/src/open_r1/rewards.py:get_empo_math_reward
    (semantic_entropy_math_reward; clustering: semantic_uncertainty.py:get_semantic_ids_by_rule).
    Logged: ``empo/semantic_entropy`` (H averaged over groups). Deviations: answers come from
    ``extract_answer`` instead of math-verify's boxed extraction; the free-form variant (clusters by
    a verifier model, ``get_empo_common_reward``) is not carried.
    """

    prefix = "empo"

    def __call__(
        self, prompts: list[str], completions: list[str], group_id: Sequence[Any] | None = None, *,
        match: str = "exact", max_entropy: float | None = None, answer_pattern: str | None = None,
        **columns: Any,
    ) -> list[float | None]:  # fmt: skip
        same = _matcher(match)
        answers = answers_of(completions, answer_pattern)
        out: list[float | None] = [0.0] * len(completions)
        total_h = 0.0
        groups = _groups(group_id, len(completions), "the empo reward")
        for rows in groups.values():
            ids = clusters([answers[i] for i in rows], same)
            sizes = Counter(ids)
            p = {c: k / len(rows) for c, k in sizes.items()}
            h = -sum(q * math.log(q) for q in p.values())
            total_h += h
            limit = math.log(len(rows)) if max_entropy is None else max_entropy
            if h < limit:
                for i, c in zip(rows, ids):
                    out[i] = p[c] if answers[i] else 0.0
        self._add(len(groups), semantic_entropy=total_h)
        return out


@register("reward", "ttrl_vote")
@dataclass(frozen=True)
class TTRLVote:
    """TTRL's majority-vote pseudo-reward as an algorithm's reward part: ``MajorityVote`` (its formula,
    source and deviations), r_i = 1[answer_i ≡ majority answer of the group].

    ``label_free``: an algorithm with this part trains without labels (the trainer hides them from the
    training rows as ``task.hide_labels`` does) and without the task verifier as a reward term, unless
    rewards are configured. ``match``: ``"exact"`` or ``"math"``; ``answer_pattern``: a regular
    expression whose last match is the answer (None: ``extract_answer``). Logs ``ttrl/majority_ratio``.
    """

    match: str = "exact"
    answer_pattern: str | None = None
    _sums: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    label_free = True

    def __post_init__(self) -> None:
        _matcher(self.match)  # a bad ``match`` or ``answer_pattern`` fails when the part is built
        answers_of([], self.answer_pattern)

    def __call__(
        self, prompts: list[str], completions: list[str], group_id: Sequence[Any] | None = None,
        **columns: Any,
    ) -> list[float | None]:  # fmt: skip
        vote = MajorityVote()
        out = vote(prompts, completions, group_id, match=self.match, answer_pattern=self.answer_pattern)
        groups = len(set(group_id or ()))
        for key, value in vote.pop_metrics().items():  # per-call means → sums weighted by groups
            self._sums[key] = self._sums.get(key, 0.0) + value * groups
        self._sums["_groups"] = self._sums.get("_groups", 0.0) + groups
        return out

    def pop_metrics(self) -> dict[str, float]:
        sums = dict(self._sums)
        self._sums.clear()
        groups = sums.pop("_groups", 0.0)
        return {k: v / groups for k, v in sums.items()} if groups else {}
