"""``unipo demo --env calculator|guess``: a tiny model learns to use a tool / play a game, on CPU, in minutes.

1. build the ~0.4M-parameter character-level model offline;
2. warm-start it briefly on the environment's demonstrations (the trajectory's model tokens are
   trained on, the tool results / observations are only read), so the format is known but the
   success rate is far from 100%;
3. train it with GRPO through the ordinary trainer, the environment configured as ``env:``;
4. report held-out success rate and tool calls (or turns) per episode before and after, with standard
   errors over prompts, and the paired standard error of the change.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from unipo.config import load_config
from unipo.envs.base import Environment
from unipo.envs.builtin import BUILTIN_ENVIRONMENTS
from unipo.train.run_dir import prepare_run_dir, write_json

MODEL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4}
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "calculator": {
        "full": {"sft_steps": 300, "rl_steps": 40, "train_size": 4000, "eval_size": 128, "eval_samples": 4,
                 "prompts": 16, "group": 8, "turn_tokens": 12, "lr": 2e-4, "direct_every": 2},
        "quick": {"sft_steps": 10, "rl_steps": 2, "train_size": 64, "eval_size": 8, "eval_samples": 2,
                  "prompts": 4, "group": 4, "turn_tokens": 12, "lr": 2e-4},
    },
    "guess": {
        "full": {"sft_steps": 40, "rl_steps": 40, "train_size": 2000, "eval_size": 120, "eval_samples": 4,
                 "prompts": 16, "group": 8, "turn_tokens": 4, "lr": 2e-4},
        "quick": {"sft_steps": 10, "rl_steps": 2, "train_size": 64, "eval_size": 8, "eval_samples": 2,
                  "prompts": 4, "group": 4, "turn_tokens": 4, "lr": 2e-4},
    },
}  # fmt: skip
TRAIN_SEED, EVAL_SEED = 1, 2


def demonstration_rows(
    name: str, tokenizer: Any, examples: list[dict[str, Any]], direct_every: int = 0
) -> list[tuple[list[int], ...]]:
    """(prompt ids, trajectory ids, loss mask) per example: model pieces 1, environment pieces 0, and EOS
    after a tool environment's final answer (a Gym episode ends when the environment says so). With
    ``direct_every`` = k, every k-th calculator demonstration answers without the tool (correct, but a
    model cannot compute it in its head): the warm start then leaves the choice to call the tool to RL."""
    cls = BUILTIN_ENVIRONMENTS[name]
    rows = []
    for n, ex in enumerate(examples):
        ids, mask = [], []
        direct = {"direct": True} if direct_every and n % direct_every == 0 else {}
        for text, model in cls.demonstration(ex, **direct):
            toks = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += toks
            mask += [int(model)] * len(toks)
        if issubclass(cls, Environment):
            ids.append(tokenizer.eos_token_id)
            mask.append(1)
        rows.append((tokenizer(ex["question"], add_special_tokens=False)["input_ids"], ids, mask))
    return rows


def overrides(name: str, run_dir: Path, model_dir: Path, b: dict[str, Any]) -> list[str]:
    return [
        f"model.path={model_dir}", "model.device=cpu", "task.source=env", "task.chat=false",
        f"task.train_size={b['train_size']}", f"task.train_seed={TRAIN_SEED}",
        f"task.eval_size={b['eval_size']}",
        f"task.eval_seed={EVAL_SEED}", f"env.name={name}", "algorithm.name=grpo",
        "algorithm.params={kl: {coef: 0.0}}", f"rollout.prompts_per_step={b['prompts']}",
        f"rollout.group_size={b['group']}", f"rollout.sampling.max_new_tokens={b['turn_tokens']}",
        f"optim.lr={b['lr']}", "optim.micro_batch_size=128", f"eval.samples={b['eval_samples']}",
        "eval.ks=[1]", f"train.steps={b['rl_steps']}", f"train.output_dir={run_dir}", "train.overwrite=true",
        "train.seed=0", "train.entropy_change=none",
    ]  # fmt: skip


def _blocks(run_dir: Path, n: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt success [N] of the first and last evaluation (samples.jsonl, appended in order)."""
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    ok = torch.tensor([1.0 if r["reward"] >= 0.999 else 0.0 for r in rows])
    block = n * samples
    return ok[:block].view(n, samples).mean(1), ok[-block:].view(n, samples).mean(1)


def run_env_demo(name: str, output_dir: str | None = None, quick: bool = False,
                 console: Console | None = None) -> dict[str, Any]:  # fmt: skip
    from unipo.models import build_tiny_model, load_model, save_model
    from unipo.train.sft import sft
    from unipo.train.trainer import Trainer

    if name not in BUDGETS:
        raise ValueError(f"unipo demo --env {name!r}: choose one of {', '.join(sorted(BUDGETS))}")
    console = console or Console()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    b = BUDGETS[name]["quick" if quick else "full"]
    t0 = time.perf_counter()
    run_dir = prepare_run_dir(output_dir or f"runs/demo-{name}", overwrite=True)
    base = build_tiny_model(run_dir / "base", seed=0, overwrite=True, **MODEL)
    model, tok = load_model(base, dtype="float32", device="cpu")
    cls = BUILTIN_ENVIRONMENTS[name]
    examples = cls.examples(b["train_size"], TRAIN_SEED + 100)
    rows = demonstration_rows(name, tok, examples, b.get("direct_every", 0))
    losses = sft(model, rows, steps=b["sft_steps"], batch_size=64, lr=1e-3, seed=0, pad_id=tok.pad_token_id)
    console.print(
        f"warm start: {b['sft_steps']} steps on demonstrations, loss {losses[0]:.3f} → {losses[-1]:.3f}"
    )
    model_dir = save_model(model, tok, run_dir / "warm_start")
    summary = Trainer(
        load_config(None, overrides(name, run_dir / "rl", model_dir, b)), console=console
    ).train()
    before, after = _blocks(run_dir / "rl", b["eval_size"], b["eval_samples"])
    delta = after - before
    calls = "tool_calls" if issubclass(cls, Environment) else "turns"
    out = {
        "env": name,
        "success_before": summary["before/accuracy"], "success_after": summary["after/accuracy"],
        "success_before_stderr": summary["before/accuracy_stderr"],
        "success_after_stderr": summary["after/accuracy_stderr"],
        "success_delta_stderr": float(delta.std(unbiased=True) / math.sqrt(len(delta))),
        "greedy_before": summary["before/greedy_accuracy"], "greedy_after": summary["after/greedy_accuracy"],
        "per_episode": calls,
        "calls_before": summary[f"before/{calls}"], "calls_after": summary[f"after/{calls}"],
        "calls_before_stderr": summary[f"before/{calls}_stderr"],
        "calls_after_stderr": summary[f"after/{calls}_stderr"],
        "eval_prompts": b["eval_size"], "eval_samples": b["eval_samples"], "rl_steps": summary["steps"],
        "sft_steps": b["sft_steps"], "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    write_json(run_dir / "summary.json", out)
    _table(console, out)
    return out


def _table(console: Console, s: dict[str, Any]) -> None:
    table = Table(
        title=f"{s['env']}: held-out {s['eval_prompts']} prompts × {s['eval_samples']} episodes (T=1)"
    )
    for col in ("metric", "warm start", f"after {s['rl_steps']} GRPO steps"):
        table.add_column(col, justify="right")
    pct = "{:.1f}% ± {:.1f}"
    table.add_row("success rate", pct.format(100 * s["success_before"], 100 * s["success_before_stderr"]),
                  pct.format(100 * s["success_after"], 100 * s["success_after_stderr"]))  # fmt: skip
    table.add_row("greedy success", f"{100 * s['greedy_before']:.1f}%", f"{100 * s['greedy_after']:.1f}%")
    table.add_row(f"{s['per_episode'].replace('_', ' ')} per episode",
                  f"{s['calls_before']:.2f} ± {s['calls_before_stderr']:.2f}",
                  f"{s['calls_after']:.2f} ± {s['calls_after_stderr']:.2f}")  # fmt: skip
    console.print(table)
    change = 100 * (s["success_after"] - s["success_before"])
    console.print(f"success change {change:+.1f} pts ± {100 * s['success_delta_stderr']:.1f} (paired s.e.); "
                  f"{s['wall_seconds']:.0f}s in all")  # fmt: skip
