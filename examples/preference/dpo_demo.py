"""On-policy DPO from a verifier alone: the demo's warm-started tiny model learns chain_sum.

    python examples/preference/dpo_demo.py                      # DPO, the full budget (CPU, minutes)
    python examples/preference/dpo_demo.py --preset sppo --quick  # any preset by name, tiny budget

1. warm-start the tiny model on chain_sum answers (``warm_start`` below: the recipe ``unipo demo`` used
   before it moved to the addition testbed, so docs/results.md §3 still describes this example);
2. each round: sample 8 completions for 64 training prompts, score them with the task's verifier,
   pair best vs worst (OPA-DPO-style on-policy pairs), train the preset's loss on the pairs;
3. print held-out sampled accuracy before/after, paired by prompt, with its standard error.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unipo.demo import before_after
from unipo.preference.config import PreferenceConfig, load_preference_config
from unipo.train.run_dir import prepare_run_dir, write_json

CONFIG = Path(__file__).with_name("dpo_demo.yaml")
QUICK_RUN = {"rounds": 2, "prompts_per_round": 8, "eval_size": 16, "eval_samples": 4}
TASK = {"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}}
MODEL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4}
TRAIN_SEED = 1  # dpo_demo.yaml's task.train_seed
FULL = {"sft_steps": 300, "train_size": 5000}
QUICK = {"sft_steps": 20, "train_size": 200}


def warm_start(run_dir: Path, budget: dict[str, int], console: Console) -> Path:
    """Build the tiny model and fine-tune it on chain_sum (question, answer) pairs; returns its directory."""
    from unipo.models import build_tiny_model, load_model, save_model
    from unipo.tasks import ReasoningGymTask
    from unipo.train.sft import sft, sft_rows

    base = build_tiny_model(run_dir / "base", seed=0, overwrite=True, **MODEL)
    model, tok = load_model(base, dtype="float32", device="cpu")
    examples = ReasoningGymTask(TASK["name"], TASK["config"]).examples(budget["train_size"], TRAIN_SEED)
    ids = [tok(ex["question"], add_special_tokens=False)["input_ids"] for ex in examples]
    rows = sft_rows(tok, ids, [ex["answer"] for ex in examples])
    t0 = time.perf_counter()
    n = budget["sft_steps"]
    losses = sft(model, rows, steps=n, batch_size=64, lr=1e-3, seed=0, pad_id=tok.pad_token_id)
    console.print(f"warm start: {budget['sft_steps']} steps, loss {losses[0]:.3f} → {losses[-1]:.3f} "
                  f"in {time.perf_counter() - t0:.0f}s")  # fmt: skip
    return save_model(model, tok, run_dir / "warm_start")


def demo_config(model_dir: Path, out: Path, preset: str, quick: bool, *extra: str) -> PreferenceConfig:
    """dpo_demo.yaml with the model, run directory, preset and (quick) budget filled in."""
    overrides = [f"model.path={model_dir}", f"train.output_dir={out}", "train.overwrite=true",
                 f"loss.preset={preset}"]  # fmt: skip
    if quick:
        q = QUICK_RUN
        overrides += [
            f"train.rounds={q['rounds']}", f"pairs.prompts_per_round={q['prompts_per_round']}",
            f"task.eval_size={q['eval_size']}", f"eval.samples={q['eval_samples']}", "eval.ks=[1,2,4]",
            f"task.train_size={QUICK['train_size']}",
        ]  # fmt: skip
    return load_preference_config(CONFIG, [*overrides, *extra])


def run(out: str, preset: str = "dpo", quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    from unipo.preference.trainer import PreferenceTrainer

    console = console or Console()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    root = prepare_run_dir(out, overwrite=True)
    model_dir = warm_start(root, QUICK if quick else FULL, console)
    cfg = demo_config(model_dir, root / "preference", preset, quick)
    summary = PreferenceTrainer(cfg, console=console).train()
    n, k = cfg.task.eval_size, cfg.eval.samples
    acc_before, acc_after = before_after(root / "preference", n, k)  # [n] per-prompt accuracies
    delta = acc_after - acc_before  # paired by prompt
    se = lambda v: float(v.std(unbiased=True) / math.sqrt(len(v)))  # noqa: E731
    result = {
        "preset": preset,
        "accuracy_before": float(acc_before.mean()), "accuracy_before_stderr": se(acc_before),
        "accuracy_after": float(acc_after.mean()), "accuracy_after_stderr": se(acc_after),
        "accuracy_delta": float(delta.mean()), "accuracy_delta_stderr": se(delta),
        "greedy_before": summary.get("before/greedy_accuracy"),
        "greedy_after": summary.get("after/greedy_accuracy"),
        "eval_prompts": n, "eval_samples_per_prompt": k, "rounds": summary["rounds"],
        "steps": summary["steps"], "wall_seconds": summary["wall_seconds"],
    }  # fmt: skip
    write_json(root / "result.json", result)
    console.print(
        f"[bold]{preset}[/]: held-out sampled accuracy {100 * result['accuracy_before']:.1f}% "
        f"(± {100 * result['accuracy_before_stderr']:.1f}) → {100 * result['accuracy_after']:.1f}% "
        f"(± {100 * result['accuracy_after_stderr']:.1f}); change {100 * result['accuracy_delta']:+.1f} pts "
        f"± {100 * result['accuracy_delta_stderr']:.1f} (paired s.e., {n} prompts × {k} samples); "
        f"greedy {result['greedy_before']} → {result['greedy_after']}; run directory {root}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset", default="dpo", help="preference preset name (unipo.preference.list_presets)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--out", default="runs/preference_demo", help="run directory")
    args = parser.parse_args()
    run(args.out, args.preset, args.quick)


if __name__ == "__main__":
    main()
