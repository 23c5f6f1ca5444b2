"""Where prompts come from: reasoning-gym generators and JSONL files.

An example is a plain dict with at least ``"question": str`` and ``"answer": str``; every other
key is a column passed on to reward functions (``f(prompts, completions, **columns)``). A task
gives examples and the reward function that scores completions of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from unipo.rewards.verifiers import RewardFn, extract_answer, math_equivalence
from unipo.tasks.addition import AdditionTask


class Task(Protocol):
    """What the trainer needs from a task."""

    def examples(self, n: int, seed: int) -> list[dict[str, Any]]:
        """Up to ``n`` examples, deterministic given ``seed``."""
        ...

    def reward_fn(self) -> RewardFn:
        """The reward function that scores completions of this task's examples."""
        ...


def _reasoning_gym_datasets() -> dict[str, Any]:
    """``reasoning_gym.factory.DATASETS`` (name -> (dataset class, config class)), imported lazily:
    importing reasoning_gym takes about a second."""
    from reasoning_gym.factory import DATASETS

    return DATASETS


@dataclass
class ReasoningGymTask:
    """Procedurally generated problems from a reasoning-gym dataset, scored by its own verifier.

    Examples carry ``"entry"`` (the reasoning-gym entry dict, needed for scoring) and
    ``"source": "reasoning_gym:NAME"``. Datasets without a reference answer (e.g. ``graph_color``,
    ``rubiks_cube``) have ``"answer": ""``; only their verifier can score them.
    """

    name: str
    """reasoning-gym dataset name, a key of ``reasoning_gym.factory.DATASETS`` (e.g. ``"chain_sum"``)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of that dataset's config class (e.g. ``{"min_terms": 2}``); not size or seed.
    For ``composite``, ``datasets`` may be a list of dicts ``{name, weight, config}``."""

    def __post_init__(self) -> None:
        datasets = _reasoning_gym_datasets()
        if self.name not in datasets:
            close = difflib.get_close_matches(self.name, list(datasets), n=5)
            hint = f" Close matches: {close}." if close else ""
            raise ValueError(
                f"task.name={self.name!r} is not a reasoning-gym dataset.{hint} "
                f"The allowed names are the keys of reasoning_gym.factory.DATASETS ({len(datasets)} of them)."
            )
        reserved = sorted({"size", "seed"} & set(self.config))
        if reserved:
            raise ValueError(f"task.config must not set {reserved}: examples(n, seed) chooses them")
        # One instance scores every entry of this dataset class: score_answer reads only the entry
        # and the config (checked for all datasets of reasoning-gym 0.1.25), not size or seed.
        # Kept out of the dataclass fields so that asdict() / repr() stay plain config.
        self._scorer: Any = self._create(size=1, seed=0)

    def _create(self, size: int, seed: int) -> Any:
        """``reasoning_gym.create_dataset(name, size=size, seed=seed, **config)`` with config errors
        reported as ValueError naming ``task.config``."""
        import reasoning_gym

        config = dict(self.config)
        if self.name == "composite" and config.get("datasets"):
            from reasoning_gym.composite import DatasetSpec

            config["datasets"] = [DatasetSpec(**d) if isinstance(d, dict) else d for d in config["datasets"]]
        try:
            return reasoning_gym.create_dataset(self.name, size=size, seed=seed, **config)
        except (TypeError, ValueError, AssertionError, AttributeError, KeyError) as err:
            raise ValueError(
                f"task.config={self.config!r} is invalid for reasoning-gym dataset {self.name!r}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def examples(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` examples of ``create_dataset(name, size=n, seed=seed, **config)``.

        Caution: reasoning-gym generates item ``i`` from ``Random(seed + i)``, so seeds closer
        than ``n`` share items (seed 0 and seed 1 share n - 1). Keep train and held-out seeds far
        apart (e.g. 0 and 10**6) and check with ``split_overlap``.
        """
        if n <= 0:
            raise ValueError(f"n must be positive for a reasoning-gym task, got {n}")
        dataset = self._create(size=n, seed=seed)
        out = []
        for i in range(n):
            entry = dataset[i]
            answer = entry["answer"]
            out.append(
                {
                    "question": entry["question"],
                    "answer": "" if answer is None else str(answer),
                    "entry": entry,
                    "source": f"reasoning_gym:{self.name}",
                }
            )
        return out

    def reward_fn(self, extract: Callable[[str], str] = extract_answer) -> RewardFn:
        """``dataset.score_answer(extract(completion), entry)`` for each item; needs the ``entry`` column.

        Some verifiers raise on malformed answers (e.g. ``prime_factorization`` on non-integers);
        such an answer scores 0.0. Scores may be partial (e.g. 0.01 for any non-empty answer).
        """
        scorer = self._scorer

        def score(
            prompts: list[str], completions: list[str], entry: list[dict[str, Any]], **kwargs: Any
        ) -> list[float | None]:
            if len(entry) != len(completions):
                raise ValueError(f"column 'entry' has {len(entry)} values, expected {len(completions)}")
            out: list[float | None] = []
            for completion, item in zip(completions, entry):
                if not isinstance(item, dict) or "answer" not in item:
                    raise TypeError(f"'entry' must hold reasoning-gym entry dicts, got {type(item).__name__}")
                try:
                    out.append(float(scorer.score_answer(extract(completion), item)))
                except Exception:
                    out.append(0.0)
            return out

        score.__name__ = f"reasoning_gym_{self.name}"
        return score


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad JSON or a non-object names the line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {err}") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


@dataclass
class JsonlTask:
    """Examples from a JSON-lines file, one object per line, scored by math equivalence."""

    path: str
    """Path of the ``.jsonl`` file."""
    prompt_column: str = "question"
    """Key holding the question; renamed to ``"question"``."""
    answer_column: str = "answer"
    """Key holding the reference answer; renamed to ``"answer"`` (converted to str)."""

    def load(self) -> list[dict[str, Any]]:
        """All rows in file order, with the two columns renamed; blank lines are skipped.

        Raises FileNotFoundError for a missing file and ValueError (with the line number) for bad
        JSON, a line that is not an object, or a missing column.
        """
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"JSONL task file not found: {str(path)!r}")
        rows = []
        for lineno, row in read_jsonl(path):
            for column in (self.prompt_column, self.answer_column):
                if column not in row:
                    raise ValueError(
                        f"{path}:{lineno}: missing column {column!r}; columns present: {sorted(row)}"
                    )
            question, answer = row.pop(self.prompt_column), row.pop(self.answer_column)
            if not isinstance(question, str):
                raise ValueError(f"{path}:{lineno}: column {self.prompt_column!r} must be a string")
            rows.append({**row, "question": question, "answer": str(answer)})
        return rows

    def examples(self, n: int, seed: int) -> list[dict[str, Any]]:
        """A shuffle of the rows (``random.Random(seed)``), cut to ``n`` rows (all if ``n <= 0``)."""
        rows = self.load()
        random.Random(seed).shuffle(rows)
        return rows[:n] if n > 0 else rows

    def reward_fn(self) -> RewardFn:
        """``math_equivalence`` against the answer column."""
        return math_equivalence


TASK_SOURCES: dict[str, type] = {
    "reasoning_gym": ReasoningGymTask,
    "jsonl": JsonlTask,
    "addition": AdditionTask,
}
"""Task classes by the ``source`` name used in configs."""


def make_task(source: str, **kwargs: Any) -> ReasoningGymTask | JsonlTask | AdditionTask:
    """Build a task: ``make_task("reasoning_gym", name="chain_sum")``, ``make_task("jsonl", path=...)``."""
    if source not in TASK_SOURCES:
        raise ValueError(f"unknown task source {source!r}; allowed: {sorted(TASK_SOURCES)}")
    cls = TASK_SOURCES[source]
    fields = dataclasses.fields(cls)
    allowed = [f.name for f in fields]
    required = [f.name for f in fields if f.default is MISSING and f.default_factory is MISSING]
    unknown = sorted(set(kwargs) - set(allowed))
    missing = [name for name in required if name not in kwargs]
    if unknown or missing:
        raise ValueError(
            f"task source {source!r}: unknown fields {unknown}, missing fields {missing}; allowed: {allowed}"
        )
    return cls(**kwargs)


def task_from_config(task_cfg: Any) -> ReasoningGymTask | JsonlTask | AdditionTask:
    """The task a ``unipo.config.TaskConfig`` names (only the fields of its source are read)."""
    if task_cfg.source == "reasoning_gym":
        return make_task("reasoning_gym", name=task_cfg.name, config=task_cfg.config)
    if task_cfg.source == "addition":
        return make_task("addition", **task_cfg.config)
    return make_task(
        task_cfg.source,
        path=task_cfg.path,
        prompt_column=task_cfg.prompt_column,
        answer_column=task_cfg.answer_column,
    )


def demonstration(example: dict[str, Any]) -> str | None:
    """The text of a correct completion of ``example``: what SFT targets are made of (the warm
    start, HPT's SFT branch).

    The example's ``"demonstration"`` column when it has a non-empty one (e.g. a worked solution
    kept as an extra column of a JSONL file), else its reference ``"answer"``: both tasks' verifiers
    score the bare answer as correct, since ``extract_answer`` falls back to the whole completion.
    None when neither is a non-empty string (reasoning-gym datasets without a reference answer).
    """
    for key in ("demonstration", "answer"):
        text = example.get(key)
        if isinstance(text, str) and text.strip():
            return text
    return None


def split_overlap(train: list[dict[str, Any]], held_out: list[dict[str, Any]]) -> float:
    """Share of held-out examples whose ``"question"`` also occurs in ``train`` (exact string match).

    0.0 for an empty held-out set. Duplicated held-out questions count once per occurrence.
    """
    if not held_out:
        return 0.0
    seen = {ex["question"] for ex in train}
    return sum(ex["question"] in seen for ex in held_out) / len(held_out)
