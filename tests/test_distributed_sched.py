"""A prompt scheduler and a buffer on two processes (torchrun, gloo, DDP): Rollout-GDRO's variable
group sizes split over ranks and gathered, rank 0's plan broadcast, the replay buffer recomposing the
gathered batch. One launch of two steps (~75 s on two busy cores); an exact resume of the same run on
two processes (three launches, ~4 min) passed once and is left out of the suite: the one-process
resume of every scheduler and buffer is tests/test_sched_loop.py's, a two-process resume
tests/test_distributed.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def unipo(*a: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "unipo.cli", *a], env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", f"model.path={model_dir}", "model.device=cpu", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=4",
        "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=4", "rollout.group_size=4",
        "rollout.sampling.max_new_tokens=4", "optim.lr=1e-2", "optim.micro_batch_size=4", "train.threads=1",
        "train.seed=3", "train.nproc=2", "train.parallel=ddp", "algorithm.name=grpo_replay",
        "algorithm.scheduler=rollout_gdro",
        "rewards=[{name: format, weight: 1.0, params: {pattern: '[0-9]'}}]",
        f"train.output_dir={out}", *extra,
    ]  # fmt: skip


def records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "reward/mean" in r:
            out.append({k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))})
    return out


def test_rollout_gdro_with_replay_on_two_processes(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    unipo(*args(tiny_model_dir, run, "train.steps=2"))
    a = records(run)
    assert len(a) == 2 and a[0]["sched/alloc_known_frac"] == 0.0  # nothing observed yet: G each
    # every prompt is known at the second step: GDRO's allocation (mean G) split over the ranks by
    # whole groups, and replayed groups join the gathered batch
    assert a[1]["sched/alloc_known_frac"] == 1.0 and a[1]["sched/alloc_mean"] == 4.0
    assert a[1]["replay/groups"] > 0 and "replay/ratio_mean" in a[1] and a[1]["replay/staleness_mean"] == 1.0
