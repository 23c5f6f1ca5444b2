"""Each command writes to its own place and never overwrites silently (report, eval, demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_report import fake_run
from unipo.cli import app
from unipo.train.evaluate import default_eval_dir

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())


def test_report_on_several_runs_gets_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = fake_run(tmp_path / "runs", "a", (0.2, 0.5)), fake_run(tmp_path / "runs", "b", (0.1, 0.4))
    own = (a / "report.html").exists()
    res = run("report", a, b)
    assert res.exit_code == 0, res.output
    page = Path("reports/a-vs-b/report.html")
    assert page.is_file() and (tmp_path / "reports" / "a-vs-b" / "plots" / "accuracy.png").is_file()
    assert (a / "report.html").exists() == own and not (a / "plots").exists()  # a's own report untouched
    again = run("report", a, b)  # the same report again: refused, then replaced when asked
    assert again.exit_code == 2 and "already holds a report; pass --overwrite" in flat(again.output)
    assert run("report", a, b, "--overwrite").exit_code == 0
    into_run = run("report", a, b, "--out", a)
    assert into_run.exit_code == 2 and f"{a} is a run directory" in flat(into_run.output)
    assert not (a / "report.html").exists() or own
    # one run: its report is (re)written in its own directory, as the trainer writes it
    assert run("report", a).exit_code == 0 and (a / "report.html").is_file()


def test_default_eval_dir(tmp_path):
    model = tmp_path / "runs" / "demo" / "final"
    out = default_eval_dir(model, root=tmp_path / "evals", stamp="20250101-120000")
    assert out == tmp_path / "evals" / "demo-final-20250101-120000"
    out.mkdir(parents=True)
    again = default_eval_dir(model, tmp_path / "evals", "20250101-120000")
    assert again.name == "demo-final-20250101-120000-2"
    assert default_eval_dir(tmp_path / "my-model", tmp_path / "evals", "x").name == "my-model-x"


@pytest.mark.slow
def test_eval_writes_under_evals_not_into_the_model(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tiny_model_dir.iterdir())
    args = ["eval", tiny_model_dir, "model.device=cpu", "task.chat=false", "task.eval_size=2",
            "eval.samples=1", "eval.ks=[1]", "eval.greedy=false",
            "rollout.sampling.max_new_tokens=2"]  # fmt: skip
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == before  # nothing written into the model
    (out,) = (tmp_path / "evals").iterdir()
    assert out.name.startswith("model-") and json.loads((out / "eval.json").read_text())["eval/accuracy"] >= 0
    assert "has no unipo_task.json" in flat(res.output)
    # --out that already holds something: refused without --overwrite
    res = run(*args, "--out", out)
    assert res.exit_code == 2 and "is not empty; pass --overwrite" in flat(res.output)
    assert run(*args, "--out", out, "--overwrite").exit_code == 0


def test_demo_refuses_a_previous_run_without_overwrite(tmp_path, monkeypatch):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "summary.json").write_text("{}")
    res = run("demo", "--output-dir", demo)
    assert res.exit_code == 2 and "demo directory" in res.output and "--overwrite" in res.output
    assert sorted(p.name for p in demo.iterdir()) == ["summary.json"]

    def stop(*args, **kwargs):  # stop right after the check, before any training
        raise ValueError("stopped by the test")

    monkeypatch.setattr("unipo.demo.prepare_run_dir", stop)
    res = run("demo", "--output-dir", demo, "--overwrite")
    assert "replacing the previous demo run" in flat(res.output) and "stopped by the test" in res.output


def test_make_demo_passes_overwrite():
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "unipo demo --overwrite" in recipe
