"""Reports, plots, the demo table and compare reports say "held-out" only at 0 train/eval overlap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from test_compare import fake_cell
from test_report import fake_run
from unipo.diagnostics.evalset import OVERLAP_KEY, eval_set_label, overlap_of
from unipo.diagnostics.report import write_report


def with_overlap(run: Path, overlap: float | None) -> Path:
    """Put ``eval/train_prompt_overlap`` into the step-0 record and summary.json (None: an old run)."""
    if overlap is None:
        return run
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recs[0][OVERLAP_KEY] = overlap
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = json.loads((run / "summary.json").read_text())
    summary["before/train_prompt_overlap"] = overlap
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_labels():
    assert eval_set_label([0.0]) == "held-out set"
    assert eval_set_label([0.0, 0.0]) == "held-out set"
    assert eval_set_label([0.19]) == "evaluation set (19% also in training)"
    assert eval_set_label([0.004]) == "evaluation set (0.4% also in training)"
    assert eval_set_label([0.0, 0.25]) == "evaluation set (up to 25% also in training)"
    assert eval_set_label([None]) == "evaluation set" and eval_set_label([0.0, None]) == "evaluation set"
    assert eval_set_label([]) == "evaluation set"
    # where a run's overlap is read from: the step-0 record, else the summary (the demo's own key)
    assert overlap_of({"train_prompt_overlap": 0.2}, [{"step": 0, OVERLAP_KEY: 0.1}]) == 0.1
    assert overlap_of({"train_prompt_overlap": 0.2}, [{"step": 3, OVERLAP_KEY: 0.1}]) == 0.2
    assert overlap_of({}, []) is None


@pytest.fixture
def titles(monkeypatch):
    import matplotlib.axes

    seen: list[str] = []
    real = matplotlib.axes.Axes.set_title

    def record(self, label, *args, **kwargs):
        seen.append(str(label))
        return real(self, label, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", record)
    return seen


@pytest.mark.parametrize(
    ("overlap", "said"),
    [(0.0, "held-out set"), (0.25, "evaluation set (25% also in training)"), (None, "evaluation set")],
)
def test_report_and_plots_name_the_evaluation_set(tmp_path, titles, overlap, said):
    run = with_overlap(fake_run(tmp_path, "a", (0.2, 0.5)), overlap)
    text = write_report(tmp_path / "out", [run]).read_text()
    assert f"evaluation on the {said} at step 0" in text
    assert f"accuracy on the {said}" in titles and f"pass@k / maj@k on the {said}" in titles
    if overlap != 0.0:
        assert "held-out" not in text and not any("held-out" in t for t in titles)


def test_overlaid_report_is_held_out_only_if_every_run_is(tmp_path, titles):
    runs = [with_overlap(fake_run(tmp_path, "a", (0.2, 0.5)), 0.0),
            with_overlap(fake_run(tmp_path, "b", (0.1, 0.4)), 0.1)]  # fmt: skip
    text = write_report(tmp_path / "out", runs).read_text()
    assert "evaluation on the evaluation set (up to 10% also in training)" in text and "held-out" not in text


def test_demo_table(tmp_path):
    from unipo.demo import _print_table

    s = {"eval_prompts": 512, "eval_samples_per_prompt": 8, "accuracy_delta_stderr": 0.01, "steps": 200,
         "wall_seconds": 100.0, "accuracy_before_seen": 0.3, "accuracy_after_seen": 0.4,
         "accuracy_before_unseen": 0.1, "accuracy_after_unseen": 0.2}  # fmt: skip
    for key in ("accuracy", "greedy", "reward", "entropy", "length"):
        s[f"{key}_before"], s[f"{key}_after"] = 0.1, 0.2
    for overlap, title in ((0.188, "evaluation set (19% also in training): 512 prompts"),
                           (0.0, "held-out set: 512 prompts")):  # fmt: skip
        console = Console(record=True, width=200)
        _print_table(console, {**s, "train_prompt_overlap": overlap})
        text = console.export_text()
        assert title in text
        assert ("held-out" in text) == (overlap == 0.0)


def test_compare_report(tmp_path):
    from unipo.diagnostics.compare import CompareSpec, write_compare_report

    cells = [fake_cell(tmp_path, "grpo", 0, 0.2, (0.1, 0.9)), fake_cell(tmp_path, "grpo", 1, 0.4, (0.1, 0.9))]
    for c in cells:
        run = Path(c.run_dir)
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        recs[0][OVERLAP_KEY] = 0.3
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    spec = CompareSpec(output_dir=str(tmp_path), seeds=[0, 1], variants={"grpo": ["algorithm.name=grpo"]})
    text = write_compare_report(spec, cells).read_text()
    md = (tmp_path / "compare.md").read_text()
    for t in (text, md):
        assert "evaluation on the evaluation set (30% also in training) after training" in t
        assert "held-out" not in t
