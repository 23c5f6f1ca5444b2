"""``unipo report``: plots with data, an HTML page with every run's final numbers, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unipo.diagnostics.plots import load_runs, panel_points, plot_run
from unipo.diagnostics.report import report_main, run_numbers, write_report


def fake_run(root: Path, name: str, acc: tuple[float, float], finished: bool = True) -> Path:
    """A run dir as the trainer leaves it: 5 steps, evals at steps 0 and 3, a final eval."""
    run = root / name
    run.mkdir(parents=True)
    lines = [{"step": 0, "eval/accuracy": acc[0], "eval/greedy_accuracy": acc[0], "eval/pass@2": 0.3}]
    for s in range(1, 6):
        rec = {
            "step": s,
            "reward/mean": 0.1 * s,
            "policy/entropy": 1.0 - 0.1 * s,
            "policy/approx_kl_old": 0.001 * s,
            "surrogate/clip_frac_low": 0.01,
            "surrogate/clip_frac_high": 0.02 * s,
            "response/length_mean": 40.0 + s,
            "time/generate": 1.5,
            "time/reward": 0.1,
            "time/logprobs": 0.4,
            "time/update": 0.8,
            "time/step": 2.8,
            "memory/generate_peak_mb": 900.0 + s,
            "memory/update_peak_mb": 1200.0,
            "memory/peak_mb": 1300.0,  # the run's peak, not a phase: not on the memory panel
        }
        if s == 3:
            rec.update({"eval/accuracy": (acc[0] + acc[1]) / 2, "eval/entropy": 0.9})
        lines.append(rec)
    if finished:
        lines.append({"step": 5, "event": "final_eval", "eval/accuracy": acc[1], "eval/pass@2": 0.6})
    else:
        lines.append({"step": 5, "event": "interrupted", "signal": "SIGINT"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = {"algorithm": {"name": "grpo"}, "train": {"steps": 5, "output_dir": str(run)}, "note": "<b>&"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if finished:
        summary = {"steps": 5, "wall_seconds": 125.0, "algorithm": "grpo",
                   "before/accuracy": acc[0], "before/greedy_accuracy": acc[0],
                   "after/accuracy": acc[1], "after/greedy_accuracy": 0.55, "after/pass@2": 0.6}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_panels_have_data(tmp_path):
    runs = [fake_run(tmp_path, "a", (0.2, 0.5)), fake_run(tmp_path, "b", (0.1, 0.4))]
    points = panel_points(load_runs(runs))
    # accuracy: per run 3 sampled points (steps 0, 3, final) + 1 greedy (step 0) = 4; × 2 runs
    assert points["accuracy"] == 8
    assert points["reward"] == 10 and points["entropy"] == 2 * (5 + 1)
    assert points["clip"] == 2 * 10 and points["time"] == 2 * 20 and points["kl"] == 10
    assert points["memory"] == 2 * 2 * 5  # two phases × 5 steps × 2 runs
    assert points["pass_at_k"] == 2 * 2
    assert "length" in points and set(points) <= {
        "reward", "accuracy", "pass_at_k", "entropy", "kl", "clip", "length", "time", "memory"
    }  # fmt: skip


def test_report_writes_plots_and_html(tmp_path):
    runs = [fake_run(tmp_path, "run-alpha", (0.2, 0.5)), fake_run(tmp_path, "run-beta", (0.1, 0.4))]
    page = write_report(tmp_path / "out", runs)
    assert page == tmp_path / "out" / "report.html"
    pngs = {p.stem: p.stat().st_size for p in (tmp_path / "out" / "plots").glob("*.png")}
    assert {"reward", "accuracy", "entropy", "kl", "clip", "length", "time", "memory"} <= set(pngs)
    assert all(size > 5_000 for size in pngs.values()), pngs
    text = page.read_text()
    assert "run-alpha" in text and "run-beta" in text
    assert "src='plots/accuracy.png'" in text and str(tmp_path / "out" / "plots") not in text
    # final numbers: accuracy before/after, greedy after, pass@2 after, wall time, last entropy
    for cell in ("<td>0.200</td>", "<td>0.500</td>", "<td>0.400</td>", "<td>0.550</td>", "<td>0.600</td>",
                 "<td>2m 05s</td>", "<td>0.500</td>", "<td>45.000</td>"):  # fmt: skip
        assert cell in text, cell
    assert "pass@2 after" in text and text.count("<details>") == 4
    assert "&lt;b&gt;&amp;" in text and "<b>&" not in text  # the config is escaped


def test_unfinished_run_without_summary(tmp_path):
    run = fake_run(tmp_path, "crashed", (0.2, 0.5), finished=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "reward/me')  # a torn last line is skipped
    nums = run_numbers(run, load_runs([run])["crashed"])
    assert nums["status"] == "interrupted" and nums["steps"] == 5
    assert nums["before"]["accuracy"] == 0.2 and nums["after"] == {}
    assert nums["wall_seconds"] == pytest.approx(5 * 2.8)
    page = report_main([str(run)], None)
    assert page == run / "report.html" and "interrupted" in page.read_text()


def test_missing_metrics_is_a_clear_error(tmp_path):
    good = fake_run(tmp_path, "good", (0.2, 0.5))
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"not-a-run has no metrics\.jsonl"):
        write_report(tmp_path / "out", [good, empty])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report_main([str(tmp_path / "nowhere")], None)


def test_sparse_metrics_skip_empty_panels(tmp_path):
    run = tmp_path / "sparse"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n{"step": 2, "reward/mean": NaN}\n')
    written = plot_run(run)
    assert [p.name for p in written] == ["reward.png"]
    text = write_report(run, [run]).read_text()
    assert "config.yaml not found" in text and "—" in text


def test_same_named_runs_get_distinct_labels(tmp_path):
    a = fake_run(tmp_path / "x", "run", (0.2, 0.5))
    b = fake_run(tmp_path / "y", "run", (0.1, 0.4))
    assert list(load_runs([a, b])) == ["x/run", "y/run"]
