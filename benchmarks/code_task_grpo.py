"""GRPO on the generated code task (``task.source=code``): a warm-started tiny model learns to fill
in a linear function's return expression, scored by running its unit tests in the sandbox.

    PYTHONPATH=src nice python benchmarks/code_task_grpo.py --out runs/code_task

Prints the held-out pass rate before and after GRPO with its paired standard error (per prompt,
``eval.samples`` samples each), and the wall time of each phase. Results: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from unipo.config import load_config
from unipo.demo import before_after
from unipo.train.run_dir import prepare_run_dir

MODEL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4}


def warm_start(run_dir: Path, steps: int) -> tuple[Path, list[float]]:
    """The tiny model, fine-tuned on (question, canonical expression) pairs of training problems."""
    from unipo.models import build_tiny_model, load_model, save_model
    from unipo.tasks.code import CodeTask
    from unipo.train.sft import sft, sft_rows

    base = build_tiny_model(run_dir / "base", seed=0, overwrite=True, **MODEL)
    model, tok = load_model(base, dtype="float32", device="cpu")
    examples = CodeTask().examples(4000, seed=1)
    prompts = [tok(ex["question"], add_special_tokens=False)["input_ids"] for ex in examples]
    rows = sft_rows(tok, prompts, [ex["answer"] for ex in examples])
    losses = sft(model, rows, steps=steps, batch_size=64, lr=1e-3, seed=0, pad_id=tok.pad_token_id)
    return save_model(model, tok, run_dir / "warm_start"), [losses[0], losses[-1]]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/code_task")
    p.add_argument("--sft-steps", type=int, default=250)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-size", type=int, default=146)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warm", default="", help="an existing warm-start model directory (skips the SFT)")
    p.add_argument("--overlap", action="store_true", help="evaluate on all problems (seen ones included)")
    args = p.parse_args()
    torch.set_num_threads(1)
    from unipo.train.trainer import Trainer

    t0 = time.perf_counter()
    run_dir = prepare_run_dir(args.out, overwrite=True)
    if args.warm:
        warm, losses = Path(args.warm), [math.nan, math.nan]
    else:
        warm, losses = warm_start(run_dir, args.sft_steps)
    t_sft = time.perf_counter() - t0
    overrides = [
        f"model.path={warm}", "model.device=cpu", "task.source=code", "task.train_size=2000",
        f"task.config={{holdout: {str(not args.overlap).lower()}}}",
        "task.train_seed=1", f"task.eval_size={args.eval_size}", "task.eval_seed=2", "task.chat=false",
        "algorithm.name=grpo", "algorithm.params={kl: {coef: 0.0}}", "rollout.prompts_per_step=16",
        "rollout.group_size=8", "rollout.sampling.max_new_tokens=10", "rollout.sampling.temperature=1.0",
        f"optim.lr={args.lr}", "optim.micro_batch_size=128", f"eval.samples={args.samples}",
        "eval.ks=[1,2,4]",
        f"train.steps={args.steps}", f"train.output_dir={run_dir / 'grpo'}", "train.overwrite=true",
        "train.seed=0", "train.threads=1", "train.entropy_change=none",
    ]  # fmt: skip
    summary = Trainer(load_config(None, overrides)).train()
    before, after = before_after(run_dir / "grpo", args.eval_size, args.samples)
    delta = after - before  # per prompt, paired
    from unipo.tasks.code import CodeTask
    from unipo.train.collect import PromptSampler

    task = CodeTask(holdout=not args.overlap)
    pool = task.examples(2000, 1)  # the trainer's training examples, walked as its sampler walks them
    seen_q = {pool[i]["question"] for i in PromptSampler(len(pool), seed=0).take(args.steps * 16)}
    seen = torch.tensor([ex["question"] in seen_q for ex in task.examples(args.eval_size, 2, "eval")])
    split = {
        f"{name}_{when}": float(acc[mask].mean()) if mask.any() else None
        for name, mask in (("seen", seen), ("unseen", ~seen))
        for when, acc in (("before", before), ("after", after))
    }
    out = {
        "pass_rate_before": float(before.mean()),
        "pass_rate_after": float(after.mean()),
        "change": float(delta.mean()),
        "change_paired_se": float(delta.std(unbiased=True) / math.sqrt(len(delta))),
        "greedy_before": summary.get("before/greedy_accuracy"),
        "greedy_after": summary.get("after/greedy_accuracy"),
        "sft_loss": losses,
        "sft_seconds": t_sft,
        "grpo_seconds": summary["wall_seconds"],
        "total_seconds": time.perf_counter() - t0,
        "steps": args.steps,
        "lr": args.lr,
        "eval_prompts": args.eval_size,
        "samples": args.samples,
        "train_prompt_overlap": summary.get("eval/train_prompt_overlap"),
        "eval_prompts_trained_on": float(seen.float().mean()),
        **split,
    }
    Path(run_dir / "code_task_summary.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
