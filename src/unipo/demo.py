"""``unipo demo``: a tiny model learns arithmetic through GRPO on a laptop CPU, in minutes.

1. build a small Llama-style model with a character tokenizer, fully offline;
2. give it a short supervised warm start on reasoning-gym ``chain_sum`` problems, so its
   accuracy starts low but above zero (and greedy decoding beats sampling);
3. train it with the ``grpo`` preset through the ordinary trainer;
4. print before/after on evaluation problems drawn with a different seed (with the share of them
   that are also training problems: two-term sums repeat), and write the run directory
   (metrics.jsonl, plots/, final/ model, summary.json).

A non-empty demo directory is refused unless ``overwrite`` (``unipo demo --overwrite``; ``make
demo`` passes it and says that it replaces the previous demo run). Both saved models (``warm_start/``
and ``final/``) carry ``unipo_task.json``: the prompt format they were trained with (no chat
template), which ``unipo eval`` uses.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from unipo.config import Config, load_config
from unipo.train.run_dir import RunDirError, prepare_run_dir, read_metrics, write_json

TASK = {"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}}
MODEL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4}
# reasoning-gym derives item i from Random(seed + i): seeds must be far apart to differ
TRAIN_SEED, EVAL_SEED = 1, 1_000_000
FULL = {"sft_steps": 300, "grpo_steps": 200, "train_size": 5000, "eval_size": 512, "eval_samples": 8}
QUICK = {"sft_steps": 20, "grpo_steps": 2, "train_size": 200, "eval_size": 16, "eval_samples": 4}


def demo_overrides(run_dir: Path, model_dir: Path, budget: dict[str, int]) -> list[str]:
    """The GRPO config of the demo, as dotted overrides (shown in the run's config.yaml)."""
    return [
        f"model.path={model_dir}",
        "model.device=cpu",
        f"task.name={TASK['name']}",
        f"task.config={TASK['config']}",
        f"task.train_size={budget['train_size']}",
        f"task.train_seed={TRAIN_SEED}",
        f"task.eval_size={budget['eval_size']}",
        f"task.eval_seed={EVAL_SEED}",
        "task.chat=false",
        "algorithm.name=grpo",
        "algorithm.params={kl: {coef: 0.0}}",
        "rollout.prompts_per_step=32",
        "rollout.group_size=8",
        "rollout.sampling.max_new_tokens=8",
        "rollout.sampling.temperature=1.0",
        "optim.lr=3e-4",
        "optim.micro_batch_size=256",
        f"eval.samples={budget['eval_samples']}",
        "eval.ks=[1,4,8]" if budget["eval_samples"] >= 8 else "eval.ks=[1,2,4]",
        f"train.steps={budget['grpo_steps']}",
        f"train.output_dir={run_dir}",
        "train.overwrite=true",
        "train.seed=0",
    ]


def warm_start(run_dir: Path, budget: dict[str, int], console: Console, cfg: Config | None = None) -> Path:
    """Build the tiny model and fine-tune it on (question, answer) pairs; returns its directory.

    The prompts are the questions as the GRPO run renders them (``cfg.task``, by default the demo's
    own: plain text, no chat template), and the saved model records that format in ``unipo_task.json``.
    """
    from unipo.models import build_tiny_model, load_model, save_model
    from unipo.models.task_file import task_settings
    from unipo.tasks import ReasoningGymTask
    from unipo.train.sft import sft, sft_rows

    base = build_tiny_model(run_dir / "base", seed=0, overwrite=True, **MODEL)
    model, tok = load_model(base, dtype="float32", device="cpu")
    task = ReasoningGymTask(TASK["name"], TASK["config"])
    examples = task.examples(budget["train_size"], TRAIN_SEED)
    ids = [tok(ex["question"], add_special_tokens=False)["input_ids"] for ex in examples]
    rows = sft_rows(tok, ids, [ex["answer"] for ex in examples])
    t0 = time.perf_counter()
    losses = sft(model, rows, steps=budget["sft_steps"], batch_size=64, lr=1e-3, seed=0,
                 pad_id=tok.pad_token_id, console=console)  # fmt: skip
    console.print(f"warm start: {budget['sft_steps']} steps, loss {losses[0]:.3f} → {losses[-1]:.3f} "
                  f"in {time.perf_counter() - t0:.0f}s")  # fmt: skip
    cfg = cfg or load_config(None, demo_overrides(run_dir, run_dir / "warm_start", budget))
    settings = task_settings(cfg.task, tok, cfg.rollout.sampling.max_new_tokens)
    return save_model(model, tok, run_dir / "warm_start", task=settings)


def before_after(run_dir: Path, n_prompts: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt sampled accuracy [N] of the first and the last evaluation in samples.jsonl."""
    import json

    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    block = n_prompts * samples  # evaluations are appended in order: before, (during), after
    correct = torch.tensor([1.0 if r["reward"] >= 0.999 else 0.0 for r in rows])
    return correct[:block].view(n_prompts, samples).mean(1), correct[-block:].view(n_prompts, samples).mean(1)


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


def run_demo(
    output_dir: str = "runs/demo",
    overwrite: bool = False,
    quick: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    from unipo.diagnostics.report import write_report
    from unipo.tasks import ReasoningGymTask
    from unipo.train.trainer import Trainer

    console = console or Console()
    if check_demo_dir(output_dir, overwrite):
        console.print(f"replacing the previous demo run in {output_dir} (--overwrite)")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    budget = QUICK if quick else FULL
    t_start = time.perf_counter()
    run_dir = prepare_run_dir(output_dir, overwrite=overwrite)
    cfg = load_config(None, demo_overrides(run_dir, run_dir / "warm_start", budget))
    warm_start(run_dir, budget, console, cfg)
    trainer = Trainer(cfg, console=console)
    summary = trainer.train()
    task = ReasoningGymTask(TASK["name"], TASK["config"])
    train_q = {ex["question"] for ex in task.examples(budget["train_size"], TRAIN_SEED)}
    held = task.examples(budget["eval_size"], EVAL_SEED)
    seen = torch.tensor([ex["question"] in train_q for ex in held])  # [N] evaluation prompt also in training
    acc_before, acc_after = before_after(run_dir, budget["eval_size"], budget["eval_samples"])
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
        "eval_prompts": budget["eval_size"],
        "eval_samples_per_prompt": budget["eval_samples"],
        "steps": summary["steps"],
        "grpo_wall_seconds": summary["wall_seconds"],
        "wall_seconds": time.perf_counter() - t_start,
        "task": TASK,
        "model": MODEL,
    }
    write_json(run_dir / "summary.json", {**summary, **out})
    write_report(run_dir, [run_dir])  # the HTML page now shows the demo's numbers too
    _print_table(console, out)
    console.print(f"run directory: [bold]{run_dir}[/] (metrics.jsonl, plots/, final/, summary.json)")
    return out


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
