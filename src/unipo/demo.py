"""``unipo demo``: GRPO teaches a tiny model to add on a laptop CPU, in minutes, and the gain
shows on problems it never saw.

1. build a small Llama-style model with a character tokenizer, fully offline, and warm-start it
   on worked column additions (``unipo.tasks.addition``) from the task's warm-start pool, stopped
   part-way up its learning curve (``unipo.tasks.testbed``); the warm start is cached by its
   recipe, so a second run skips it;
2. train it with the ``grpo`` preset through the ordinary trainer on the RL pool;
3. evaluate before and after on the evaluation pool, which no warm-start or RL problem is in
   (pools are split by a hash of the problem text; the overlap is checked and reported), with
   64 samples per problem for pass@k at k = 1..64; print the table and write the run directory
   (metrics.jsonl, plots/ with the pass@k curve, report.html, final/ model, summary.json).

``python -m unipo.demo --size large`` runs the same testbed with a ~25M-parameter model and
five-digit problems, for a GPU.

A non-empty demo directory is refused unless ``overwrite`` (``unipo demo --overwrite``; ``make
demo`` passes it and says that it replaces the previous demo run). Both saved models (``warm_start/``
and ``final/``) carry ``unipo_task.json``: the task and prompt format they were trained with (no
chat template), which ``unipo eval`` uses.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from unipo.config import load_config
from unipo.models.task_file import write_task_file
from unipo.tasks.testbed import WarmStart, WarmStartRecipe, cached_warm_start, warm_start_problems
from unipo.train.run_dir import RunDirError, prepare_run_dir, read_metrics, write_json


@dataclass(frozen=True)
class Budget:
    """The RL run and its evaluation (not part of the warm start's cache key)."""

    grpo_steps: int
    warmup_steps: int  # linear lr warm-up: Adam's first full-size steps knock a fragile warm start back
    prompts_per_step: int
    group_size: int
    lr: float
    train_size: int  # problems drawn from the RL pool
    eval_size: int  # problems drawn from the evaluation pool
    eval_samples: int  # samples per evaluation problem: pass@k for k = 1..eval_samples
    max_new_tokens: int
    micro_batch_size: int
    max_batch: int = 256  # rows one generate call decodes
    device: str = "cpu"
    # torch CPU threads for the warm start and the run (0: torch's default, at most 4). One thread
    # makes the demo bit-reproducible (docs/results.md §4) and keeps it from stalling on a busy
    # machine: with 2 threads on 2 shared cores the warm start took 637 s, with one 166 s (measured).
    threads: int = 1


@dataclass(frozen=True)
class Testbed:
    recipe: WarmStartRecipe
    budget: Budget


SMALL = Testbed(
    WarmStartRecipe(task={"digits": 3}, model={"hidden_size": 128, "num_layers": 2, "num_heads": 4},
                    examples=20_000, sft_steps=360, batch_size=64, lr=1e-3, seed=0),
    Budget(grpo_steps=80, warmup_steps=10, prompts_per_step=32, group_size=8, lr=3e-4, train_size=20_000,
           eval_size=256, eval_samples=64, max_new_tokens=40, micro_batch_size=256),
)  # fmt: skip
# Tens of millions of parameters and five-digit problems (five carry steps, ~52 tokens), for a GPU.
# Its warm-start length and learning rates are first guesses scaled from the small testbed, not yet
# measured on a GPU: check the warm start's numbers (the table's "before" column) on a first run.
LARGE = Testbed(
    WarmStartRecipe(task={"digits": 5}, model={"hidden_size": 512, "num_layers": 8, "num_heads": 8},
                    examples=200_000, sft_steps=600, batch_size=128, lr=3e-4, seed=0),
    Budget(grpo_steps=300, warmup_steps=20, prompts_per_step=64, group_size=16, lr=5e-5, train_size=200_000,
           eval_size=512, eval_samples=64, max_new_tokens=64, micro_batch_size=256, max_batch=1024,
           device="auto", threads=0),
)  # fmt: skip
SIZES: dict[str, Testbed] = {"small": SMALL, "large": LARGE}


def quick(tb: Testbed) -> Testbed:
    """A tiny budget of the same testbed (smoke test, seconds on CPU)."""
    return Testbed(
        replace(tb.recipe, examples=256, sft_steps=4, batch_size=16),
        replace(tb.budget, grpo_steps=2, warmup_steps=0, prompts_per_step=4, group_size=4, train_size=64,
                eval_size=8, eval_samples=8, max_new_tokens=12, micro_batch_size=64),
    )  # fmt: skip


def demo_overrides(run_dir: Path, model_dir: Path, tb: Testbed) -> list[str]:
    """The GRPO config of the demo, as dotted overrides (shown in the run's config.yaml)."""
    b = tb.budget
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= b.eval_samples]
    return [
        f"model.path={model_dir}",
        f"model.device={b.device}",
        "task.source=addition",
        f"task.config={json.dumps(tb.recipe.task)}",
        f"task.train_size={b.train_size}",
        "task.train_seed=1",
        f"task.eval_size={b.eval_size}",
        "task.eval_seed=2",
        "task.chat=false",
        "algorithm.name=grpo",
        "algorithm.params={kl: {coef: 0.0}}",
        f"rollout.prompts_per_step={b.prompts_per_step}",
        f"rollout.group_size={b.group_size}",
        f"rollout.sampling.max_new_tokens={b.max_new_tokens}",
        f"rollout.max_batch={b.max_batch}",
        "rollout.sampling.temperature=1.0",
        f"optim.lr={b.lr}",
        f"optim.warmup_steps={b.warmup_steps}",
        f"optim.micro_batch_size={b.micro_batch_size}",
        f"eval.samples={b.eval_samples}",
        f"eval.ks={ks}",
        f"train.steps={b.grpo_steps}",
        f"train.output_dir={run_dir}",
        "train.overwrite=true",
        "train.seed=0",
        f"train.threads={b.threads}",
    ]


def warm_start(tb: Testbed, device: str, console: Console, cache: Path | None = None) -> WarmStart:
    """The testbed's warm start from the cache, or built (with a progress line) and cached."""
    n = tb.recipe.sft_steps
    with console.status("[bold]supervised warm start") as status:
        ws = cached_warm_start(
            tb.recipe, device=device, root=cache,
            on_step=lambda i, loss: status.update(f"[bold]warm start[/] {i + 1}/{n} loss {loss:.3f}"),
        )  # fmt: skip
    how = "found in the cache" if ws.cached else f"built in {ws.info['seconds']:.0f}s"
    loss = f"loss {ws.info['loss_first']:.3f} → {ws.info['loss_last']:.3f}"
    console.print(f"warm start ({n} SFT steps, {loss}) {how}: {ws.path.parent}")
    return ws


def check_demo_dir(output_dir: str | Path, overwrite: bool) -> bool:
    """Refuse a non-empty demo directory without ``overwrite`` (``RunDirError``); returns whether
    there is a previous demo run to replace."""
    p = Path(output_dir)
    previous = p.is_dir() and any(p.iterdir())
    if previous and not overwrite:
        raise RunDirError(
            f"demo directory {p} is not empty (a previous demo run?); pass --overwrite to replace it, "
            "or --output-dir DIR to keep it"
        )
    return previous


def before_after(run_dir: Path, n_prompts: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt sampled accuracy [N] of the first and the last evaluation in samples.jsonl."""
    before, after = correct_before_after(run_dir, n_prompts, samples)
    return before.mean(1), after.mean(1)


def correct_before_after(run_dir: Path, n_prompts: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness [N, samples] of every sample of the first and the last evaluation in samples.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    block = n_prompts * samples  # evaluations are appended in order: before, (during), after
    correct = torch.tensor([1.0 if r["reward"] >= 0.999 else 0.0 for r in rows])
    return correct[:block].view(n_prompts, samples), correct[-block:].view(n_prompts, samples)


def passk_per_prompt(correct: torch.Tensor) -> torch.Tensor:
    """Unbiased pass@k [N, n] of each prompt for k = 1..n, from correctness [N, n]."""
    from unipo.diagnostics.passk import pass_at_k

    n = correct.shape[1]
    counts = [int(c) for c in correct.sum(1)]
    return torch.tensor([[pass_at_k(n, c, k) for k in range(1, n + 1)] for c in counts], dtype=torch.float64)


def passk_curves(c_before: torch.Tensor, c_after: torch.Tensor) -> dict[str, list[float]]:
    """pass@k for k = 1..n before and after (means over prompts) and the paired standard error
    of each change, from correctness [N, n] of the same prompts before and after."""
    before, after = passk_per_prompt(c_before), passk_per_prompt(c_after)  # [N, n]
    se = (after - before).std(0, unbiased=True) / math.sqrt(len(before))  # [n]
    return {"k": list(range(1, before.shape[1] + 1)), "before": before.mean(0).tolist(),
            "after": after.mean(0).tolist(), "delta_stderr": se.tolist()}  # fmt: skip


def run_demo(
    output_dir: str = "runs/demo",
    overwrite: bool = False,
    quick: bool = False,
    console: Console | None = None,
    size: str = "small",
    cache: Path | None = None,
) -> dict[str, Any]:
    from unipo.diagnostics.report import write_report
    from unipo.train.trainer import Trainer
    from unipo.train.utils import resolve_device

    if size not in SIZES:
        raise ValueError(f"demo size {size!r} is not one of {sorted(SIZES)}")
    console = console or Console()
    tb = globals()["quick"](SIZES[size]) if quick else SIZES[size]
    torch.set_num_threads(tb.budget.threads or max(1, min(torch.get_num_threads(), 4)))
    if check_demo_dir(output_dir, overwrite):
        console.print(f"replacing the previous demo run in {output_dir} (--overwrite)")
    t_start = time.perf_counter()
    run_dir = prepare_run_dir(output_dir, overwrite=overwrite)
    device = str(resolve_device(tb.budget.device))
    ws = warm_start(tb, device, console, cache)
    model_dir = run_dir / "warm_start"  # a copy beside the run: examples/compare/*.yaml start from it
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(ws.path, model_dir)
    cfg = load_config(None, demo_overrides(run_dir, model_dir, tb))
    trainer = Trainer(cfg, console=console)
    # the copy records the task and prompt format it was trained with, as final/ will (unipo eval)
    write_task_file(model_dir, trainer.task_settings)
    summary = trainer.train()
    # disjointness by text: the problems evaluated against every warm-start and RL-training problem
    assert trainer.eval_set is not None
    held = trainer.eval_set.examples
    warm_q = {ex["question"] for ex in warm_start_problems(tb.recipe)}
    rl_q = {ex["question"] for ex in trainer.train_examples}
    seen = torch.tensor([ex["question"] in warm_q or ex["question"] in rl_q for ex in held])  # [N]
    b = tb.budget
    c_before, c_after = correct_before_after(run_dir, len(held), b.eval_samples)  # [N, n]
    acc_before, acc_after = c_before.mean(1), c_after.mean(1)
    delta = acc_after - acc_before  # paired by prompt
    metrics = read_metrics(run_dir / "metrics.jsonl")
    out = {
        "accuracy_before": summary["before/accuracy"],
        "accuracy_after": summary["after/accuracy"],
        "accuracy_delta_stderr": float(delta.std(unbiased=True) / math.sqrt(len(delta))),
        "accuracy_before_seen": float(acc_before[seen].mean()) if seen.any() else None,
        "accuracy_after_seen": float(acc_after[seen].mean()) if seen.any() else None,
        "accuracy_before_unseen": float(acc_before[~seen].mean()) if (~seen).any() else None,
        "accuracy_after_unseen": float(acc_after[~seen].mean()) if (~seen).any() else None,
        "greedy_before": summary["before/greedy_accuracy"],
        "greedy_after": summary["after/greedy_accuracy"],
        "entropy_before": summary["before/entropy"],
        "entropy_after": summary["after/entropy"],
        "length_before": summary["before/length_mean"],
        "length_after": summary["after/length_mean"],
        "reward_before": summary["before/reward_mean"],
        "reward_after": summary["after/reward_mean"],
        "train_reward_first": next((m["reward/mean"] for m in metrics if "reward/mean" in m), None),
        "train_reward_last": summary["last"].get("reward/mean"),
        "train_prompt_overlap": float(seen.float().mean()),
        "warm_start_prompt_overlap": sum(ex["question"] in warm_q for ex in held) / len(held),
        "rl_prompt_overlap": sum(ex["question"] in rl_q for ex in held) / len(held),
        "pass_at_k": passk_curves(c_before, c_after),
        "eval_prompts": b.eval_size,
        "eval_samples_per_prompt": b.eval_samples,
        "steps": summary["steps"],
        "grpo_wall_seconds": summary["wall_seconds"],
        "wall_seconds": time.perf_counter() - t_start,
        "warm_start": {
            "path": str(ws.path.parent),
            "key": ws.key,
            "cached": ws.cached,
            "build_seconds": ws.info["seconds"],
            "recipe": ws.info["recipe"],
        },
        "task": {"source": "addition", "config": tb.recipe.task},
        "model": tb.recipe.model,
        "size": size,
    }
    c = out["pass_at_k"]
    out["warm_start_in_regime"] = bool(  # the testbed's intent: partly learned, room to sharpen
        0.10 <= c["before"][0] <= 0.60 and (len(c["k"]) < 16 or c["before"][15] >= 2 * c["before"][0])
    )
    write_json(run_dir / "summary.json", {**summary, **out})
    write_report(run_dir, [run_dir])  # the HTML page shows the demo's numbers and the pass@k curve
    _print_table(console, out)
    _print_passk(console, out)
    if not out["warm_start_in_regime"] and not quick:
        console.print("[yellow]the warm start is outside the testbed's regime (sampled accuracy 10-60%, "
                      "pass@16 ≥ 2 × pass@1): adjust sft_steps in src/unipo/demo.py[/]")  # fmt: skip
    console.print(
        f"run directory: [bold]{run_dir}[/] (metrics.jsonl, plots/, report.html, final/, summary.json)"
    )
    return out


def _print_passk(console: Console, s: dict[str, Any]) -> None:
    c = s["pass_at_k"]
    ks = [k for k in (1, 4, 16, 64) if k <= len(c["k"])]
    b, a, se = c["before"], c["after"], c["delta_stderr"]
    cells = ", ".join(f"pass@{k} {b[k - 1]:.3f} → {a[k - 1]:.3f} (± {se[k - 1]:.3f})" for k in ks)
    console.print(f"never-seen problems (overlap with warm-start and RL problems: "
                  f"{100 * s['train_prompt_overlap']:.0f}%): {cells} (paired s.e.)")  # fmt: skip
    n = len(c["k"])
    d1, dn = a[0] - b[0], a[n - 1] - b[n - 1]
    wide = "widened" if dn > 2 * se[n - 1] else "narrowed" if dn < -2 * se[n - 1] else "kept"
    console.print(f"pass@1 {100 * d1:+.1f} pts, pass@{n} {100 * dn:+.1f} pts: RL "
                  f"{'sharpened' if d1 > 2 * se[0] else 'did not sharpen'} sampling and {wide} the set of "
                  f"problems some sample solves (±2 s.e.); curve in plots/pass_at_k_curve.png")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="unipo demo: the addition testbed (small: CPU, large: GPU)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    parser.add_argument("--output-dir", default=None, help="run directory (default runs/demo[-large])")
    args = parser.parse_args()
    out = args.output_dir or ("runs/demo" if args.size == "small" else f"runs/demo-{args.size}")
    run_demo(out, quick=args.quick, size=args.size)


def _print_table(console: Console, s: dict[str, Any]) -> None:
    from unipo.diagnostics.evalset import eval_set_label

    label = eval_set_label([s.get("train_prompt_overlap")])  # "held-out set" only at 0 overlap
    table = Table(
        title=f"{label}: {s['eval_prompts']} prompts × {s['eval_samples_per_prompt']} samples (T=1.0)"
    )
    for col in ("metric", "before GRPO", "after GRPO", "change"):
        table.add_column(col, justify="right")
    for label, key, pct in (
        ("sampled accuracy", "accuracy", True),
        ("greedy accuracy", "greedy", True),
        ("mean reward", "reward", False),
        ("token entropy", "entropy", False),
        ("response length", "length", False),
    ):
        b, a = s[f"{key}_before"], s[f"{key}_after"]
        fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        table.add_row(label, fmt(b), fmt(a), (f"{100 * (a - b):+.1f} pts" if pct else f"{a - b:+.3f}"))
    console.print(table)
    if s["accuracy_after_unseen"] is not None and s["accuracy_after_seen"] is not None:
        console.print(
            f"evaluation prompts also in the training pool ({100 * s['train_prompt_overlap']:.0f}%): "
            f"{100 * s['accuracy_before_seen']:.1f}% → {100 * s['accuracy_after_seen']:.1f}%; "
            f"never seen in training: {100 * s['accuracy_before_unseen']:.1f}% → "
            f"{100 * s['accuracy_after_unseen']:.1f}%"
        )
    console.print(
        f"sampled accuracy change: {100 * (s['accuracy_after'] - s['accuracy_before']):+.1f} pts "
        f"± {100 * s['accuracy_delta_stderr']:.1f} (paired s.e.); evaluation/training prompt overlap "
        f"{100 * s['train_prompt_overlap']:.1f}%; {s['steps']} GRPO steps; total {s['wall_seconds']:.0f}s"
    )


if __name__ == "__main__":
    main()
