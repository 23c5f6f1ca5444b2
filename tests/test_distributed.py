"""Training on several processes (torch.distributed with gloo on 127.0.0.1, 2 processes): every
preset gives the one-process numbers under DDP and FSDP2, runs end to end under torchrun and Ray,
resumes exactly and on another number of processes, and a dead rank stops the others.

These start real processes (torchrun, a local Ray cluster); they run one at a time (one xdist
group) because each uses both cores of the CI machine.
"""

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

from unipo.train.checkpoint import latest_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def unipo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "unipo.cli", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def run_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", f"model.path={model_dir}", "model.device=cpu", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=40",
        "task.eval_size=4", "task.eval_seed=1000000", "task.chat=false", "rollout.prompts_per_step=4",
        "rollout.group_size=4", "rollout.sampling.max_new_tokens=4", "optim.lr=1e-2", "optim.epochs=2",
        "optim.micro_batch_size=4", "eval.samples=2", "eval.ks=[1]", "eval.greedy=false", "train.threads=1",
        "train.seed=3", f"train.output_dir={out}", *extra,
    ]  # fmt: skip


def params(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------ the central acceptance
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_every_rl_preset_gives_the_one_process_update(tiny_model_dir, tmp_path, mode):
    # 2 processes, each with half of a fixed global batch, against 1 process on the whole batch:
    # one optimizer step of every registered RL preset (+ several micro-batches, minibatches and
    # epochs for a few), loss, every gradient and the parameters after an SGD step
    out = tmp_path / "rl.json"
    ok(torchrun(str(ROOT / "tests" / "dist_worker.py"), mode, str(tiny_model_dir), str(out), "rl"))
    result = json.loads(out.read_text())
    from unipo.algorithms import list_algorithms

    assert {a.name for a in list_algorithms()} <= set(result)
    for name, d in result.items():
        assert d["loss"] < 1e-5 and d["grad"] < 1e-5 and d["param"] < 1e-5, (name, d)
        # averaged, not summed, over ranks: a sum would make the gradient norm twice the one process's
        assert abs(d["grad_norm_ratio"] - 1.0) < 1e-5, (name, d)


def test_fsdp2_writes_the_full_weights_a_vllm_sync_reads(tiny_model_dir, tmp_path):
    # a sync to a vLLM server writes policy_weights inside full_params: state_dict() there gave
    # FSDP2's shards (DTensors), and the unsharded parameters are views of one all-gather buffer that
    # safetensors refuses to write as they are (found by tests/test_vllm_scale.py under fsdp2)
    out = tmp_path / "weights.json"
    ok(torchrun(str(ROOT / "tests" / "dist_worker.py"), "fsdp2", str(tiny_model_dir), str(out), "weights"))
    result = json.loads(out.read_text())
    assert result["names"] and result["diff"] == 0.0, result


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_every_preference_preset_gives_the_one_process_step(tiny_model_dir, tmp_path, mode):
    responses = ["The answer is {} because counting forward", "Maybe {} from the green apples",
                 "I think {} or nothing at all"]  # fmt: skip
    rows = [
        {"prompt": f"What is {i} plus one?", "scores": [1.0, 0.5, 0.0],
         "responses": [r.format(i + k) for k, r in zip((1, 2, 0), responses)]}
        for i in range(10)
    ]  # fmt: skip
    data = tmp_path / "lists.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pref.json"
    ok(torchrun(str(ROOT / "tests" / "dist_worker.py"), mode, str(tiny_model_dir), str(out), "preference",
                str(data)))  # fmt: skip
    result = json.loads(out.read_text())
    from unipo.preference import list_presets

    assert {p.name for p in list_presets()} == set(result)
    for name, d in result.items():
        assert d["loss"] < 1e-5 and d["grad"] < 1e-5 and abs(d["grad_norm_ratio"] - 1.0) < 1e-5, (name, d)


# ------------------------------------------------------------------ end to end, resume, resharding
def test_torchrun_resumes_exactly_and_on_another_number_of_processes(tiny_model_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    # `unipo train ... train.nproc=2` starts torchrun itself
    ok(unipo(*run_args(tiny_model_dir, full, "train.steps=4", "train.nproc=2", "train.parallel=ddp")))
    summary = json.loads((full / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    ok(unipo(*run_args(tiny_model_dir, cut, "train.steps=2", "train.save_every=1", "train.nproc=2",
                       "train.parallel=ddp")))  # fmt: skip
    ckpt = latest_checkpoint(cut)
    assert ckpt is not None and (ckpt / "dcp").is_dir() and (ckpt / "rng_rank1.pt").exists()
    two_to_one = tmp_path / "two_to_one"
    subprocess.run(["cp", "-r", str(cut), str(two_to_one)], check=True)
    # the same number of processes continues exactly
    ok(unipo(*run_args(tiny_model_dir, cut, "train.steps=4", "train.save_every=1", "train.nproc=2",
                       "train.parallel=ddp", "train.resume=true")))  # fmt: skip
    assert_same(params(full), params(cut))
    # a checkpoint of 2 processes resumes on 1
    text = ok(unipo(*run_args(tiny_model_dir, two_to_one, "train.steps=3", "train.save_every=1",
                              "train.resume=true")))  # fmt: skip
    assert "resumed from" in text and json.loads((two_to_one / "summary.json").read_text())["steps"] == 3
    # and one of 1 process resumes on 2 (sharded: the full tensors are loaded and sharded)
    one = tmp_path / "one"
    ok(unipo(*run_args(tiny_model_dir, one, "train.steps=2", "train.save_every=1")))
    ok(unipo(*run_args(tiny_model_dir, one, "train.steps=3", "train.save_every=1", "train.resume=true",
                       "train.nproc=2", "train.parallel=fsdp2")))  # fmt: skip
    assert json.loads((one / "summary.json").read_text())["steps"] == 3
    assert (latest_checkpoint(one) / "dcp").is_dir()
    # the final model of a sharded run is a plain Hugging Face directory
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(one / "final")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_dead_rank_stops_the_others_and_the_last_checkpoint_stays(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "unipo.cli", *run_args(
        tiny_model_dir, run, "train.steps=400", "train.save_every=1", "train.nproc=2", "train.parallel=ddp",
        "task.eval_size=0", "train.dist_timeout_s=60",
    )]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while latest_checkpoint(run) is None or int(latest_checkpoint(run).name.split("_")[1]) < 2:
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)
    workers = [p for p in children if "unipo.cli" in " ".join(p.cmdline())]
    victim = next(p for p in workers if p.environ().get("RANK") == "1")
    t0 = time.time()
    victim.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode != 0
    assert time.time() - t0 < 120  # well within dist_timeout_s + torchrun's grace: nobody hangs
    assert "rank: 1" in out or "local_rank: 1" in out, out[-3000:]  # torchrun names the dead rank
    last = latest_checkpoint(run)
    assert last is not None and (last / "COMPLETE").exists() and (last / "state.pt").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name and (p / "COMPLETE").exists()]


# ------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 * 2**20)  # fmt: skip
    yield ray
    ray.shutdown()


def test_ray_train_gives_the_torchrun_result(tiny_model_dir, tmp_path, ray_cluster, monkeypatch):
    from unipo.launch import launch_ray

    monkeypatch.chdir(tmp_path)
    args = run_args(tiny_model_dir, tmp_path / "ray", "train.steps=2", "train.parallel=ddp")[1:]
    launch_ray("rl", None, args, 2, address=None, use_gpu=False)  # joins the fixture's cluster
    ok(unipo(*run_args(tiny_model_dir, tmp_path / "torchrun", "train.steps=2", "train.nproc=2",
                       "train.parallel=ddp")))  # fmt: skip
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["processes"] == 2
    assert_same(params(tmp_path / "torchrun"), params(tmp_path / "ray"))
