"""Promises of the README's "Guarantees" section that no other test pins down on its own: a kill
during a checkpoint write, atomic files and a torn metrics line, a first SIGINT, a missing model
directory, and model code shipped with a checkpoint."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unipo.cli import app
from unipo.config import load_config
from unipo.models import load_model
from unipo.train.checkpoint import latest_checkpoint
from unipo.train.loop import RESUME_MUTABLE
from unipo.train.run_dir import (
    DiskFullError,
    MetricsLog,
    RunDirError,
    atomic_write_text,
    check_resume_changes,
    read_metrics,
    truncate_metrics,
)
from unipo.train.run_open import open_run_dir
from unipo.train.signals import Interrupted, StopOnSignal


def test_kill_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path: Path) -> None:
    # what SIGKILL during the write of step 2 leaves: step 1 complete, step 2 only as a .tmp- directory
    run, config = tmp_path / "run", {"train": {"steps": 3}}
    done, half = run / "checkpoints" / "step_00000001", run / "checkpoints" / "step_00000002.tmp-k1ll3d"
    done.mkdir(parents=True)
    (done / "COMPLETE").write_text("1\n")
    (run / "checkpoints" / "latest").write_text("step_00000001\n")
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half a file")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    opened = open_run_dir(run, config, overwrite=False, resume=True)
    assert opened.checkpoint == done == latest_checkpoint(run)  # the half-written step is never resumed
    assert not half.exists() and (done / "COMPLETE").exists()  # the orphan is removed, step 1 kept
    assert any("removed 1 unfinished checkpoint write(s)" in n and half.name in n for n in opened.notes)


def test_resume_may_change_the_budget_and_what_changes_no_number(tmp_path: Path) -> None:
    from unipo.train.trainer import Trainer

    mutable = RESUME_MUTABLE + Trainer.resume_mutable  # what an RL run's loop passes
    saved = load_config(None, []).model_dump(mode="json")
    allowed = ["train.steps=500", "train.save_every=7", "train.keep_last=1", "train.loggers=[tensorboard]",
               "model.device=cpu", "train.nproc=2", "eval.every=3", "train.reward_timeout_s=60"]  # fmt: skip
    new = load_config(None, allowed).model_dump(mode="json")
    changes = check_resume_changes(tmp_path, saved, new, mutable)
    assert set(changes) == {a.split("=")[0] for a in allowed}
    for override in ("optim.lr=5e-4", "rollout.group_size=16", "algorithm.name=dapo", "train.seed=9",
                     "task.name=basic_arithmetic", "rollout.sampling.temperature=0.7"):  # fmt: skip
        key = re.escape(override.split("=")[0])  # named with its old and new value, then what may change
        new = load_config(None, [override]).model_dump(mode="json")
        said = rf"changed settings: {key}: .+ → .+only these may change: .*train\.steps"
        with pytest.raises(RunDirError, match=said):
            check_resume_changes(tmp_path, saved, new, mutable)


def test_atomic_write_keeps_the_previous_file_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "summary.json"
    atomic_write_text(path, '{"steps": 1}\n')

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the new content is written but cannot reach the disk
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*summary\.json"):
        atomic_write_text(path, '{"steps": 2}\n')
    monkeypatch.undo()
    assert path.read_text() == '{"steps": 1}\n'  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": float(step)})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a kill in the middle of a line
    with pytest.raises(json.JSONDecodeError):
        read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", tolerant=True)] == [1, 2, 3]
    truncate_metrics(tmp_path, 2)  # resuming from the checkpoint of step 2
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


def test_first_sigint_is_a_stop_request_like_sigterm() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the step finishes and is checkpointed
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(Interrupted, match="SIGINT"), stop.abortable():
            pass  # evaluation, warm start: not even started once a stop was asked
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_missing_model_directory_is_one_error_line(tmp_path: Path) -> None:
    missing, out = tmp_path / "no-model", tmp_path / "run"
    for args in (["train", f"model.path={missing}", "model.device=cpu", f"train.output_dir={out}"],
                 ["eval", str(missing), "--out", str(tmp_path / "ev")]):  # fmt: skip
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], res.output
    assert not out.exists() and not (tmp_path / "ev").exists()  # nothing written


def test_model_code_in_a_checkpoint_is_not_run_by_default(tmp_path: Path) -> None:
    model, ran = tmp_path / "m", tmp_path / "ran"
    model.mkdir()
    auto_map = {"AutoConfig": "probe.ProbeConfig", "AutoModelForCausalLM": "probe.ProbeModel"}
    (model / "config.json").write_text(json.dumps({"model_type": "unipo_remote_probe", "auto_map": auto_map}))
    (model / "probe.py").write_text(  # would leave a mark if imported
        f"open({str(ran)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class ProbeConfig(PretrainedConfig):\n    model_type = 'unipo_remote_probe'\n"
    )
    assert load_config(None, []).model.trust_remote_code is False
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_model(model)
    assert not ran.exists()
