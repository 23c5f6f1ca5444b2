"""The one loop (``unipo.train.loop``) that drives RL and preference training: resume rules,
signals (mid-round, during evaluation, a second Ctrl-C during a checkpoint write), failed starts,
orphaned checkpoint writes, and evaluation on its own random stream."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import unipo.train.state_io as sio
from unipo.config import ConfigError, load_config
from unipo.preference import load_preference_config
from unipo.preference.trainer import PreferenceTrainer
from unipo.train.checkpoint import latest_checkpoint
from unipo.train.run_dir import RunDirError, prepare_run_dir
from unipo.train.signals import Interrupted, StopOnSignal
from unipo.train.trainer import Trainer

pytestmark = pytest.mark.slow


def rl_cfg(model_dir: Path, out: Path, *extra: str):
    return load_config(None, [
        f"model.path={model_dir}", "model.device=cpu",
        "task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=40", "task.eval_size=0", "task.eval_seed=1000000", "task.chat=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.sampling.max_new_tokens=4",
        "optim.lr=1e-3", "optim.micro_batch_size=4", "eval.samples=2", "eval.ks=[1]", "eval.greedy=false",
        "train.steps=3", "train.threads=1", "train.seed=5", f"train.output_dir={out}", *extra,
    ])  # fmt: skip


def pref_cfg(model_dir: Path, data: Path, out: Path, *extra: str):
    return load_preference_config(None, [
        f"model.path={model_dir}", "model.device=cpu", f"data.path={data}", "data.chat=false",
        "optim.lr=1e-3", "optim.batch_size=2", "optim.micro_batch_size=2", "optim.epochs=2",
        "train.rounds=2", "train.threads=1", f"train.output_dir={out}", *extra,
    ])  # fmt: skip


def pairs_file(tmp_path: Path) -> Path:
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def final_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def stream(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))})
    return out


def signal_after(monkeypatch, cls, method: str, calls: int, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to this process right after the ``calls``-th call of ``cls.method``."""
    real = getattr(cls, method)
    count = {"n": 0}

    def wrapped(self, *a, **k):
        out = real(self, *a, **k)
        count["n"] += 1
        if count["n"] == calls:
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(cls, method, wrapped)


# ------------------------------------------------------------------ resume rules
def test_resume_refuses_changed_settings_and_accepts_a_longer_budget(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(rl_cfg(tiny_model_dir, out, "train.steps=2", "train.save_every=1")).train()
    # a changed learning rate would be silently overridden by the optimizer state: refused
    with pytest.raises(RunDirError, match=r"optim\.lr: 0\.001 → 0\.0005"):
        Trainer(rl_cfg(tiny_model_dir, out, "train.steps=2", "optim.lr=5e-4", "train.resume=true")).train()
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-3  # config.yaml stays true
    longer = rl_cfg(tiny_model_dir, out, "train.steps=3", "train.save_every=1", "train.resume=true")
    summary = Trainer(longer).train()
    assert summary["steps"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 3


def test_resume_without_checkpoint(tiny_model_dir, tmp_path):
    fresh = tmp_path / "fresh"  # nothing there yet: --resume starts a new run
    assert Trainer(rl_cfg(tiny_model_dir, fresh, "train.steps=1", "train.resume=true")).train()["steps"] == 1
    # a run that saved no checkpoint: resuming would start over and cut its metrics, so refuse
    before = (fresh / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="no complete checkpoint"):
        Trainer(rl_cfg(tiny_model_dir, fresh, "train.steps=2", "train.resume=true")).train()
    assert (fresh / "metrics.jsonl").read_text() == before


def test_resume_and_overwrite_together_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="resume"):  # the config refuses it ...
        rl_cfg(tiny_model_dir, tmp_path / "r", "train.resume=true", "train.overwrite=true")
    with pytest.raises(RunDirError, match="contradict"):  # ... and so does the run directory, for callers
        prepare_run_dir(tmp_path / "r", overwrite=True, resume=True)


def test_failed_start_is_not_a_run_and_orphans_are_removed(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: {}\n")  # what a start that failed (bad logger, OOM) leaves
    (out / "env.json").write_text("{}\n")
    orphan = out / "checkpoints" / "step_00000001.tmp-abc123"
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"half")
    summary = Trainer(rl_cfg(tiny_model_dir, out, "train.steps=1")).train()  # no --overwrite needed
    assert summary["steps"] == 1 and not orphan.exists()


# ------------------------------------------------------------------ signals
def test_rl_stop_during_evaluation_checkpoints_the_last_step_and_resumes_exactly(
    tiny_model_dir, tmp_path, monkeypatch
):
    args = ("task.eval_size=2", "eval.every=1", "train.steps=3")
    full = Trainer(rl_cfg(tiny_model_dir, tmp_path / "full", *args))
    full.train()
    signal_after(monkeypatch, Trainer, "collect", 2)  # the signal arrives during step 2...
    cut = Trainer(rl_cfg(tiny_model_dir, tmp_path / "cut", *args))
    with pytest.raises(Interrupted, match="step 2"):  # ...which finishes and is checkpointed
        cut.train()
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000002"
    monkeypatch.undo()
    resumed = Trainer(rl_cfg(tiny_model_dir, tmp_path / "cut", *args, "train.resume=true"))
    resumed.train()
    for a, b in zip(final_params(full.model), final_params(resumed.model)):
        assert torch.equal(a, b)


def test_stop_during_a_periodic_evaluation_keeps_the_step_record(tiny_model_dir, tmp_path, monkeypatch):
    # evaluate calls: 1 before training, 2 after step 1, 3 after step 2 (cut by the signal)
    args = ("task.eval_size=2", "eval.every=1", "train.steps=3")
    full = Trainer(rl_cfg(tiny_model_dir, tmp_path / "full", *args))
    full.train()
    real, calls = Trainer.evaluate, {"n": 0}

    def evaluate(self, tag="eval"):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # inside the abortable evaluation: Interrupted at once
        return real(self, tag)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    with pytest.raises(Interrupted, match="step 2"):
        Trainer(rl_cfg(tiny_model_dir, tmp_path / "cut", *args)).train()
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000002"
    steps = [r["step"] for r in stream(tmp_path / "cut") if "loss/total" in r]
    assert steps == [1, 2]  # step 2's training record was written before the stop
    state = torch.load(latest_checkpoint(tmp_path / "cut") / "state.pt", weights_only=True)
    spent = state["loop_wall_seconds"]
    assert spent > 0  # the first start's wall time travels in the checkpoint...
    resumed = Trainer(rl_cfg(tiny_model_dir, tmp_path / "cut", *args, "train.resume=true"))
    summary = resumed.train()
    assert summary["wall_seconds"] > spent  # ...and the summary counts both starts
    for a, b in zip(final_params(full.model), final_params(resumed.model)):
        assert torch.equal(a, b)

    def training(run: Path) -> list[dict]:  # step 2's evaluation is the one record the stop dropped
        rows = [r for r in stream(run) if "loss/total" in r]
        return [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in rows]

    assert training(tmp_path / "full") == training(tmp_path / "cut")


def test_evaluation_does_not_move_the_training_random_stream(tiny_model_dir, tmp_path):
    # evaluation samples on its own stream: evaluating every step trains exactly as never evaluating
    a = Trainer(rl_cfg(tiny_model_dir, tmp_path / "a", "task.eval_size=2", "eval.every=1"))
    a.train()
    b = Trainer(rl_cfg(tiny_model_dir, tmp_path / "b", "task.eval_size=2", "eval.every=0"))
    b.train()
    for x, y in zip(final_params(a.model), final_params(b.model)):
        assert torch.equal(x, y)


def test_signal_during_the_first_evaluation_stops_at_once(tiny_model_dir, tmp_path, monkeypatch):
    def evaluate(self, tag="eval"):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the abortable evaluation
        raise AssertionError("the evaluation went on after the signal")

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="nothing to resume"):
        Trainer(rl_cfg(tiny_model_dir, out, "task.eval_size=2")).train()
    monkeypatch.undo()
    assert Trainer(rl_cfg(tiny_model_dir, out, "train.steps=1")).train()["steps"] == 1  # not "not empty"


def test_second_sigint_during_a_checkpoint_write_waits_for_it(tiny_model_dir, tmp_path, monkeypatch):
    real = sio.save_file

    def save_file(tensors, path):
        os.kill(os.getpid(), signal.SIGINT)  # first: stop after this step
        os.kill(os.getpid(), signal.SIGINT)  # second: would abandon the write, so it waits for it
        real(tensors, path)

    monkeypatch.setattr(sio, "save_file", save_file)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(rl_cfg(tiny_model_dir, out, "train.save_every=1")).train()
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step_00000001" and (ckpt / "COMPLETE").exists()
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]
    load_file(str(ckpt / "model.safetensors"))  # complete and readable


def test_stop_on_signal_rules():
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"  # first: a request, no exception
        with pytest.raises(Interrupted), stop.abortable():
            pass  # an abortable phase does not even start once a stop was asked
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # second SIGINT: at once


# ------------------------------------------------------------------ preference through the same loop
def test_preference_stop_mid_round_resumes_at_the_next_minibatch(tiny_model_dir, tmp_path, monkeypatch):
    data = pairs_file(tmp_path)  # 5 pairs, batch 2, 2 epochs: 6 optimizer steps a round, 2 rounds
    full = PreferenceTrainer(pref_cfg(tiny_model_dir, data, tmp_path / "full"))
    full.train()
    assert full.step == 12
    signal_after(monkeypatch, PreferenceTrainer, "optimizer_step", 4)  # mid-round 1, epoch 2
    cut = PreferenceTrainer(pref_cfg(tiny_model_dir, data, tmp_path / "cut"))
    with pytest.raises(Interrupted, match="step 4"):
        cut.train()
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000004"
    last = json.loads((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "interrupted" and last["signal"] == "SIGTERM"
    monkeypatch.undo()
    resumed = PreferenceTrainer(pref_cfg(tiny_model_dir, data, tmp_path / "cut", "train.resume=true"))
    resumed.train()
    assert resumed.step == 12 and resumed.round == 2
    for a, b in zip(final_params(full.model), final_params(resumed.model)):
        assert torch.equal(a, b)
    assert stream(tmp_path / "full") == stream(tmp_path / "cut")
