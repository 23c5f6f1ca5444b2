"""vLLM servers beside several training processes, against real ``vllm serve`` processes (marker
``vllm``): colocated servers started by the torchrun workers themselves (``rollout.num_servers``,
each synced by the process that started it), and servers on Ray bundles of their own
(``rollout.vllm.placement=split``) handed to a Ray Train worker. Needs .venv-vllm
(``make setup-vllm``); ``make test-vllm`` runs it. Each test starts two or three processes of vLLM
and training on the CI machine's two cores: ~3-5 min each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unipo.models import build_tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
VLLM = os.environ.get("UNIPO_VLLM") or str(ROOT / ".venv-vllm" / "bin" / "vllm")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory) -> Path:
    if not Path(VLLM).exists():
        pytest.skip(f"no vLLM environment ({VLLM}): run `make setup-vllm`")
    # head_dim 32: vLLM's CPU attention supports 32, 64, 80, ... (tests/test_vllm_engine.py)
    return build_tiny_model(tmp_path_factory.mktemp("vllm-scale") / "model", hidden_size=64, num_layers=1,
                            num_heads=2, seed=0)  # fmt: skip


def run_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.path={model_dir}", "model.device=cpu", "model.dtype=float32", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=40",
        "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=4", "rollout.group_size=4",
        "rollout.sampling.max_new_tokens=8", "optim.lr=1e-2", "optim.micro_batch_size=16", "train.steps=2",
        "train.threads=1", "train.save_final=false", "train.entropy_change=none", f"train.output_dir={out}",
        "algorithm.name=grpo", "rollout.engine=vllm", f"rollout.vllm.command=[{VLLM}, serve]",
        "rollout.vllm.max_model_len=256", "rollout.vllm.enforce_eager=true", *extra,
    ]  # fmt: skip


def steps(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss/total" in r]


def no_server_left(marker: str) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return not [line for line in ps.splitlines() if "serve" in line and marker in line]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])  # fsdp2: the servers sync from gathered shards
def test_colocated_servers_one_per_torchrun_process(vllm_model, tmp_path, parallel):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "unipo.cli", "train", *run_args(vllm_model, out, "train.nproc=2",
           f"train.parallel={parallel}", "rollout.num_servers=2")]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = steps(out)
    assert [r["step"] for r in rows] == [1, 2]
    # each process started one server on 127.0.0.1 (its own log), synced it, and sampled from both
    logs = sorted(p.name for p in out.glob("vllm-server*.log"))
    assert logs == ["vllm-server-rank0.log", "vllm-server-rank1.log"]
    for log in logs:  # each synced by the process that started it, each sampled from
        text = (out / log).read_text(errors="replace")
        assert "POST /collective_rpc" in text and "POST /v1/completions" in text
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    assert no_server_left(str(tmp_path))


def test_split_servers_on_ray_bundles_of_their_own(vllm_model, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from unipo.config import load_config
    from unipo.launch import launch_ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 * 2**20)  # fmt: skip
    try:
        out = tmp_path / "run"
        args = run_args(vllm_model, out, "train.launcher=ray", "rollout.vllm.placement=split")
        cfg = load_config(None, args)
        launch_ray("rl", None, args, 1, address=None, use_gpu=False, cfg=cfg)  # 1 trainer + 1 server bundle
        assert not ray.util.placement_group_table() or all(
            g["state"] == "REMOVED" for g in ray.util.placement_group_table().values()
            if g["bundles"] == {0: {"CPU": 1.0}} and g["strategy"] == "SPREAD"
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert [r["step"] for r in steps(out)] == [1, 2]
    log = tmp_path / ".ray_results" / "unipo-vllm-servers" / "vllm-server-0.log"
    assert "--host 0.0.0.0" in log.read_text(errors="replace")  # reachable from other nodes
    config = (out / "config.yaml").read_text()
    assert "  url:\n  - http://" in config  # handed to the worker as rollout.url (the node's IP)
    assert "untie_embeddings: true" in config  # a CPU server of a tied checkpoint serves an untied copy
    assert no_server_left(str(tmp_path))
