"""Problems a user can fix end in one line, `error: ...`, and exit code 2 (not a traceback)."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unipo.cli import app
from unipo.rollout.memory import GenerationMemoryError, check_kv_cache
from unipo.train.run_dir import DiskFullError, MetricsLog, is_disk_full

TINY_RUN = [
    "model.device=cpu", "task.name=chain_sum",
    "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
    "task.train_size=20", "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=2",
    "rollout.group_size=2", "rollout.sampling.max_new_tokens=3", "optim.micro_batch_size=4", "train.steps=1",
]  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(res) -> str:
    """The error line; asserts exit code 2, no traceback, and that the error is the last line, unwrapped."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    last = res.output.rstrip().splitlines()[-1]
    assert "error: " in last, res.output  # (a progress bar of transformers' may end without a newline)
    return last[last.index("error: ") :]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    line = one_error_line(run("train", f"model.path={tiny_model_dir}", *TINY_RUN, "model.device=cuda",
                              f"train.output_dir={out}"))  # fmt: skip
    assert "model.device='cuda'" in line and "available: cpu" in line and "model.device=cpu" in line
    assert not out.exists()  # refused before the run directory is made
    line = one_error_line(run("eval", str(tiny_model_dir), "model.device=cuda:1", "--out", tmp_path / "ev"))
    assert "model.device='cuda:1'" in line


def test_unknown_device_name(tiny_model_dir: Path, tmp_path: Path):
    line = one_error_line(run("train", f"model.path={tiny_model_dir}", *TINY_RUN, "model.device=gpu0",
                              f"train.output_dir={tmp_path / 'run'}"))  # fmt: skip
    assert "model.device='gpu0' is not a device name" in line


def test_logger_package_not_installed(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if not installed
    out = tmp_path / "run"
    line = one_error_line(run("train", f"model.path={tiny_model_dir}", *TINY_RUN, "train.loggers=[wandb]",
                              f"train.output_dir={out}"))  # fmt: skip
    assert "'wandb' package, not installed" in line and "pip install unipo[wandb]" in line
    assert not out.exists()  # checked before anything is written


def test_read_only_run_directory(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "ro" / "run"
    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):  # what a read-only file system answers (root ignores chmod)
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    line = one_error_line(run("train", f"model.path={tiny_model_dir}", *TINY_RUN, f"train.output_dir={out}"))
    assert f"cannot write to run directory {out} (Read-only file system)" in line
    assert "choose another train.output_dir" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_run_directory_by_permissions(tiny_model_dir: Path, tmp_path: Path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        line = one_error_line(run("train", f"model.path={tiny_model_dir}", *TINY_RUN,
                                  f"train.output_dir={parent / 'run'}"))  # fmt: skip
    finally:
        parent.chmod(0o700)
    assert "cannot write to run directory" in line and "Permission denied" in line


@pytest.mark.slow
def test_disk_full_names_the_path_and_keeps_the_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    import unipo.train.state_io as state_io

    real, calls = state_io.save_file, []

    def fills_up(tensors, path, *args, **kwargs):  # the second checkpoint's write hits a full disk
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(state_io, "save_file", fills_up)
    out = tmp_path / "run"
    line = one_error_line(run("train", f"model.path={tiny_model_dir}", *TINY_RUN, "train.steps=3",
                              "train.save_every=1", f"train.output_dir={out}"))  # fmt: skip
    assert f"no space left on device while writing {out / 'checkpoints' / 'step_00000002'}" in line
    assert f"the last checkpoint, {out / 'checkpoints' / 'step_00000001'}, is complete and kept" in line
    assert "--resume" in line
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_00000001"]  # no half-written step 2 left behind
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert (out / "checkpoints" / "step_00000001" / "COMPLETE").exists()


def test_metrics_log_on_a_full_disk(tmp_path: Path):
    log = MetricsLog(tmp_path / "metrics.jsonl")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    log._f = Full()
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*metrics\.jsonl"):
        log.write({"step": 1})
    # libraries that report the failure in their own words are recognized too
    assert is_disk_full(RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_kv_cache_check_with_the_numbers(tiny):
    model, _ = tiny
    # tiny model: 1 layer, 2 KV heads, head dim 32 / 2 = 16, float32: per row and position
    # 1 × 2 × 16 × 2 (K, V) × 4 bytes = 256 bytes; 8 rows × (10 + 6) positions → 256 × 128 = 32768
    assert check_kv_cache(model, rows=8, prompt_tokens=10, max_new_tokens=6, available=32768) == 32768
    with pytest.raises(GenerationMemoryError) as e:
        check_kv_cache(model, rows=8, prompt_tokens=10, max_new_tokens=6, available=32767)
    msg = str(e.value)
    assert "1 layers × 2 KV heads × 16 head dim × 2 (K and V) × 4 bytes (torch.float32) × 8 rows" in msg
    assert "16 positions = 10 prompt + 6 new tokens" in msg and "rollout.sampling.max_new_tokens" in msg


def test_max_new_tokens_beyond_memory_is_refused_before_the_run(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    huge = "rollout.sampling.max_new_tokens=100000000000"
    line = one_error_line(run("train", f"model.path={tiny_model_dir}", *TINY_RUN, huge,
                              f"train.output_dir={out}"))  # fmt: skip
    assert "KV cache" in line and "GiB is free on cpu" in line and "100000000000 new tokens" in line
    assert not out.exists()
    line = one_error_line(run("eval", str(tiny_model_dir), "model.device=cpu", "task.eval_size=2", huge,
                              "--out", tmp_path / "ev"))  # fmt: skip
    assert "KV cache" in line


def test_a_run_stopped_at_its_start_can_be_run_again(tmp_path: Path):
    from unipo.train.run_dir import RunDirError, prepare_run_dir

    out = tmp_path / "run"  # what a run leaves when an error stops it before its first result
    out.mkdir()
    (out / "config.yaml").write_text("model: {}\n")
    (out / "env.json").write_text("{}\n")
    (out / "metrics.jsonl").write_text("")
    assert prepare_run_dir(out) == out  # no --overwrite needed to fix the error and rerun
    (out / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.1}\n')  # a result: keep it
    with pytest.raises(RunDirError, match="not empty"):
        prepare_run_dir(out)
