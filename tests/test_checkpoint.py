"""Exact resume after SIGKILL, atomic checkpoints under write failure, clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unipo.config import load_config
from unipo.train.checkpoint import complete_checkpoints, latest_checkpoint
from unipo.train.run_dir import DiskFullError
from unipo.train.trainer import Trainer

pytestmark = pytest.mark.slow

STEPS = 6


def overrides(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.path={model_dir}", "model.device=cpu",
        "task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=50", "task.eval_size=4", "task.eval_seed=1000000", "task.chat=false",
        "algorithm.name=grpo", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.sampling.max_new_tokens=4", "optim.lr=1e-3", "optim.micro_batch_size=4", "optim.epochs=2",
        "eval.samples=2", "eval.ks=[1]", f"train.steps={STEPS}", f"train.output_dir={out}",
        "train.save_every=1", "train.threads=1", "train.seed=3", *extra,
    ]  # fmt: skip


def cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "unipo.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for_checkpoint(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run / "checkpoints" / f"step_{step:08d}" / "COMPLETE").exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint for step {step} within {timeout}s")


def stream(run: Path) -> list[dict]:
    """The metrics stream without wall-clock / memory values (those differ between runs)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))})
    return out


def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = cli(overrides(tiny_model_dir, full))
    assert p.wait(timeout=300) == 0, p.stdout.read().decode()[-3000:]
    p = cli(overrides(tiny_model_dir, cut))
    wait_for_checkpoint(cut, 3, p)
    p.send_signal(signal.SIGKILL)  # no chance to clean up
    p.wait()
    p = cli([*overrides(tiny_model_dir, cut), "train.resume=true"])
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out[-3000:]
    assert "resumed from" in out
    a, b = (
        load_file(str(full / "final" / "model.safetensors")),
        load_file(str(cut / "final" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs after resume"
    assert stream(full) == stream(cut)


def test_checkpoint_write_failure_keeps_previous(tiny_model_dir, tmp_path, monkeypatch):
    import unipo.train.state_io as sio

    cfg = load_config(None, overrides(tiny_model_dir, tmp_path / "run", "task.eval_size=0", "train.steps=1"))
    trainer = Trainer(cfg)
    trainer.train()  # writes step_00000001
    first = latest_checkpoint(tmp_path / "run")
    assert first is not None and first.name == "step_00000001"
    before = (first / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sio, "save_file", disk_full)
    trainer.step = 2
    # a full disk stops the run (the CLI says so in one line), naming what it was writing
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*step_00000002"):
        trainer.save_checkpoint()
    assert latest_checkpoint(tmp_path / "run") == first
    def denied(*args, **kwargs):
        raise PermissionError(13, "denied")

    monkeypatch.setattr(sio, "save_file", denied)
    assert trainer.save_checkpoint() is None  # another write failure: reported, the run goes on
    assert latest_checkpoint(tmp_path / "run") == first
    assert (first / "model.safetensors").read_bytes() == before
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if ".tmp-" in p.name] == []


def test_keep_last_retention(tiny_model_dir, tmp_path):
    cfg = load_config(None, overrides(tiny_model_dir, tmp_path / "run", "task.eval_size=0", "train.steps=4",
                                      "train.keep_last=2"))  # fmt: skip
    Trainer(cfg).train()
    names = [p.name for p in complete_checkpoints(tmp_path / "run")]
    assert names == ["step_00000003", "step_00000004"]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000004"


def test_sigterm_saves_checkpoint_and_stops(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    p = cli(overrides(tiny_model_dir, run, "train.save_every=0", "train.steps=400", "task.eval_size=0"))
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 130, out[-2000:]
    ckpt = latest_checkpoint(run)
    assert ckpt is not None, out[-2000:]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "interrupted" and last["signal"] == "SIGTERM"
    assert int(ckpt.name.split("_")[1]) == last["step"] < 400
