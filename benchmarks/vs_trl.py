"""unipo vs TRL's GRPOTrainer: the same GRPO step, timed side by side.

    python benchmarks/vs_trl.py                  # setups tiny and 25m (CPU)
    python benchmarks/vs_trl.py --setup h100     # Qwen2-0.5B-shaped model, bf16, one GPU
    python benchmarks/vs_trl.py --setup h100-vllm --vllm-command .venv-vllm/bin/vllm   # both with vLLM
    python benchmarks/vs_trl.py --setup tiny --rounds 1 --warmup 1 --steps 2   # smoke run

Run it with unipo's Python (the orchestrator imports unipo). It builds the model directory
(``build_tiny_model``) and the prompt pool once, then starts one *worker process* per framework
per round, one at a time and in alternating order (unipo, TRL | TRL, unipo | ...). Each worker
loads the model, runs ``warmup`` untimed and ``steps`` timed optimizer steps, and reports
per-step wall time, tokens and its peak memory. The TRL worker runs under TRL's own venv
(``benchmarks/setup_trl_env.sh``) and imports nothing from unipo; this file imports only the
standard library at the top so that either interpreter can run it.

Same work in both: one generation batch of P prompts x G completions, all exactly L tokens
(``min_new_tokens = max_new_tokens = L``), one optimizer step on it (μ = 1, no old-log-prob
pass), a reference pass when β > 0, the same cheap reward, sampling, dtype and batch sizes.
Results are merged into ``benchmarks/results/vs_trl.json`` (one entry per setup).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "vs_trl.json"
DEFAULT_TRL_PYTHON = ROOT / "benchmarks" / ".venv-trl" / "bin" / "python"
# 256 reasoning-gym chain_sum questions (default config, seed 1), shipped so that no worker needs
# reasoning_gym: make_task("reasoning_gym", name="chain_sum").examples(256, 1).
QUESTIONS = ROOT / "benchmarks" / "data" / "chain_sum.jsonl"

# P prompts x G completions of exactly L tokens per step; micro = rows per forward/backward
# (TRL: per_device_train_batch_size, gradient accumulation = P*G / micro).
SETUPS: dict[str, dict] = {
    "tiny": dict(preset="demo", device="cpu", dtype="float32", prompts=4, group=8, length=16,
                 beta=0.04, micro=32, warmup=3, steps=15, rounds=3),
    "25m": dict(preset="25m", device="cpu", dtype="float32", prompts=8, group=8, length=64,
                beta=0.04, micro=64, warmup=1, steps=2, rounds=2),
    "h100": dict(preset="qwen2-0.5b-shape", device="cuda", dtype="bfloat16", prompts=32, group=8,
                 length=256, beta=0.0, micro=64, warmup=2, steps=5, rounds=2, decode="compiled"),
    # the same, both generating with vLLM on the one GPU: unipo's engine (a `vllm serve` it starts,
    # weights synced through safetensors + reload_weights) vs TRL's use_vllm=True (colocate, in-process);
    # neither corrects the sampler mismatch (TRL's IS correction off) so that both do the same work
    "h100-vllm": dict(preset="qwen2-0.5b-shape", device="cuda", dtype="bfloat16", prompts=32, group=8,
                      length=256, beta=0.0, micro=64, warmup=2, steps=5, rounds=2, engine="vllm",
                      vllm_gpu_util=0.3),
}  # fmt: skip
# unipo's rollout.decode per setup unless --unipo-decode says otherwise: the CPU default (static
# cache) on CPU; on the GPU the CUDA-graph decode (compiles once per shape, in the warm-up steps).
CPU_SETUPS = ("tiny", "25m")
PHASES = ("time/generate", "time/reward", "time/logprobs", "time/update")  # unipo's step breakdown
COMMON = dict(lr=1e-6, temperature=1.0, top_p=1.0, clip_eps=0.2, max_grad_norm=1.0, seed=0)


def bench_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Share of digit characters in each completion: cheap, deterministic, equal for both."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _versions(*names: str) -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:  # e.g. unipo run from the checkout (PYTHONPATH=src)
            try:
                out[n] = str(getattr(__import__(n), "__version__", "unknown"))
            except ImportError:
                out[n] = "absent"
    return out


# ---------------------------------------------------------------------------------- workers
def run_unipo(spec: dict) -> dict:
    import torch

    from unipo.config import load_config
    from unipo.train.trainer import Trainer

    s = spec
    overrides = [
        f"model.path={s['model_dir']}", f"model.device={s['device']}", f"model.dtype={s['dtype']}",
        f"model.gradient_checkpointing={s['gradient_checkpointing']}",
        "task.source=jsonl", f"task.path={s['questions']}", "task.train_size=100000", "task.eval_size=0",
        "rewards=[{name: exact_match, weight: 0.0}]",  # a cheap verifier runs too; bench_reward scores
        f"rollout.prompts_per_step={s['prompts']}", f"rollout.group_size={s['group']}",
        f"rollout.sampling.max_new_tokens={s['length']}", f"rollout.sampling.min_new_tokens={s['length']}",
        f"rollout.sampling.temperature={s['temperature']}", f"rollout.sampling.top_p={s['top_p']}",
        f"rollout.decode={s.get('decode', 'auto')}", f"rollout.engine={s.get('engine', 'hf')}",
        "rollout.sampling.top_k=0", f"rollout.max_batch={s['prompts'] * s['group']}",
        "algorithm.name=grpo",
        f"algorithm.params={{kl: {{coef: {s['beta']}}}, ppo_clip: {{eps_low: {s['clip_eps']}, "
        f"eps_high: {s['clip_eps']}}}}}",
        f"optim.lr={s['lr']}", "optim.epochs=1", "optim.minibatches=1",
        f"optim.micro_batch_size={s['micro']}", f"optim.max_grad_norm={s['max_grad_norm']}",
        f"train.seed={s['seed']}", f"train.output_dir={s['scratch']}",
        "train.entropy_change=lagged",  # TRL has no post-update re-scoring pass; lagged pairing is free
    ]  # fmt: skip
    if s.get("engine") == "vllm":  # the server starts in the first (untimed) warm-up step
        overrides.append(f"rollout.vllm.gpu_memory_utilization={s['vllm_gpu_util']}")
        if s.get("vllm_command"):
            overrides.append(f"rollout.vllm.command=[{s['vllm_command']}, serve]")
    t0 = time.perf_counter()
    trainer = Trainer(load_config(None, overrides), extra_rewards=[("bench", bench_reward, 1.0)])
    startup = time.perf_counter() - t0
    tokens: list[tuple[int, int, int]] = []  # (prompt, completion, shortest completion) per call
    generate = trainer.engine.generate

    def counting_generate(prompts, n, params):
        g = generate(prompts, n, params)
        lengths = g.completion_mask.sum(1)
        tokens.append((int(g.prompt_mask.sum()), int(lengths.sum()), int(lengths.min())))
        return g

    trainer.engine.generate = counting_generate
    steps = []
    for i in range(s["warmup"] + s["steps"]):
        tokens.clear()
        _sync(s["device"])
        t = time.perf_counter()
        m = trainer.run_step()
        _sync(s["device"])
        dt = time.perf_counter() - t
        if i >= s["warmup"]:
            prompt_tok, comp_tok = sum(x[0] for x in tokens), sum(x[1] for x in tokens)
            steps.append({
                "step_s": dt, "generated_tokens": comp_tok, "trained_tokens": prompt_tok + comp_tok,
                "completion_len_mean": m["response/length_mean"],
                "completion_len_min": min(x[2] for x in tokens),
                "completions": m["rollout/train_completions"],
                **{k: m[k] for k in PHASES if k in m},
                **{k: v for k, v in m.items() if k.startswith("memory/") and k.endswith("_peak_mb")},
            })  # fmt: skip
    # the trainer resets the kernel's high-water mark per phase (train/phases.py) and keeps the run's
    # peak itself: report that, not the lowered ru_maxrss
    run_peak = m["memory/peak_mb"] if steps else 0.0
    return {"startup_s": startup, "steps": steps, "threads": torch.get_num_threads(), "run_peak_mb": run_peak}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    s = spec
    n = s["prompts"] * s["group"]
    prompts = json.loads(Path(s["prompts_file"]).read_text())
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])  # rendered text: no chat template again
    on_gpu = s["device"].startswith("cuda")
    args = GRPOConfig(
        output_dir=s["scratch"], max_steps=s["warmup"] + s["steps"], seed=s["seed"],
        per_device_train_batch_size=s["micro"], gradient_accumulation_steps=n // s["micro"],
        num_generations=s["group"], num_iterations=1,  # one generation batch per optimizer step
        max_completion_length=s["length"], generation_kwargs={"min_new_tokens": s["length"]},
        temperature=s["temperature"], top_p=s["top_p"], top_k=0,
        beta=s["beta"], epsilon=s["clip_eps"], loss_type="grpo", scale_rewards="group",
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch", max_grad_norm=s["max_grad_norm"],
        bf16=s["dtype"] == "bfloat16", model_init_kwargs={"dtype": s["dtype"]},
        gradient_checkpointing=s["gradient_checkpointing"], use_cpu=not on_gpu,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": s["vllm_gpu_util"],
            "vllm_importance_sampling_correction": False} if s.get("engine") == "vllm" else {}),
    )  # fmt: skip
    steps: list[dict] = []

    class Timer(TrainerCallback):
        last = 0.0
        tokens_seen = 0

        def on_train_begin(self, args, state, control, **kw):
            _sync(s["device"])
            Timer.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync(s["device"])
            t = time.perf_counter()
            seen = state.num_input_tokens_seen  # prompt + completion tokens, cumulative
            steps.append({"step_s": t - Timer.last, "trained_tokens": seen - Timer.tokens_seen})
            Timer.last, Timer.tokens_seen = t, state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and steps:
                steps[-1]["completion_len_mean"] = logs["completions/mean_length"]
                steps[-1]["completion_len_min"] = logs["completions/min_length"]
                steps[-1]["completions"] = n
                steps[-1]["generated_tokens"] = round(logs["completions/mean_length"] * n)

    tok = AutoTokenizer.from_pretrained(s["model_dir"])
    tok.padding_side = "left"
    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=s["model_dir"], reward_funcs=bench_reward, args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[Timer()])  # fmt: skip
    startup = time.perf_counter() - t0
    trainer.train()
    return {"startup_s": startup, "steps": steps[s["warmup"] :], "threads": torch.get_num_threads()}


def worker_main(framework: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = run_unipo(spec) if framework == "unipo" else run_trl(spec)
    out["peak_memory_mb"] = max(peak_memory_mb(spec["device"]), out.pop("run_peak_mb", 0.0))
    names = ("torch", "transformers", "accelerate", "datasets", "trl", "unipo")
    out["versions"] = _versions(*names)
    out["python"] = platform.python_version()
    if spec["device"].startswith("cuda"):
        import torch

        out["gpu"] = torch.cuda.get_device_name()
    Path(result_path).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------- orchestrator
def prepare(setup: dict, workdir: Path) -> tuple[Path, Path]:
    """Build the model directory and render the questions exactly as unipo's task does (chat template)."""
    from unipo.models import load_tokenizer
    from unipo.models.tiny import TINY_PRESETS, build_tiny_model
    from unipo.tasks import render_prompt

    model_dir = workdir / f"model-{setup['preset']}"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, overwrite=True, **TINY_PRESETS[setup["preset"]])
    tok = load_tokenizer(model_dir)
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    texts = [render_prompt(tok, q) for q in questions]  # unipo's defaults: template {question}, chat if any
    prompts_file = workdir / "prompts.json"
    prompts_file.write_text(json.dumps(texts))
    return model_dir, prompts_file


def cpu_jiffies() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, in seconds summed over cores."""
    try:
        f = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return math.nan, math.nan
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(f) - f[3] - f[4]) / tick, sum(f) / tick  # idle and iowait are not busy


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all cores busy over the next ``seconds`` (this process sleeps meanwhile)."""
    b0, t0 = cpu_jiffies()
    time.sleep(seconds)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / max(t1 - t0, 1e-9)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15) -> float:
    """On a small CPU machine other processes make both frameworks' threads thrash (10x slower):
    wait up to ``max_wait_s`` for the machine to go quiet. Returns the last busy fraction."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        print(f"  machine {busy:.0%} busy with other processes; waiting", flush=True)
        time.sleep(10)
        busy = busy_fraction()
    return busy


def add_quiet_args(p: argparse.ArgumentParser, max_wait: float, retries: int, unit: str) -> None:
    """--max-wait / --max-foreign / --retries: how a CPU benchmark keeps other processes out."""
    p.add_argument(
        "--max-wait",
        type=float,
        default=max_wait,
        help=f"CPU: seconds to wait for other processes to go quiet before each {unit}",
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.1,
        help=f"CPU: redo a {unit} if other processes took more than this share of the cores",
    )
    p.add_argument("--retries", type=int, default=retries, help=f"redos per {unit} (see --max-foreign)")


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd`` to completion; returns (process, wall seconds, foreign CPU share): the CPU time
    other processes took while it ran, as a share of the machine's cores."""
    ru0, (b0, _) = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_jiffies()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1, (b1, _) = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_jiffies()
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return proc, wall, max(0.0, (b1 - b0) - own) / (wall * (os.cpu_count() or 1))


def run_worker(framework: str, python: str, spec: dict, workdir: Path, tag: str, max_wait: float) -> dict:
    spec_path, result_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec_path.write_text(json.dumps({**spec, "scratch": str(workdir / f"{tag}.scratch")}))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    if framework == "unipo":  # importable from the checkout even where unipo is not installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    cmd = [python, str(Path(__file__).resolve()), "--worker", framework, str(spec_path), str(result_path)]
    busy_before = wait_for_quiet(max_wait) if spec["device"] == "cpu" else math.nan
    proc, wall, foreign = run_measured(cmd, env)
    (workdir / f"{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"error": f"{framework} worker exited with {proc.returncode}:\n{tail}", "wall_s": wall}
    res = json.loads(result_path.read_text())
    return {**res, "wall_s": wall, "busy_before": busy_before, "foreign_cpu_share": foreign}


def summarize(runs: list[dict]) -> dict:
    """Median step time over all timed steps of all rounds; tokens/s = tokens per step / median."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not run"}
    steps = [st for r in ok for st in r["steps"]]
    med = statistics.median(st["step_s"] for st in steps)
    gen = statistics.median(st.get("generated_tokens", 0) for st in steps)
    trained = statistics.median(st.get("trained_tokens", 0) for st in steps)
    out = {
        "step_s": med,
        "round_medians_s": [statistics.median(st["step_s"] for st in r["steps"]) for r in ok],
        "generated_tokens_per_step": gen, "trained_tokens_per_step": trained,
        "generated_tokens_per_s": gen / med, "trained_tokens_per_s": trained / med,
        "completion_len_min": min(st.get("completion_len_min", float("nan")) for st in steps),
        "completion_len_mean": statistics.mean(st.get("completion_len_mean", float("nan")) for st in steps),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in ok),
        "startup_s": statistics.median(r["startup_s"] for r in ok), "timed_steps": len(steps),
        "threads": ok[0]["threads"], "versions": ok[0]["versions"],
        "foreign_cpu_share": [round(r["foreign_cpu_share"], 3) for r in ok],
    }  # fmt: skip
    phases = [k for k in PHASES if k in steps[0]]
    if phases:
        out["phases_s"] = {k: statistics.median(st[k] for st in steps) for k in phases}
    mem = [k for k in steps[0] if k.startswith("memory/") and k.endswith("_peak_mb")]
    if mem:  # unipo's peak memory inside each phase (median over steps)
        out["phase_peak_mb"] = {k[7:-8]: statistics.median(st[k] for st in steps) for k in mem}
    if len(ok) < len(runs):
        out["failed_rounds"] = [r["error"] for r in runs if "error" in r]
    return out


def machine_info(runs: list[dict]) -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    gpus = {r["gpu"] for r in runs if "gpu" in r}
    if gpus:
        info["gpu"] = ", ".join(sorted(gpus))
    return info


def run_setup(name: str, a: argparse.Namespace, workdir: Path) -> dict:
    setup = {**COMMON, **SETUPS[name]}
    for key in ("rounds", "warmup", "steps"):
        if getattr(a, key) is not None:
            setup[key] = getattr(a, key)
    setup["gradient_checkpointing"] = a.gradient_checkpointing
    if a.unipo_decode:
        setup["decode"] = a.unipo_decode
    if a.vllm_command:
        setup["vllm_command"] = a.vllm_command
    if setup["prompts"] * setup["group"] % setup["micro"]:
        raise SystemExit(f"{name}: P*G must be a multiple of micro")
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    model_dir, prompts_file = prepare(setup, wd)
    spec = {**setup, "model_dir": str(model_dir), "prompts_file": str(prompts_file)}
    spec["questions"] = str(QUESTIONS)
    pythons = {"unipo": a.unipo_python, "trl": a.trl_python}
    runs: dict[str, list[dict]] = {"unipo": [], "trl": []}
    discarded: list[dict] = []  # worker runs redone because other processes competed for the CPU
    trl_missing = shutil.which(a.trl_python) is None
    for r in range(setup["rounds"]):
        order = ("unipo", "trl") if r % 2 == 0 else ("trl", "unipo")
        for fw in order:
            if fw == "trl" and trl_missing:
                why = f"no TRL interpreter at {a.trl_python}: run benchmarks/setup_trl_env.sh"
                runs[fw].append({"error": why})
                continue
            for attempt in range(a.retries + 1):
                res = run_worker(fw, pythons[fw], spec, wd, f"{fw}-r{r}", a.max_wait)
                noisy = res.get("foreign_cpu_share", 0.0) > a.max_foreign and setup["device"] == "cpu"
                if not noisy or attempt == a.retries:
                    break
                share = res["foreign_cpu_share"]
                print(f"[{name}] round {r + 1} {fw}: other processes took {share:.0%} of the cores; redoing")
                discarded.append({"framework": fw, "round": r, "foreign_cpu_share": share,
                                  "step_s": [st["step_s"] for st in res.get("steps", [])]})  # fmt: skip
            runs[fw].append(res)
            msg = res.get("error", "").splitlines()[0] if "error" in res else (
                f"median {statistics.median(st['step_s'] for st in res['steps']):.3f} s/step, "
                f"other processes used {res['foreign_cpu_share']:.0%} of the cores")  # fmt: skip
            print(f"[{name}] round {r + 1}/{setup['rounds']} {fw:5s}: {msg} (process {res['wall_s']:.0f} s)",
                  flush=True)  # fmt: skip
    u, t = summarize(runs["unipo"]), summarize(runs["trl"])
    entry = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {k: v for k, v in setup.items() if k not in ("model_dir", "prompts_file")},
        "machine": machine_info(runs["unipo"] + runs["trl"]),
        "unipo": u, "trl": t, "discarded_runs": discarded,
    }  # fmt: skip
    if "error" not in u and "error" not in t:
        entry.update(unipo_step_s=u["step_s"], trl_step_s=t["step_s"], ratio=u["step_s"] / t["step_s"])
    else:
        entry["ratio"] = None
    return entry


COLUMNS = (("step_s", ".3f"), ("generated_tokens_per_s", ",.0f"), ("trained_tokens_per_s", ",.0f"),
           ("peak_memory_mb", ",.0f"))  # fmt: skip


def print_table(results: dict) -> None:
    def fmt(x, spec):
        return format(x, spec) if isinstance(x, (int, float)) else "—"

    head = ("setup", "framework", "s/step", "gen tok/s", "trained tok/s", "peak MB", "unipo/TRL")
    rows = []
    for name, e in results.items():
        for fw in ("unipo", "trl"):
            s = e.get(fw, {})
            label = fw if "error" not in s else f"{fw} (failed)"
            ratio = fmt(e.get("ratio"), ".2f") if fw == "unipo" else ""
            cells = [fmt(s.get(k), spec) for k, spec in COLUMNS]
            rows.append((name, label, *cells, ratio))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    for name, e in results.items():
        ph = e.get("unipo", {}).get("phases_s")
        if ph:
            print(f"{name}: unipo phases (median s) " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in ph.items()))
        for fw in ("unipo", "trl"):
            if "error" in e.get(fw, {}):
                print(f"{name}: {fw} failed: {e[fw]['error'].splitlines()[0]}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(*argv[1:4])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = f"cpu (= {', '.join(CPU_SETUPS)}), all, or one of {list(SETUPS)}; comma-separated for several"
    p.add_argument("--setup", default="cpu", help=choices)
    p.add_argument("--rounds", type=int, help="A/B rounds (one process per framework per round)")
    p.add_argument("--warmup", type=int, help="untimed steps per process")
    p.add_argument("--steps", type=int, help="timed steps per process")
    p.add_argument("--gradient-checkpointing", action="store_true", help="on in both (default: off in both)")
    p.add_argument(
        "--unipo-decode",
        choices=("auto", "dynamic", "static", "compiled"),
        help="unipo's rollout.decode (default: the setup's; h100: compiled, CPU: auto)",
    )
    p.add_argument("--trl-python", default=str(DEFAULT_TRL_PYTHON), help="interpreter with trl installed")
    p.add_argument("--vllm-command", help="h100-vllm: unipo's `vllm` command (default .venv-vllm/bin/vllm)")
    p.add_argument("--unipo-python", default=sys.executable, help="interpreter with unipo's dependencies")
    add_quiet_args(p, max_wait=600, retries=3, unit="worker run")
    p.add_argument("--workdir", help="where models, prompts and logs go (default: a temporary directory)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON (entries are merged by setup)")
    p.add_argument("--show", action="store_true", help="print the table of --out and exit (runs nothing)")
    a = p.parse_args(argv)
    if a.show:
        return print_table(json.loads(Path(a.out).read_text()))
    names = {"cpu": list(CPU_SETUPS), "all": list(SETUPS)}.get(a.setup) or a.setup.split(",")
    if unknown := [n for n in names if n not in SETUPS]:
        p.error(f"unknown setup(s) {unknown}; choose from cpu, all, {', '.join(SETUPS)}")
    sys.path.insert(0, str(ROOT / "src"))  # the orchestrator imports unipo (installed or not)
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        workdir = Path(a.workdir) if a.workdir else Path(tmp)
        for name in names:  # an overridden decode mode is stored beside the setup's default entry
            key = f"{name}/decode={a.unipo_decode}" if a.unipo_decode else name
            results[key] = run_setup(name, a, workdir)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    print_table({k: results[k] for k in results if k.split("/")[0] in names})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
