"""Data-parallel training: step time, tokens/s, peak memory per process and bytes communicated,
for 1 process and for 2 processes with ``ddp`` and ``fsdp2``, on the same global batch.

    python benchmarks/data_parallel.py                    # 25m model on CPU (gloo), 2 processes
    python benchmarks/data_parallel.py --preset tiny      # a quick check
    python benchmarks/data_parallel.py --device cuda      # one GPU per process (NCCL), same script

One measured step is what the trainer does after collection: the π_old pass over the whole batch
(each rank its share, gathered) and the update (``optim.epochs`` × minibatches, each rank its share
of every micro-batch, gradients averaged). Generation is left out: every rank generates its own
prompts' completions with no communication, so it divides by the number of processes by
construction. Bytes communicated are the payloads handed to torch.distributed's collectives per
step (all-reduce, all-gather, reduce-scatter, broadcast, object collectives), counted in each
process; a ring all-reduce moves about 2(W−1)/W of its payload over each link.

What 2 CPU cores can and cannot show: two processes each get one core where one process gets
two threads, so the step time does not halve here (it measures the communication and the
duplicated work: the gathers, the per-rank Python), while the memory per process and the bytes
communicated are what they would be on two devices. On a GPU machine each process has its own
device and the time ratio is the one to read. Results: benchmarks/results/data_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data_parallel.json"
SETUPS = {
    "tiny": dict(preset="demo", prompts=4, group=8, length=16, micro=16, epochs=2, warmup=1, steps=4),
    "25m": dict(preset="25m", prompts=8, group=8, length=64, micro=32, epochs=2, warmup=1, steps=3),
}


def worker(args: argparse.Namespace) -> None:
    """One process of a measurement (alone, or under torchrun)."""
    import torch
    import torch.distributed as tdist

    from unipo.algorithms import get_algorithm
    from unipo.batch import RolloutBatch
    from unipo.models import load_model
    from unipo.train.dist import init_dist
    from unipo.train.nograd import rollout_batch_logprobs
    from unipo.train.sharding import shard_policy
    from unipo.train.update import UpdateSettings, update_policy

    setup = SETUPS[args.setup]
    d = init_dist(args.parallel, device=args.device)
    comm = {"bytes": 0}

    def counting(fn, payload: int):  # bytes of the tensor each collective call sends from this process
        def wrapped(*a, **k):
            t = a[payload] if len(a) > payload else None
            if isinstance(t, torch.Tensor):
                comm["bytes"] += t.numel() * t.element_size()
            return fn(*a, **k)

        return wrapped

    payload_arg = {  # which positional argument is the sent tensor
        "all_reduce": 0, "broadcast": 0, "all_gather": 1, "all_gather_into_tensor": 1,
        "reduce_scatter_tensor": 1, "all_gather_single": 1, "reduce_scatter_single": 1,
    }  # fmt: skip
    for name, arg in payload_arg.items():
        if hasattr(tdist, name):  # FSDP2 calls all_gather_single / reduce_scatter_single (torch 2.13)
            setattr(tdist, name, counting(getattr(tdist, name), arg))
    device = torch.device("cuda", d.local_rank) if args.device == "cuda" else torch.device("cpu")
    model, _ = load_model(
        args.model, dtype="float32" if args.device == "cpu" else "bfloat16", device=str(device)
    )
    scorer = shard_policy(model, device) if d.sharded else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    g = torch.Generator().manual_seed(0)
    b, t, p = setup["prompts"] * setup["group"], setup["length"], 16
    batch = RolloutBatch(
        prompt_ids=torch.randint(5, 60, (setup["prompts"], p), generator=g).repeat_interleave(
            setup["group"], 0
        ),
        prompt_mask=torch.ones(b, p, dtype=torch.long),
        completion_ids=torch.randint(5, 60, (b, t), generator=g),
        completion_mask=torch.ones(b, t),
        group_ids=torch.arange(setup["prompts"]).repeat_interleave(setup["group"]),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.rand(b, generator=g),
    )
    algo = get_algorithm("dapo")  # clip-higher, token mean: no reference pass
    settings = UpdateSettings(
        epochs=setup["epochs"],
        minibatches=1,
        micro_batch_size=setup["micro"] // d.world,
        max_grad_norm=1.0,
        temperature=1.0,
        max_len=t,
    )
    times, bytes_ = [], []
    for i in range(setup["warmup"] + setup["steps"]):
        comm["bytes"] = 0
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        old, ent, _ = rollout_batch_logprobs(
            scorer, batch, device, micro_batch=settings.micro_batch_size, dist=d
        )
        step = batch.replace(old_logprobs=old, entropies=ent)
        step = step.replace(advantages=algo.advantage(step)[0])
        update_policy(
            scorer,
            opt,
            None,
            algo,
            step,
            settings,
            step=i,
            generator=torch.Generator().manual_seed(i),
            dist=d,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= setup["warmup"]:
            times.append(time.perf_counter() - t0)
            bytes_.append(comm["bytes"])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        status = Path("/proc/self/status").read_text().splitlines()
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    record = {
        "rank": d.rank,
        "step_s": sum(times) / len(times),
        "peak_mb": peak,
        "bytes_per_step": sum(bytes_) / len(bytes_),
    }
    parts = d.all_gather_object(record)
    if d.is_main:
        tokens = b * t * (1 + setup["epochs"])  # scored tokens per step: the π_old pass + every epoch
        step_s = max(r["step_s"] for r in parts)
        Path(args.result).write_text(
            json.dumps(
                {
                    "processes": d.world,
                    "parallel": d.mode if d.enabled else "none",
                    "step_s": step_s,
                    "tokens_per_s": tokens / step_s,
                    "peak_mb_per_process": [r["peak_mb"] for r in parts],
                    "bytes_per_step_per_process": [r["bytes_per_step"] for r in parts],
                }
            )
        )
    d.barrier()


def measure(setup: str, model: Path, device: str, nproc: int, parallel: str, tmp: Path) -> dict:
    result = tmp / f"{nproc}-{parallel}.json"
    args = [
        str(Path(__file__).resolve()),
        "--worker",
        "--setup",
        setup,
        "--model",
        str(model),
        "--device",
        device,
        "--parallel",
        parallel,
        "--result",
        str(result),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    cmd = (
        [sys.executable, *args]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            *args,
        ]
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{nproc} × {parallel} failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=sorted(SETUPS), default="25m")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--parallel", default="none", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, str(ROOT / "src"))
    from unipo.models import build_tiny_model
    from unipo.models.tiny import TINY_PRESETS

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = build_tiny_model(tmp / "model", seed=0, **TINY_PRESETS[SETUPS[args.setup]["preset"]])
        runs = [measure(args.setup, model, args.device, 1, "none", tmp)]
        runs += [measure(args.setup, model, args.device, args.nproc, mode, tmp) for mode in ("ddp", "fsdp2")]
    one = runs[0]
    for r in runs:
        r["step_time_vs_one_process"] = r["step_s"] / one["step_s"]
        r["peak_mb_vs_one_process"] = max(r["peak_mb_per_process"]) / one["peak_mb_per_process"][0]
    out = {
        "setup": args.setup,
        "device": args.device,
        "spec": SETUPS[args.setup],
        "cores": os.cpu_count(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for r in runs:
        print(
            f"{r['processes']} × {r['parallel']:5s}: {r['step_s']:.2f} s/step "
            f"({r['step_time_vs_one_process']:.2f}×), "
            f"{r['tokens_per_s']:.0f} tok/s, peak {max(r['peak_mb_per_process']):.0f} MB/process "
            f"({r['peak_mb_vs_one_process']:.2f}×), {max(r['bytes_per_step_per_process']) / 2**20:.1f} MB "
            "sent/step/process"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
