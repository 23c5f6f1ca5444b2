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
from typing import Any, Literal, Protocol

from unipo.rewards.verifiers import RewardFn, extract_answer, math_equivalence
from unipo.tasks.addition import AdditionTask

Split = Literal["train", "eval"]


class Task(Protocol):
    """What the trainer needs from a task."""

    def examples(self, n: int, seed: int, split: Split = "train") -> list[dict[str, Any]]:
        """Up to ``n`` examples of ``split``, deterministic given ``seed``. A task whose examples
        come from a fixed pool keeps the "eval" split's prompts out of the "train" split."""
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

    def examples(self, n: int, seed: int, split: Split = "train") -> list[dict[str, Any]]:
        """``n`` examples of ``create_dataset(name, size=n, seed=seed, **config)``; ``split`` is not
        read: the seed alone separates training and evaluation draws.

        Caution: reasoning-gym generates item ``i`` from ``Random(seed + i)``, so seeds closer
        than ``n`` share items (seed 0 and seed 1 share n - 1). Keep train and held-out seeds far
        apart (e.g. 0 and 10**6). Even then a small problem space repeats problems across draws
        (examples/grpo_chain_sum.yaml: about a third of the held-out prompts are also training
        prompts): measure it with ``prompt_overlap`` (the trainer logs eval/train_prompt_overlap).
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


def _prompt_key(example: dict[str, Any] | str) -> str:
    """The text two prompts are compared by: the question (or the string), stripped."""
    return (example if isinstance(example, str) else example["question"]).strip()


@dataclass
class JsonlTask:
    """Examples from a JSON-lines file, one object per line, scored by math equivalence.

    Evaluation examples never share a prompt with training examples: they come from
    ``eval_path`` when it is set, else ``holdout_size`` unique prompts of ``path`` are held out
    (the unique prompt texts, sorted, shuffled with ``random.Random(holdout_seed)``, the first
    ``holdout_size`` taken; every row with one of them is an evaluation row, the rest train). At
    most half of the unique prompts may be held out. The split does not depend on the row order.
    """

    path: str
    """Path of the ``.jsonl`` file."""
    prompt_column: str = "question"
    """Key holding the question; renamed to ``"question"``."""
    answer_column: str = "answer"
    """Key holding the reference answer; renamed to ``"answer"`` (converted to str)."""
    eval_path: str = ""
    """A separate ``.jsonl`` file of evaluation examples (same columns); empty: carve them out of ``path``."""
    holdout_size: int = 0
    """Unique prompts of ``path`` held out for evaluation when there is no ``eval_path`` (0: none)."""
    holdout_seed: int = 0
    """Seed of the shuffle that picks the held-out prompts."""
    _splits: dict[str, list[dict[str, Any]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def load(self, path: str | None = None) -> list[dict[str, Any]]:
        """All rows of ``path`` (default: ``self.path``) in file order, with the two columns
        renamed; blank lines are skipped.

        Raises FileNotFoundError for a missing file and ValueError (with the line number) for bad
        JSON, a line that is not an object, or a missing column.
        """
        file = Path(path or self.path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"JSONL task file not found: {str(file)!r}")
        rows = []
        for lineno, row in read_jsonl(file):
            for column in (self.prompt_column, self.answer_column):
                if column not in row:
                    raise ValueError(
                        f"{file}:{lineno}: missing column {column!r}; columns present: {sorted(row)}"
                    )
            question, answer = row.pop(self.prompt_column), row.pop(self.answer_column)
            if not isinstance(question, str):
                raise ValueError(f"{file}:{lineno}: column {self.prompt_column!r} must be a string")
            rows.append({**row, "question": question, "answer": str(answer)})
        return rows

    def splits(self) -> dict[str, list[dict[str, Any]]]:
        """``{"train": rows, "eval": rows}`` in file order (read once, then cached); see the class
        docstring. ValueError when more than half of the unique prompts would be held out."""
        if self._splits:
            return self._splits
        rows = self.load()
        if self.eval_path:
            self._splits.update(train=rows, eval=self.load(self.eval_path))
            return self._splits
        unique = sorted({_prompt_key(r) for r in rows})
        if self.holdout_size > len(unique) // 2:
            raise ValueError(
                f"task.path {self.path!r} has {len(unique)} unique prompts; holding out task.eval_size="
                f"{self.holdout_size} of them for evaluation would leave {len(unique) - self.holdout_size} "
                f"to train on (at most half, {len(unique) // 2}, may be held out): lower task.eval_size, "
                "give a separate task.eval_path, or set task.eval_size=0"
            )
        random.Random(self.holdout_seed).shuffle(unique)
        held = set(unique[: self.holdout_size])
        self._splits.update(
            train=[r for r in rows if _prompt_key(r) not in held],
            eval=[r for r in rows if _prompt_key(r) in held],
        )
        return self._splits

    def examples(self, n: int, seed: int, split: Split = "train") -> list[dict[str, Any]]:
        """A shuffle (``random.Random(seed)``) of the ``split`` rows, cut to ``n`` rows (all if
        ``n <= 0``). ValueError for "eval" without ``eval_path`` or ``holdout_size``."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if split == "eval" and not (self.eval_path or self.holdout_size):
            raise ValueError(
                f"JSONL task {self.path!r} has no evaluation split: give eval_path (task.eval_path) or "
                "holdout_size (task.eval_size) so that evaluation prompts are not training prompts"
            )
        rows = [dict(r) for r in self.splits()[split]]
        random.Random(seed).shuffle(rows)
        return rows[:n] if n > 0 else rows

    def reward_fn(self) -> RewardFn:
        """``math_equivalence`` against the answer column."""
        return math_equivalence


def _code_task() -> type:
    from unipo.tasks.code import CodeTask

    return CodeTask


TASK_SOURCES: dict[str, type] = {
    "reasoning_gym": ReasoningGymTask,
    "jsonl": JsonlTask,
    "code": _code_task(),
    "addition": AdditionTask,
}
"""Task classes by the ``source`` name used in configs."""


def make_task(source: str, **kwargs: Any) -> Any:
    """Build a task: ``make_task("reasoning_gym", name="chain_sum")``, ``make_task("jsonl", path=...)``."""
    if source not in TASK_SOURCES:
        raise ValueError(f"unknown task source {source!r}; allowed: {sorted(TASK_SOURCES)}")
    cls = TASK_SOURCES[source]
    fields = [f for f in dataclasses.fields(cls) if f.init]
    allowed = [f.name for f in fields]
    required = [f.name for f in fields if f.default is MISSING and f.default_factory is MISSING]
    unknown = sorted(set(kwargs) - set(allowed))
    missing = [name for name in required if name not in kwargs]
    if unknown or missing:
        raise ValueError(
            f"task source {source!r}: unknown fields {unknown}, missing fields {missing}; allowed: {allowed}"
        )
    return cls(**kwargs)


def task_from_config(task_cfg: Any, env_cfg: Any = None) -> Any:
    """The task a ``unipo.config.TaskConfig`` names (only the fields of its source are read; the
    code and addition tasks take their options from ``task.config``). With an environment (``env_cfg``)
    the episode's own reward scores the rows (``unipo.envs.env_task``): its examples come from the
    environment class (``source=env``) or from the task named here."""
    if env_cfg is not None:
        from unipo.envs import env_task

        return env_task(env_cfg, None if task_cfg.source == "env" else task_from_config(task_cfg))
    if task_cfg.source == "env":
        raise ValueError("task.source=env takes its examples from the environment: set env.name too")
    if task_cfg.source == "reasoning_gym":
        return make_task("reasoning_gym", name=task_cfg.name, config=task_cfg.config)
    if task_cfg.source in ("code", "addition"):
        return make_task(task_cfg.source, **task_cfg.config)
    task = make_task(
        task_cfg.source,
        path=task_cfg.path,
        prompt_column=task_cfg.prompt_column,
        answer_column=task_cfg.answer_column,
        eval_path=task_cfg.eval_path,
        holdout_size=task_cfg.eval_size,
        holdout_seed=task_cfg.eval_seed,
    )
    task.splits()  # read and split the file now: its errors come before any model loads
    return task


LABEL_COLUMNS = ("answer", "entry", "demonstration", "tests", "expected", "gold_sql")
"""Columns that carry an example's label: ``task.hide_labels`` keeps them from training rewards."""


def hide_labels(example: dict[str, Any]) -> dict[str, Any]:
    """``example`` without its label columns (``LABEL_COLUMNS``): what a label-free (test-time RL)
    run's rewards see of a training example."""
    return {k: v for k, v in example.items() if k not in LABEL_COLUMNS}


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


def prompt_overlap(
    train_examples: list[dict[str, Any]] | list[str], eval_examples: list[dict[str, Any]] | list[str]
) -> float:
    """Share of evaluation prompts whose text is also a training prompt, in [0, 1].

    Prompts are compared by text: an example's ``"question"`` (or the string itself), stripped of
    surrounding whitespace, exact match otherwise (the template is the same for both sets, so
    equal questions are equal prompts). A duplicated evaluation prompt counts once per occurrence;
    0.0 for an empty evaluation set. The trainers log it as ``eval/train_prompt_overlap``.
    """
    if not eval_examples:
        return 0.0
    seen = {_prompt_key(ex) for ex in train_examples}
    return sum(_prompt_key(ex) in seen for ex in eval_examples) / len(eval_examples)


split_overlap = prompt_overlap  # the earlier name of the same function

TRAIN_PROMPT_OVERLAP = "eval/train_prompt_overlap"
"""The metric key of ``prompt_overlap`` (the step-0 evaluation record and summary.json); reports
read it to decide whether to call the evaluation set held-out."""


def overlap_record(
    train_examples: list[dict[str, Any]] | list[str], eval_examples: list[dict[str, Any]] | list[str]
) -> dict[str, float]:
    """``{TRAIN_PROMPT_OVERLAP: prompt_overlap(train, eval)}``, or ``{}`` without evaluation examples."""
    return {TRAIN_PROMPT_OVERLAP: prompt_overlap(train_examples, eval_examples)} if eval_examples else {}
