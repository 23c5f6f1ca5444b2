"""The issue-21 presets against DPO: one task, one model, one held-out set, 3 seeds each.

    python examples/compare/preference_t2.py --dry-run   # check every cell's config; plan + time estimate
    python examples/compare/preference_t2.py             # run every cell (resumable), then the report
    python examples/compare/preference_t2.py --model DIR --out runs/compare-pref-t2 --parallel 2

``unipo compare`` runs RL configs only, and DPO, CoPG and OPA-DPO are preference presets, so this
script runs both kinds of cell with ``unipo train`` (which routes a preference preset to the
preference trainer), each in its own process, ``--parallel`` at a time:

    preference cells  examples/preference/dpo_demo.yaml, ``loss.preset=NAME``: 60 on-policy rounds of
                      64 prompts × 8 samples (DPO's demo recipe: lr 1e-4, 2 epochs, batch 32), with the
                      RL cells' task and sampling (the addition testbed, 40 new tokens): the demo file's own
                      task is chain_sum, for the chain_sum model its script warm-starts
    RL cells          the same task, model and held-out set as an RL config (examples/compare/t2.yaml's
                      base): 60 steps of 64 prompts × 8 samples (P3O: 256 × 2, its pairs), lr 3e-4
    rto               needs a DPO-trained model: seed k's token reward is dpo/seed<k>/final, so each rto
                      cell waits for the dpo cell of its seed

Every cell sees 60 × 512 sampled completions and is evaluated before and after training on the same
256 held-out prompts × 8 samples. A finished cell (``summary.json``) is skipped, an unfinished one
resumes from its checkpoint. The report (OUT/preference_t2.md and .json): per variant, held-out
sampled accuracy after training (mean and 95% percentile-bootstrap interval over the seeds), its
change from before training, and its difference from dpo paired by seed.

Run time (``--dry-run`` prints it for the chosen cells): from CPU seconds measured per round / step of
each cell kind on the 2-core development CPU with the demo's warm-started model, one torch thread per
cell (``CALIBRATION``): all 30 cells about 0.7 h of wall time, 2 at a time on two idle cores; OPA-DPO
(2 SFT epochs and a pair for every wrong sample) and P3O (4 epochs) are the slow ones. On a shared
machine expect 1.5–2× that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PREF_BASE = ROOT / "examples" / "preference" / "dpo_demo.yaml"
RL_BASE = ROOT / "examples" / "compare" / "t2.yaml"  # its ``base`` section: the demo's task and model
SEEDS = (0, 1, 2)
UNITS = 60  # rounds (preference) or steps (RL)

EVAL = ["task.eval_size=256", "eval.samples=8", "eval.ks=[1,4,8]", "eval.every=0", "train.threads=1"]
RL_BUDGET = [
    "rollout.prompts_per_step=64", "rollout.group_size=8", "optim.micro_batch_size=128",
    f"train.steps={UNITS}", "train.save_every=20", "train.keep_last=1", "train.save_final=false",
]  # fmt: skip
PREF_BUDGET = [f"train.rounds={UNITS}", "train.save_every=20", "train.keep_last=1"]

# variant → (kind, extra overrides); {seed} and {out} are filled in per cell
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "dpo": ("preference", ["loss.preset=dpo", "train.save_final=true"]),  # rto reads its final/
    "ipo": ("preference", ["loss.preset=ipo"]),  # the special case of CoPG (Prop. 3), for reference
    "copg": ("preference", ["loss.preset=copg", "train.save_final=false"]),
    "opa_dpo": ("preference", ["loss.preset=opa_dpo", "train.save_final=false"]),
    "p3o": ("rl", ["algorithm.name=p3o", "rollout.prompts_per_step=256", "rollout.group_size=2",
                   "optim.epochs=4"]),
    "f_dpg_js": ("rl", ["algorithm.name=f_dpg_js"]),
    "f_dpg_kl": ("rl", ["algorithm.name=f_dpg_kl"]),
    "f_dpg_tv": ("rl", ["algorithm.name=f_dpg_tv"]),
    "f_dpg_rkl": ("rl", ["algorithm.name=f_dpg_rkl"]),
    "rto": ("rl", ["algorithm.name=rto",
                   "algorithm.params={{rto_gae: {{dpo_model: {out}/dpo/seed{seed}/final}}}}"]),
}

# CPU seconds of one cell with 1 torch thread, on the 2-core development CPU from the demo's warm start:
# per round / step (the difference of 4- and 2-unit runs of each cell, early in training), per held-out
# evaluation (256 × 8), and the start (imports, model loading). Two cells at a time on two otherwise
# idle cores take about their CPU time in wall time; later rounds can pair more prompts than early ones.
CALIBRATION = {"preference": 0.8, "copg": 1.6, "opa_dpo": 7.2, "rl": 1.3, "p3o": 5.5, "rto": 4.0,
               "eval": 5.0, "start": 8.0}  # fmt: skip


def base_yaml(where: Path, kind: str, model: str) -> Path:
    """The cell's base config file (written into ``where``): the demo's task and model, either kind."""
    import yaml

    path = where / f"base_{kind}.yaml"
    rl = yaml.safe_load(RL_BASE.read_text())["base"]
    if kind == "preference":  # DPO's demo recipe (loss, pairs, optimizer) on the RL cells' task
        data = yaml.safe_load(PREF_BASE.read_text())
        data["task"] = rl["task"]  # dpo_demo.yaml's own task is chain_sum, for its own warm start
        data["pairs"]["sampling"] = rl["rollout"]["sampling"]
    else:
        data = rl
    data["model"]["path"] = model
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cells(out: Path, model: str, names: list[str], bases: Path) -> list[dict[str, Any]]:
    plan = []
    for name in names:
        kind, extra = VARIANTS[name]
        for seed in SEEDS:
            run = out / name / f"seed{seed}"
            args = [a.format(seed=seed, out=out) for a in extra]
            budget = PREF_BUDGET if kind == "preference" else RL_BUDGET
            done = (run / "summary.json").exists()
            resume = "train.resume=true" if (run / "checkpoints").exists() else "train.overwrite=true"
            args = [*EVAL, *budget, *args, f"train.seed={seed}", f"train.output_dir={run}", resume]
            plan.append({"variant": name, "seed": seed, "kind": kind, "run": run, "done": done,
                         "base": base_yaml(bases, kind, model), "args": args,
                         "after": f"dpo/seed{seed}" if name == "rto" else None})  # fmt: skip
    return plan


def check(cell: dict[str, Any]) -> None:
    """Validate a cell's config as ``unipo train`` would, without loading a model."""
    if cell["kind"] == "preference":
        from unipo.preference import get_preset
        from unipo.preference.config import load_preference_config

        cfg = load_preference_config(cell["base"], cell["args"])
        get_preset(cfg.loss.preset).with_params(cfg.loss.params, cfg.loss.ordering, cfg.loss.pairing)
    else:
        from unipo.config import build_algorithm, load_config

        build_algorithm(load_config(cell["base"], cell["args"]).algorithm)


def estimate(plan: list[dict[str, Any]], parallel: int) -> float:
    """Wall seconds: each pending cell's units × its calibrated seconds + 2 evaluations, over ``parallel``."""
    total = 0.0
    for c in plan:
        if c["done"]:
            continue
        per = CALIBRATION.get(c["variant"], CALIBRATION[c["kind"]])
        total += UNITS * per + 2 * CALIBRATION["eval"] + CALIBRATION["start"]
    return total / parallel


def run(plan: list[dict[str, Any]], parallel: int) -> None:
    pending = [c for c in plan if not c["done"]]
    running: list[tuple[dict[str, Any], subprocess.Popen]] = []
    finished = {f"{c['variant']}/seed{c['seed']}" for c in plan if c["done"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while pending or running:
        ready = [c for c in pending if c["after"] is None or c["after"] in finished]
        while ready and len(running) < parallel:
            cell = ready.pop(0)
            pending.remove(cell)
            cell["run"].parent.mkdir(parents=True, exist_ok=True)
            log = open(cell["run"].parent / f"seed{cell['seed']}.log", "a")  # noqa: SIM115 (the child's stdout)
            cmd = [sys.executable, "-m", "unipo.cli", "train", str(cell["base"]), *cell["args"]]
            running.append((cell, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
            print(f"{cell['variant']}/seed{cell['seed']} started")
        time.sleep(1.0)
        for cell, proc in [r for r in running if r[1].poll() is not None]:
            running.remove((cell, proc))
            status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode}), see its .log"
            print(f"{cell['variant']}/seed{cell['seed']} {status}")
            if proc.returncode == 0:
                finished.add(f"{cell['variant']}/seed{cell['seed']}")
        if pending and not running and not any(c["after"] is None or c["after"] in finished for c in pending):
            raise SystemExit(f"cells waiting on a failed dpo run: {[c['variant'] for c in pending]}")


def report(out: Path, names: list[str]) -> dict[str, Any]:
    from unipo.diagnostics.stats import bootstrap_ci

    def summary(name: str, seed: int) -> dict[str, Any] | None:
        path = out / name / f"seed{seed}" / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    rows: dict[str, Any] = {}
    dpo = {s: summary("dpo", s) for s in SEEDS}
    for name in names:
        runs = {s: summary(name, s) for s in SEEDS}
        acc = [r["after/accuracy"] for r in runs.values() if r]
        gain = [r["after/accuracy"] - r["before/accuracy"] for r in runs.values() if r]
        diff = [runs[s]["after/accuracy"] - dpo[s]["after/accuracy"] for s in SEEDS if runs[s] and dpo[s]]
        rows[name] = {"seeds": len(acc), "accuracy": bootstrap_ci(acc) if acc else None,
                      "gain": bootstrap_ci(gain) if gain else None,
                      "minus_dpo": bootstrap_ci(diff) if diff and name != "dpo" else None}  # fmt: skip
    (out / "preference_t2.json").write_text(json.dumps(rows, indent=2, default=str))
    lines = ["| variant | seeds | accuracy after | change from before | minus dpo (paired by seed) |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in rows.items():
        cell = lambda ci: "" if ci is None else f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"  # noqa: E731
        cols = [str(r["seeds"]), cell(r["accuracy"]), cell(r["gain"]), cell(r["minus_dpo"])]
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    (out / "preference_t2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="runs/demo/warm_start", help="initial model (`make demo` writes it)")
    p.add_argument("--out", default="runs/compare-pref-t2")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--dry-run", action="store_true", help="check the configs; print the plan and run time")
    a = p.parse_args()
    out = Path(a.out)
    names = a.variants if "dpo" in a.variants or "rto" not in a.variants else ["dpo", *a.variants]
    with tempfile.TemporaryDirectory() as tmp:
        plan = cells(out, a.model, names, Path(tmp) if a.dry_run else out)
        for c in plan:
            check(c)
    hours = estimate(plan, a.parallel) / 3600
    todo = sum(not c["done"] for c in plan)
    print(f"{todo} of {len(plan)} cells to run, about {hours:.1f} h, {a.parallel} at a time (2-core CPU)")
    if a.dry_run:
        return
    if not Path(a.model).exists():
        raise SystemExit(f"--model {a.model} does not exist (run `make demo` first, or pass a model dir)")
    run(plan, a.parallel)
    report(out, names)


if __name__ == "__main__":
    main()
