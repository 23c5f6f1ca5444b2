"""Evaluation sets that do not overlap training: JSONL tasks take an evaluation file or carve a
disjoint set out of the training file, and ``prompt_overlap`` measures the overlap by prompt text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unipo.config import load_config
from unipo.tasks import TRAIN_PROMPT_OVERLAP, JsonlTask, overlap_record, prompt_overlap, task_from_config


def _jsonl(path: Path, questions: list[str]) -> Path:
    rows = [json.dumps({"question": q, "answer": str(i)}) for i, q in enumerate(questions)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _task(*overrides: str):
    return task_from_config(load_config(None, ["task.source=jsonl", *overrides]).task)


def test_prompt_overlap_by_text() -> None:
    train = [{"question": q} for q in ["a", "b", "c "]]
    held_out = [{"question": q} for q in ["a", "x", "c", "y"]]
    assert prompt_overlap(train, held_out) == 0.5  # a and c (surrounding whitespace ignored) of 4
    assert prompt_overlap(["a", "b"], ["b", "b", "z"]) == pytest.approx(2 / 3)  # texts; duplicates count
    assert prompt_overlap(train, []) == 0.0
    assert overlap_record(train, held_out) == {"eval/train_prompt_overlap": 0.5}
    assert overlap_record(train, []) == {}
    assert TRAIN_PROMPT_OVERLAP == "eval/train_prompt_overlap"  # reports read this exact key


def test_jsonl_eval_is_carved_out_disjoint(tmp_path: Path) -> None:
    questions = [f"q{i}" for i in range(20)] + ["q3", "q7", "q7"]  # 20 unique prompts, some repeated
    path = _jsonl(tmp_path / "data.jsonl", questions)
    task = _task(f"task.path={path}", "task.eval_size=5", "task.eval_seed=11", "task.train_seed=1")
    train = task.examples(0, seed=1, split="train")
    held = task.examples(0, seed=11, split="eval")
    # before: the evaluation set was another shuffle of the same file (overlap 100%)
    assert prompt_overlap(train, held) == 0.0
    assert len({ex["question"] for ex in held}) == 5  # eval_size unique prompts are held out
    assert sorted(ex["question"] for ex in train + held) == sorted(questions)  # every row is in one split
    assert task.examples(3, seed=11, split="eval") == task.examples(3, seed=11, split="eval")
    # the split depends on the prompts, not on the row order of the file
    reordered = _jsonl(tmp_path / "reversed.jsonl", questions[::-1])
    again = _task(f"task.path={reordered}", "task.eval_size=5", "task.eval_seed=11", "task.train_seed=1")
    assert {ex["question"] for ex in again.examples(0, 11, "eval")} == {ex["question"] for ex in held}
    other = _task(f"task.path={path}", "task.eval_size=5", "task.eval_seed=12", "task.train_seed=1")
    assert {ex["question"] for ex in other.examples(0, 12, "eval")} != {ex["question"] for ex in held}


def test_jsonl_eval_path(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "train.jsonl", ["a", "b", "c"])
    eval_path = _jsonl(tmp_path / "eval.jsonl", ["x", "y", "b"])
    task = _task(f"task.path={path}", f"task.eval_path={eval_path}", "task.eval_size=3")
    train, held = task.examples(0, 1, "train"), task.examples(0, 2, "eval")
    assert sorted(ex["question"] for ex in train) == ["a", "b", "c"]  # the whole training file
    assert sorted(ex["question"] for ex in held) == ["b", "x", "y"]
    assert prompt_overlap(train, held) == pytest.approx(1 / 3)  # measured, not hidden


def test_jsonl_too_small_to_carve_is_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "small.jsonl", [f"q{i}" for i in range(6)])
    with pytest.raises(ValueError, match=r"has 6 unique prompts; holding out task.eval_size=4 .* leave 2"):
        _task(f"task.path={path}", "task.eval_size=4")  # at task construction: before any model loads
    assert len(_task(f"task.path={path}", "task.eval_size=3").examples(0, 1)) == 3
    assert len(_task(f"task.path={path}", "task.eval_size=0").examples(0, 1)) == 6  # no evaluation: all train


def test_jsonl_eval_split_needs_a_source(tmp_path: Path) -> None:
    task = JsonlTask(str(_jsonl(tmp_path / "d.jsonl", ["a", "b"])))
    assert len(task.examples(0, seed=0)) == 2  # the plain API still reads every row for training
    with pytest.raises(ValueError, match="no evaluation split: give eval_path"):
        task.examples(1, seed=0, split="eval")
