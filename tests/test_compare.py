"""``unipo compare``: spec validation, the cross-seed report, and a tiny end-to-end run that resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from unipo.diagnostics.compare import (
    Cell,
    CompareError,
    CompareSpec,
    child_threads,
    compare_main,
    load_spec,
    plan_cells,
    run_compare,
    write_compare_report,
)


def write_spec(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


CHAIN_SUM = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def base_config(model_dir: Path) -> dict:
    return {
        "model": {"path": str(model_dir), "device": "cpu"},
        "task": {"name": "chain_sum", "config": CHAIN_SUM,
                 "train_size": 20, "eval_size": 4, "eval_seed": 1_000_000, "chat": False},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "sampling": {"max_new_tokens": 4}},
        "optim": {"lr": 1e-3, "micro_batch_size": 8},
        "eval": {"samples": 2, "ks": [1, 2]},
        "train": {"save_final": False},
    }  # fmt: skip


# ------------------------------------------------------------------ the spec
def test_spec_rejects_unknown_keys_clearly(tmp_path):
    p = write_spec(tmp_path / "s.yaml", variants={"a": []}, output_dir="out", paralel=2)
    with pytest.raises(
        CompareError, match=r"unknown key 'paralel'; allowed here: base, baseline, output_dir, parallel"
    ):
        load_spec(p)
    with pytest.raises(CompareError, match="seeds must be distinct"):
        load_spec(write_spec(tmp_path / "s.yaml", variants={"a": []}, output_dir="o", seeds=[1, 1]))
    with pytest.raises(CompareError, match="plain folder name"):
        load_spec(write_spec(tmp_path / "s.yaml", variants={"../x": []}, output_dir="o"))
    with pytest.raises(CompareError, match="plain folder name"):
        load_spec(write_spec(tmp_path / "s.yaml", variants={"plots": []}, output_dir="o"))
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.yaml")


def test_cells_are_checked_before_anything_runs(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    spec = CompareSpec(base=base_config(tiny_model_dir), output_dir=str(out),
                       variants={"ok": ["algorithm.name=grpo"], "bad": ["optim.lrr=1"]})  # fmt: skip
    with pytest.raises(CompareError, match=r"(?s)variant 'bad'.*unknown key 'optim.lrr'"):
        run_compare(spec)
    spec = spec.model_copy(update={"variants": {"nope": ["algorithm.name=not_a_method"]}})
    with pytest.raises(CompareError, match="variant 'nope'"):
        plan_cells(spec)
    missing = {**base_config(tiny_model_dir), "model": {"path": str(tmp_path / "no_model")}}
    with pytest.raises(CompareError, match=r"model.path .* does not exist"):
        plan_cells(CompareSpec(base=missing, output_dir=str(out), variants={"a": []}))
    assert not out.exists()


def test_cells_and_threads(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)), raising=False)
    variants = {"g": ["algorithm.name=grpo"], "d": ["algorithm.name=dapo"]}
    spec = CompareSpec(base=base_config(tiny_model_dir), output_dir=str(tmp_path), parallel=3, steps=7,
                       seeds=[4, 5], variants=variants)  # fmt: skip
    assert child_threads(spec) == 2  # 8 cores // 3 cells at a time
    cells = plan_cells(spec)
    assert [(c.variant, c.seed) for c in cells] == [("g", 4), ("g", 5), ("d", 4), ("d", 5)]
    assert cells[1].run_dir == str(tmp_path / "g" / "seed5")
    run = tmp_path / "g" / "seed5"
    assert cells[1].args == ["algorithm.name=grpo", "train.seed=5", f"train.output_dir={run}",
                             "train.resume=true", "train.threads=2", "train.steps=7"]  # fmt: skip
    capped = spec.model_copy(update={"base": {**spec.base, "train": {"threads": 1}}})
    assert child_threads(capped) == 1


# ------------------------------------------------------------------ the report, from fake runs
def fake_cell(
    root: Path, variant: str, seed: int, acc: float, law: tuple[float, float], selected=False
) -> Cell:
    """A finished run dir: 6 steps whose (entropy, reward) follow R = −a·exp(H) + b exactly. ``selected``:
    the law holds for rollout/reward_mean_all, while reward/mean (after dynamic sampling) stays 0.5."""
    run = root / variant / f"seed{seed}"
    run.mkdir(parents=True)
    a, b = law
    recs = [{"step": 0, "eval/accuracy": 0.1, "eval/entropy": math.log(2)}]  # a checkpoint at e^H = 2
    for s in range(1, 7):
        h = 1.0 - 0.1 * s - 0.03 * seed
        r = -a * math.exp(h) + b
        rewards = {"rollout/reward_mean_all": r, "reward/mean": 0.5} if selected else {"reward/mean": r}
        recs.append({"step": s, "policy/entropy": h, "response/length_mean": 5.0 + s, **rewards})
    recs.append({"step": 6, "event": "final_eval", "eval/accuracy": acc, "eval/entropy": 0.0})  # e^H = 1
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = {"steps": 6, "wall_seconds": 10.0 + seed, "after/accuracy": acc, "after/pass@2": acc + 0.1,
               "after/entropy": 0.0, "after/length_mean": 6.0, "last": {}, "before/accuracy": 0.1,
               "before/pass@2": 0.15, "before/entropy": math.log(2)}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    return Cell(variant, seed, str(run), [], status="finished")


def test_report_table_law_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr("unipo.diagnostics.compare.LAW_WINDOW", 3)  # 6 steps per run → 2 means
    cells = [fake_cell(tmp_path, "grpo", 0, 0.2, (0.1, 0.9)), fake_cell(tmp_path, "grpo", 1, 0.4, (0.1, 0.9)),
             fake_cell(tmp_path, "kl_cov", 0, 0.5, (0.2, 1.0), selected=True)]  # fmt: skip
    variants = {"grpo": ["algorithm.name=grpo"], "kl_cov": ["algorithm.name=kl_cov"]}
    spec = CompareSpec(output_dir=str(tmp_path), seeds=[0, 1], variants=variants, baseline="grpo")
    page = write_compare_report(spec, cells)
    data = json.loads((tmp_path / "compare.json").read_text())
    acc = data["table"]["grpo"]["accuracy"]
    # two seeds 0.2 and 0.4: resampled means are 0.2, 0.3, 0.4, so the 95% interval is [0.2, 0.4]
    assert acc == pytest.approx({"mean": 0.3, "lo": 0.2, "hi": 0.4, "n": 2})
    assert data["table"]["grpo"]["pass@2"]["mean"] == pytest.approx(0.4)
    assert data["table"]["grpo"]["entropy_last"]["mean"] == pytest.approx(1.0 - 0.6 - 0.015)
    assert data["table"]["grpo"]["wall_seconds"]["mean"] == pytest.approx(10.5)
    one = data["table"]["kl_cov"]["accuracy"]
    assert one["mean"] == 0.5 and one["lo"] is None and one["n"] == 1  # one seed: no interval (NaN → null)
    law = data["law"]["grpo"]
    assert law["a"] == pytest.approx(0.1) and law["b"] == pytest.approx(0.9) and law["n"] == 12
    assert law["ceiling"] == pytest.approx(0.8)
    # the second fit: 3-step means, 2 per seed; means of points on R = 0.9 − 0.1·e^H lie close to
    # the curve (e^H is nearly linear over a 0.2-nat window), so the fit stays near a = 0.1
    assert law["n_binned"] == 4 and law["r2_binned"] > 0.99
    assert law["a_binned"] == pytest.approx(0.1, rel=0.05)
    assert data["law"]["kl_cov"]["a"] == pytest.approx(0.2)  # the reward before selection is used
    band = data["curves"]["grpo"]["accuracy"]
    assert band["steps"] == [0, 6] and band["mean"] == pytest.approx([0.1, 0.3])
    text = page.read_text()
    assert "0.300 [0.200, 0.400] (n=2)" in text and "0.500 (n=1)" in text and "kl_cov" in text
    for name in ("reward", "accuracy", "entropy", "length", "entropy_law"):
        assert (
            f"src='plots/{name}.png'" in text and (tmp_path / "plots" / f"{name}.png").stat().st_size > 5000
        )
    assert "grpo/seed1/report.html" in text
    # kl_cov's one seed (0.5) minus grpo's mean accuracy (0.3): +0.2, no interval from one seed
    gap = data["baseline_gaps"]["kl_cov"]["accuracy"]
    assert gap["diff"] == pytest.approx(0.2) and gap["lo"] is None and "Difference from grpo" in text
    # before/after, paired by run: grpo's accuracy 0.1 → 0.2 and 0.1 → 0.4, pass@2 0.15 → 0.3 and 0.5
    table = data["table"]["grpo"]
    assert table["accuracy_before"]["mean"] == pytest.approx(0.1)
    assert table["accuracy_change"] == pytest.approx({"mean": 0.2, "lo": 0.1, "hi": 0.3, "n": 2})
    assert table["pass@2_before"]["mean"] == pytest.approx(0.15)
    assert table["pass@2_change"]["mean"] == pytest.approx(0.25)
    assert table["entropy_eval_change"]["mean"] == pytest.approx(-math.log(2))
    assert data["baseline_gaps"]["kl_cov"]["pass@2"]["diff"] == pytest.approx(0.6 - 0.4)
    # the law on checkpoints: grpo's (e^H, accuracy) points (2, 0.1), (1, 0.2), (2, 0.1), (1, 0.4);
    # by hand x̄ = 1.5, R̄ = 0.2, Sxx = 1, Sxy = −0.05 − 0.05 − 0.1 = −0.2: a = 0.2, b = 0.2 + 0.2·1.5 = 0.5
    ck = data["checkpoint_law"]["grpo"]
    assert ck["a"] == pytest.approx(0.2) and ck["b"] == pytest.approx(0.5)
    assert ck["n"] == 4 and ck["runs"] == 2
    assert data["checkpoint_points"]["grpo"][1] == [[math.log(2), 0.0], [0.1, 0.4]]
    assert "Entropy–performance law on checkpoints" in text
    # entropy falls 0.1 per step over 6 steps: the last 3 steps' mean is 0.3 below the first 3's
    assert data["dynamics"]["grpo"]["entropy_change"]["mean"] == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="baseline 'ppo' is not a variant"):
        CompareSpec(output_dir="o", variants=variants, baseline="ppo")


# ------------------------------------------------------------------ end to end (subprocesses)
@pytest.mark.slow
def test_tiny_comparison_runs_resumes_and_reports(tmp_path, tiny_model_dir):
    out = tmp_path / "cmp"
    variants = {"grpo": ["algorithm.name=grpo"], "clip_cov": ["algorithm.name=clip_cov"]}
    spec_path = write_spec(tmp_path / "spec.yaml", base=base_config(tiny_model_dir), seeds=[0, 1],
                           variants=variants, output_dir=str(out), parallel=2, steps=3)  # fmt: skip
    page = compare_main(spec_path)
    assert page == out / "compare.html"
    for variant in ("grpo", "clip_cov"):
        for seed in (0, 1):
            run = out / variant / f"seed{seed}"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["steps"] == 3 and summary["algorithm"] == variant
            assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == seed
            assert (out / "logs" / f"{variant}-seed{seed}.log").exists()
    data = json.loads((out / "compare.json").read_text())
    assert [c["status"] for c in data["cells"]] == ["finished"] * 4
    for variant in ("grpo", "clip_cov"):
        acc = data["table"][variant]["accuracy"]
        assert acc["n"] == 2 and acc["lo"] <= acc["mean"] <= acc["hi"]
    assert data["law"]["grpo"]["n"] == 6  # 3 steps × 2 seeds of (entropy, reward)
    assert 1 <= data["law"]["clip_cov"]["n"] <= 6  # dynamic sampling may leave a step without an update
    text = page.read_text()
    assert "<td>grpo</td>" in text and "<td>clip_cov</td>" in text and "(n=2)" in text
    assert (out / "plots" / "entropy.png").exists()

    # a second call skips every finished cell; an unfinished one (no summary.json) runs again
    (out / "clip_cov" / "seed1" / "summary.json").unlink()
    _, cells = run_compare(load_spec(spec_path))
    assert [c.status for c in cells] == ["skipped", "skipped", "skipped", "finished"]
    assert (out / "clip_cov" / "seed1" / "summary.json").exists()
    _, cells = run_compare(load_spec(spec_path))
    assert all(c.status == "skipped" for c in cells)


def test_example_spec_is_valid(tiny_model_dir):
    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "examples" / "compare" / "entropy.yaml")
    assert list(spec.variants) == ["grpo", "clip_cov", "kl_cov", "forking_tokens"]
    assert spec.seeds == [0, 1, 2, 3, 4]
    assert spec.base["model"]["path"] == "runs/demo/warm_start"
    # every cell passes `unipo train`'s checks once the model exists (here: the tiny test model)
    base = {**spec.base, "model": {**spec.base["model"], "path": str(tiny_model_dir)}}
    cells = plan_cells(spec.model_copy(update={"base": base}))
    assert len(cells) == 20 and all("train.steps=120" in c.args for c in cells)
