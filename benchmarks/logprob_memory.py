"""Peak memory and time of completion log-probs + entropies: unipo's chunked LM head vs the naive path.

    python benchmarks/logprob_memory.py                 # tokens 4096 and 8192, chunks 256..2048
    python benchmarks/logprob_memory.py --quick         # `make bench`: 4096 tokens, default chunk + 2048
    python benchmarks/logprob_memory.py --tokens 512 --chunks 128 --repeats 1   # smoke run
    python benchmarks/logprob_memory.py --show          # table of the JSON

The inputs are what the LM head sees in ``completion_logprobs``: N hidden states [N, H] (H = 896,
Qwen2-0.5B's), the head's weight [V, H] (V = 151,936, Qwen2's vocabulary) and N target ids.

- naive: ``logits = hidden @ W.T`` ([N, V]), ``log_softmax``, ``gather`` the targets, entropy
  ``-(exp(logp) * logp).sum(-1)``, all over the full [N, V] at once.
- unipo: ``unipo.train.logprobs.token_logprobs_from_hidden(hidden, lm_head, targets,
  chunk_tokens=c)``: the head, log-softmax and entropy over chunks of ``c`` tokens; under autograd
  each chunk is checkpointed (its logits are recomputed in backward).

Two modes: ``fwd`` (no grad, as for old / reference log-probs) and ``fwd_bwd`` (as in training:
loss = Σ a·logp + Σ b·entropy with fixed random a, b; gradients w.r.t. the hidden states and W).

Every case runs in a fresh worker process (this file with ``--worker``). Memory is the peak
*extra* memory above the inputs: on CPU the worker allocates the inputs, reads its resident set
size (VmRSS), resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``), runs the
case once and reads the high-water mark (VmHWM); peak extra = VmHWM − VmRSS before. glibc serves
these large tensors with mmap and unmaps them on free, and torch's CPU allocator caches nothing,
so RSS follows live tensors. On CUDA it is ``max_memory_allocated() − memory_allocated()`` after
``reset_peak_memory_stats()``. A small untimed warm-up of the same path runs first, so library
initialisation (oneDNN / cuBLAS workspaces) is not counted. Gradients of W and of the hidden
states are created by the backward pass and count as extra memory in both paths
(``grad_buffers_mb`` says how much of it they are).

Time is the median over ``--repeats`` runs in the same worker. Each worker saves its outputs
(log-probs, entropies, and for fwd_bwd both gradients); the orchestrator reports the max
absolute difference of every unipo case from the naive one (same seeded inputs).

The naive path at 8192 tokens needs ~20 GB (fwd) / ~25 GB (fwd_bwd): a case whose estimated
peak does not fit in the machine's available memory is skipped and marked so in the JSON.
Results are merged into ``benchmarks/results/logprob_memory.json``, one entry per
``device/tokens/mode``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "logprob_memory.json"
TARGET_RATIO = 0.10  # the issue: unipo's peak extra memory ≤ 10% of the naive path's
TOLERANCE = 1e-5  # ... and within 1e-5 of it (float32)
# Estimated peak of the naive path in [N, V] float32 tensors (logits, log-softmax, exp, product;
# in backward the saved log-softmax and exp plus three gradients of that size). Used only to skip
# cases that would not fit; measured at V = 151,936 on CPU: 4.0 and 4.1 (+ the gradients).
NAIVE_PEAK_TENSORS = {"fwd": 4.0, "fwd_bwd": 4.2}
MEMORY_MARGIN = 0.75  # run a case only if its estimated peak is below this share of MemAvailable


# ---------------------------------------------------------------------------------- the two paths
def naive_logprobs(hidden, weight, targets):
    """The plain way: full logits, full log-softmax, gather; entropy -Σ p log p. [N] and [N]."""
    import torch

    logits = torch.nn.functional.linear(hidden, weight).float()  # [N, V]
    logsm = torch.log_softmax(logits, dim=-1)  # [N, V]
    logp = logsm.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def unipo_logprobs(hidden, lm_head, targets, chunk_tokens: int):
    from unipo.train.logprobs import token_logprobs_from_hidden

    return token_logprobs_from_hidden(hidden, lm_head, targets, chunk_tokens=chunk_tokens)


def default_chunk_tokens(vocab: int = 151_936, hidden: int = 896) -> int:
    """The library's default ``chunk_tokens`` for this vocabulary (sized by ``CHUNK_ELEMENTS``)."""
    import torch

    from unipo.train.logprobs import default_chunk_tokens as library_default

    return library_default(torch.nn.Linear(hidden, vocab, bias=False, device="meta"))


# ---------------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class MemoryProbe:
    """Peak extra memory (bytes) of what runs between ``start()`` and ``stop()``."""

    def __init__(self, device: str):
        self.device = device
        self.method = ""

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated - memory_allocated"
            return
        self.base = (_status_kib("VmRSS") or 0) * 1024
        if _reset_hwm() and _status_kib("VmHWM") is not None:
            self.method = "VmHWM after clear_refs=5, minus VmRSS"
        else:  # the high-water mark cannot be reset: ru_maxrss (valid when the case is the peak)
            self.method = "ru_maxrss minus VmRSS (high-water mark not resettable)"

    def stop(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        hwm = _status_kib("VmHWM") if self.method.startswith("VmHWM") else None
        peak = hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak - self.base


# ---------------------------------------------------------------------------------- worker
def make_inputs(spec: dict, tokens: int, grad: bool):
    """Seeded hidden [N, H], LM head (weight [V, H]), targets [N] and loss coefficients a, b [N].

    hidden ~ N(0, 1) and W ~ N(0, 0.1²): logits have std ≈ 3 (H = 896), a peaked distribution."""
    import torch

    dtype = getattr(torch, spec["dtype"])
    dev = spec["device"]
    g = torch.Generator().manual_seed(spec["seed"])
    vocab, hid = spec["vocab"], spec["hidden"]
    hidden = torch.randn(tokens, hid, generator=g).to(dev, dtype)
    weight = (torch.randn(vocab, hid, generator=g) * 0.1).to(dev, dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=g).to(dev)
    coef = torch.randn(2, tokens, generator=g).to(dev)
    head = torch.nn.Linear(hid, vocab, bias=False, device=dev, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    del weight
    head.weight.requires_grad_(grad)
    hidden.requires_grad_(grad)
    return hidden, head, targets, coef


def run_case(spec: dict, hidden, head, targets, coef):
    """One evaluation of the case (and its backward in fwd_bwd). Returns (logp, entropy)."""
    import torch

    grad = spec["mode"] == "fwd_bwd"
    with torch.set_grad_enabled(grad):
        if spec["path"] == "naive":
            logp, ent = naive_logprobs(hidden, head.weight, targets)
        else:
            logp, ent = unipo_logprobs(hidden, head, targets, spec["chunk_tokens"])
        if grad:
            hidden.grad = head.weight.grad = None
            ((logp * coef[0]).sum() + (ent * coef[1]).sum()).backward()
    return logp.detach(), ent.detach()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reference_outputs(spec: dict) -> dict:
    """Float64 log-probs, entropies and ∂loss/∂hidden of the first ``ref_tokens`` tokens.

    Row i of these depends only on token i, so a prefix is exact; ∂loss/∂W sums over all tokens
    and has no cheap reference."""
    import torch

    hidden, head, targets, coef = make_inputs(spec, spec["tokens"], False)
    n = min(spec["ref_tokens"], spec["tokens"])
    w = head.weight.detach().double()
    del head
    cols: dict[str, list] = {"logp": [], "entropy": [], "grad_hidden": []}
    for s in range(0, n, 128):
        h = hidden[s : min(s + 128, n)].detach().double().requires_grad_()
        y, a, b = targets[s : s + len(h)], coef[0, s : s + len(h)], coef[1, s : s + len(h)]
        logsm = torch.log_softmax(h @ w.T, dim=-1)
        logp = logsm.gather(-1, y[:, None]).squeeze(-1)
        ent = -(logsm.exp() * logsm).sum(-1)
        ((logp * a.double()).sum() + (ent * b.double()).sum()).backward()
        for key, v in zip(cols, (logp.detach(), ent.detach(), h.grad)):
            cols[key].append(v.cpu())
    return {k: torch.cat(v) for k, v in cols.items()}


def worker_main(spec_path: str, result_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(ROOT / "src"))
    if spec["path"] == "reference":
        t0 = time.perf_counter()
        torch.save(reference_outputs(spec), spec["outputs"])
        Path(result_path).write_text(json.dumps({"time_s": time.perf_counter() - t0}))
        return
    grad = spec["mode"] == "fwd_bwd"
    dev = spec["device"]
    # untimed warm-up of the same path on 64 tokens: library initialisation is not counted
    warm = make_inputs(spec, 64, grad)
    run_case({**spec, "chunk_tokens": min(spec.get("chunk_tokens") or 64, 32)}, *warm)
    del warm
    hidden, head, targets, coef = make_inputs(spec, spec["tokens"], grad)
    probe = MemoryProbe(dev)
    probe.start()
    _sync(dev)
    t0 = time.perf_counter()
    logp, ent = run_case(spec, hidden, head, targets, coef)
    _sync(dev)
    times = [time.perf_counter() - t0]
    peak_extra = probe.stop()
    for _ in range(spec["repeats"] - 1):
        _sync(dev)
        t0 = time.perf_counter()
        run_case(spec, hidden, head, targets, coef)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    out = {"logp": logp.cpu(), "entropy": ent.cpu()}
    if grad:
        out["grad_hidden"] = hidden.grad.cpu()
        out["grad_weight"] = head.weight.grad.cpu()
    torch.save(out, spec["outputs"])
    elem = torch.finfo(getattr(torch, spec["dtype"])).bits // 8
    grad_bytes = (hidden.numel() + head.weight.numel()) * elem if grad else 0
    res = {
        "peak_extra_mb": peak_extra / 2**20,
        "time_s": statistics.median(times),
        "times_s": times,
        "grad_buffers_mb": grad_bytes / 2**20,
        "memory_method": probe.method,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if dev.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    Path(result_path).write_text(json.dumps(res))


# ---------------------------------------------------------------------------------- orchestrator
def available_bytes() -> float:
    """MemAvailable on Linux (inf when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return math.inf


def estimate_peak_bytes(
    path: str, mode: str, tokens: int, vocab: int, hidden: int, chunk: int | None
) -> float:
    """Rough upper estimate of a case's extra memory (to skip what cannot fit)."""
    rows = tokens if path == "naive" else min(chunk or tokens, tokens)
    est = NAIVE_PEAK_TENSORS[mode] * rows * vocab * 4
    if mode == "fwd_bwd":
        est += (tokens + vocab) * hidden * 4
    return est


def run_worker(spec: dict, workdir: Path, tag: str, max_wait: float) -> dict:
    from vs_trl import run_measured, wait_for_quiet

    spec_path, result_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec = {**spec, "outputs": str(workdir / f"{tag}.pt")}
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    # glibc: serve every allocation ≥ 1 MiB with mmap (a fixed threshold, not the dynamic one that
    # grows to 32 MiB), so a freed tensor leaves the RSS at once and RSS follows live tensors.
    # [chunk, V] tensors at V = 151,936 are far above 32 MiB and mmapped either way.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(2**20))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(result_path)]
    busy = wait_for_quiet(max_wait) if spec["device"] == "cpu" and max_wait > 0 else math.nan
    proc, wall, foreign = run_measured(cmd, env)
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stdout + proc.stderr)[-2000:]
        return {"error": f"worker exited with {proc.returncode}:\n{tail}", "wall_s": wall}
    res = json.loads(result_path.read_text())
    return {
        **res,
        "wall_s": wall,
        "busy_before": busy,
        "foreign_cpu_share": round(foreign, 3),
        "outputs": spec["outputs"],
    }


def max_abs_diffs(ref_file: str, other_file: str, scale: bool = True) -> dict[str, float]:
    """max |other − ref| per output of ``ref`` (on ref's rows: a float64 reference covers a prefix),
    and with ``scale`` the largest |ref| of each (``<key>_max_abs``)."""
    import torch

    ref, other = torch.load(ref_file), torch.load(other_file)
    out = {}
    for key, r in ref.items():
        if key not in other:  # no gradients in fwd mode
            continue
        o = other[key][: len(r)]
        out[key] = float((o.double() - r.double()).abs().max())
        if scale:
            out[f"{key}_max_abs"] = float(r.abs().max())
    return out


def recommend(entries: dict, target: float = TARGET_RATIO) -> dict:
    """Largest chunk (the fastest, usually) whose memory ratio meets ``target`` in every measured
    entry with ≥ 4096 tokens, its time relative to the naive path there, and per entry the largest
    chunk that meets it (None: none does)."""
    relevant = [
        e for e in entries.values() if e.get("tokens", 0) >= 4096 and e.get("naive", {}).get("peak_extra_mb")
    ]
    chunks = sorted({int(c) for e in relevant for c in e.get("unipo", {})})
    ok = []
    for c in chunks:
        ratios = [e["unipo"].get(str(c), {}).get("memory_ratio") for e in relevant]
        if ratios and all(r is not None and r <= target for r in ratios):
            ok.append(c)
    per_entry = {}
    for e in relevant:
        fits = [int(c) for c, r in e["unipo"].items() if (r.get("memory_ratio") or math.inf) <= target]
        per_entry[f"{e['tokens']}/{e['mode']}"] = max(fits) if fits else None
    if not ok:
        why = f"no chunk size meets {target:.0%} in every entry with >= 4096 tokens"
        return {"chunk_tokens": None, "why": why, "largest_chunk_meeting_target": per_entry}
    best = max(ok)
    return {
        "chunk_tokens": best,
        "meets_target_in": sorted(f"{e['tokens']}/{e['mode']}" for e in relevant),
        "max_memory_ratio": max(e["unipo"][str(best)]["memory_ratio"] for e in relevant),
        "largest_chunk_meeting_target": per_entry,
        "time_ratio_vs_naive": {
            f"{e['tokens']}/{e['mode']}": e["unipo"][str(best)].get("time_ratio") for e in relevant
        },
    }


def estimate_skipped(entries: dict) -> None:
    """For an entry whose naive case was skipped (too big for this machine), estimate the naive
    peak from the largest smaller N measured on the same device and mode: its [N, V] part is
    linear in N (measured: 2,384 MB at 1,024 tokens, 9,501 MB at 4,096 on CPU), plus the gradient
    buffers. Adds ``naive_estimate`` and each unipo result's ``memory_ratio_vs_estimate``."""
    for key, e in entries.items():
        if "skipped" not in e.get("naive", {}):
            continue
        device = key.split("/")[0]
        smaller = [
            (o["tokens"], k, o)
            for k, o in entries.items()
            if k.split("/")[0] == device and o.get("mode") == e["mode"] and o["tokens"] < e["tokens"]
            and "peak_extra_mb" in o.get("naive", {})
        ]  # fmt: skip
        if not smaller:
            continue
        n0, k0, o = max(smaller, key=lambda t: t[0])
        g0, g1 = (grad_mb(o, n0), grad_mb(e, e["tokens"])) if e["mode"] == "fwd_bwd" else (0.0, 0.0)
        est = (o["naive"]["peak_extra_mb"] - g0) * e["tokens"] / n0 + g1
        e["naive_estimate"] = {
            "peak_extra_mb": est,
            "from": k0,
            "method": "[N, V] part linear in N, + gradients",
        }
        for r in e.get("unipo", {}).values():
            if "peak_extra_mb" in r:
                r["memory_ratio_vs_estimate"] = r["peak_extra_mb"] / est


def grad_mb(entry: dict, tokens: int) -> float:
    """Size of ∂hidden + ∂W in MiB for this entry's settings (float32 unless stated)."""
    st = entry.get("settings", {})
    elem = 2 if st.get("dtype") in ("bfloat16", "float16") else 4
    return (tokens + st.get("vocab", 0)) * st.get("hidden", 0) * elem / 2**20


def carry_over(old: dict | None, new: dict) -> dict:
    """``new``, plus the chunk sizes that ``old`` (the same entry from an earlier run, with the same
    vocabulary, hidden size and dtype) measured and this run did not, marked ``carried_over_from``.

    So a ``--quick`` run does not drop an earlier full sweep. Each unipo result carries the naive
    numbers of its own run (``naive_peak_extra_mb``, ``naive_time_s``) and its ratios to them."""
    if not old:
        return new
    same = ("vocab", "hidden", "dtype")
    if any(old.get("settings", {}).get(k) != new["settings"].get(k) for k in same):
        return new
    for c, r in old.get("unipo", {}).items():
        if c not in new["unipo"]:
            new["unipo"][c] = {**r, "carried_over_from": r.get("carried_over_from", old.get("date"))}
    new["unipo"] = dict(sorted(new["unipo"].items(), key=lambda kv: int(kv[0])))
    return new


def machine_info() -> dict:
    import torch
    from vs_trl import machine_info as base_info

    info = base_info([])
    info["torch"] = torch.__version__
    info["threads"] = torch.get_num_threads()
    info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def worker_spec(a: argparse.Namespace, tokens: int, mode: str) -> dict:
    return {
        "device": a.device,
        "dtype": a.dtype,
        "vocab": a.vocab,
        "hidden": a.hidden,
        "seed": a.seed,
        "tokens": tokens,
        "mode": mode,
        "repeats": a.repeats,
        "threads": a.threads,
        "ref_tokens": a.ref_tokens,
    }


def run_reference(a: argparse.Namespace, tokens: int, workdir: Path) -> str | None:
    """Float64 reference outputs for the first ``--ref-tokens`` tokens of this N (file path)."""
    if a.ref_tokens <= 0:
        return None
    res = run_worker({**worker_spec(a, tokens, "fwd"), "path": "reference"}, workdir, f"{tokens}-ref", 0)
    if "error" in res:
        print(f"[{tokens}] float64 reference FAILED: {res['error'].splitlines()[0]}", flush=True)
        return None
    n = min(a.ref_tokens, tokens)
    print(f"[{tokens}] float64 reference of the first {n} tokens ({res['time_s']:.0f} s)", flush=True)
    return res["outputs"]


def measure(a: argparse.Namespace, tokens: int, mode: str, workdir: Path, reference: str | None) -> dict:
    """Naive and unipo (every chunk size) for one N and mode, each in its own worker process."""
    base = worker_spec(a, tokens, mode)
    tag = f"{tokens}-{mode}"
    avail = available_bytes() if a.device == "cpu" else math.inf
    entry: dict = {"tokens": tokens, "mode": mode, "naive": {}, "unipo": {}}
    need = estimate_peak_bytes("naive", mode, tokens, a.vocab, a.hidden, None)
    if a.device == "cpu" and need > MEMORY_MARGIN * avail:
        entry["naive"] = {"skipped": f"needs ~{need / 2**30:.1f} GB, {avail / 2**30:.1f} GB available"}
        print(f"[{tag}] naive: skipped ({entry['naive']['skipped']})", flush=True)
    else:
        entry["naive"] = run_worker({**base, "path": "naive"}, workdir, f"{tag}-naive", a.max_wait)
        if reference and "outputs" in entry["naive"]:
            entry["naive"]["error_vs_float64"] = max_abs_diffs(
                reference, entry["naive"]["outputs"], scale=False
            )
        _print_case(tag, "naive", entry["naive"])
    naive = entry["naive"]
    for c in a.chunks:
        res = run_worker({**base, "path": "unipo", "chunk_tokens": c}, workdir, f"{tag}-unipo{c}", a.max_wait)
        if "error" not in res and "peak_extra_mb" in naive:
            res["memory_ratio"] = res["peak_extra_mb"] / naive["peak_extra_mb"]
            if mode == "fwd_bwd":  # both paths must hold ∂W and ∂hidden: the ratio without them
                g = res["grad_buffers_mb"]
                res["memory_ratio_excl_grads"] = (res["peak_extra_mb"] - g) / (naive["peak_extra_mb"] - g)
            res["time_ratio"] = res["time_s"] / naive["time_s"]
            res["max_abs_diff"] = max_abs_diffs(naive["outputs"], res["outputs"])
            # the naive numbers this result was compared with (it may outlive this entry's naive run)
            res["naive_peak_extra_mb"], res["naive_time_s"] = naive["peak_extra_mb"], naive["time_s"]
        if reference and "outputs" in res:
            res["error_vs_float64"] = max_abs_diffs(reference, res["outputs"], scale=False)
        entry["unipo"][str(c)] = res
        _print_case(tag, f"unipo c={c}", res)
        Path(res.get("outputs", workdir / "none")).unlink(missing_ok=True)
    if "outputs" in naive:
        Path(naive["outputs"]).unlink(missing_ok=True)
    for r in (naive, *entry["unipo"].values()):
        r.pop("outputs", None)
    diffs = [r["max_abs_diff"] for r in entry["unipo"].values() if "max_abs_diff" in r]
    if diffs:  # the worst over chunk sizes
        keys = [k for k in diffs[0] if not k.endswith("_max_abs")]
        entry["max_abs_diff"] = {k: max(d[k] for d in diffs) for k in keys}
        entry["max_rel_diff"] = {k: max(d[k] / max(d[f"{k}_max_abs"], 1e-30) for d in diffs) for k in keys}
        entry["within_tolerance"] = all(v <= TOLERANCE for v in entry["max_abs_diff"].values())
    errs = [r["error_vs_float64"] for r in entry["unipo"].values() if "error_vs_float64" in r]
    if errs:
        entry["unipo_error_vs_float64"] = {k: max(e[k] for e in errs) for k in errs[0]}
        entry["unipo_within_tolerance_vs_float64"] = all(v <= TOLERANCE for e in errs for v in e.values())
        if "error_vs_float64" in naive:
            entry["naive_within_tolerance_vs_float64"] = all(
                v <= TOLERANCE for v in naive["error_vs_float64"].values()
            )
    return entry


def _print_case(tag: str, name: str, r: dict) -> None:
    if "error" in r:
        print(f"[{tag}] {name}: FAILED {r['error'].splitlines()[0]}", flush=True)
        return
    extra = ""
    if "memory_ratio" in r:
        d = r["max_abs_diff"]
        worst = max(v for k, v in d.items() if not k.endswith("_max_abs"))
        extra = f"  = {r['memory_ratio']:.1%} of naive, time x{r['time_ratio']:.2f}, max|diff| {worst:.1e}"
    print(
        f"[{tag}] {name:12s}: peak extra {r['peak_extra_mb']:9,.0f} MB, {r['time_s']:7.2f} s{extra}"
        f"  (other processes {r['foreign_cpu_share']:.0%})",
        flush=True,
    )


def print_table(results: dict) -> None:
    rows = [("entry", "path", "peak extra MB", "time s", "vs naive: memory", "time", "max |diff|")]
    for key, e in results.get("entries", {}).items():
        n = e.get("naive", {})
        rows.append(
            (
                key,
                "naive",
                _num(n.get("peak_extra_mb"), ",.0f", n.get("skipped", "failed")),
                _num(n.get("time_s"), ".2f"),
                "",
                "",
                "",
            )
        )
        for c, r in e.get("unipo", {}).items():
            worst = max(
                (v for k, v in r.get("max_abs_diff", {}).items() if not k.endswith("_max_abs")), default=None
            )
            rows.append(
                (
                    key,
                    f"unipo c={c}",
                    _num(r.get("peak_extra_mb"), ",.0f", "failed"),
                    _num(r.get("time_s"), ".2f"),
                    _num(r.get("memory_ratio"), ".1%"),
                    _num(r.get("time_ratio"), ".2f"),
                    _num(worst, ".1e"),
                )
            )
    widths = [max(len(str(x)) for x in col) for col in zip(*rows)]
    for i, row in enumerate(rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for device, rec in results.get("recommendation", {}).items():
        print(f"{device}: recommended chunk_tokens {rec.get('chunk_tokens')} {rec.get('why', '')}".rstrip())


def _num(x, spec: str, missing: str = "—") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else missing


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(*argv[1:3])
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(HERE))
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="4096,8192", help="comma-separated token counts N")
    p.add_argument("--chunks", default="256,512,1024,2048", help="comma-separated unipo chunk_tokens")
    p.add_argument("--modes", default="fwd,fwd_bwd", help="fwd (no grad) and/or fwd_bwd")
    p.add_argument(
        "--quick",
        action="store_true",
        help="`make bench` sizes: --tokens 4096 --chunks <library default>,2048 --repeats 1 --ref-tokens 128",
    )
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", help="of the hidden states and W (logits are float32)")
    p.add_argument(
        "--repeats", type=int, default=2, help="timed runs per case (the first also measures memory)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ref-tokens",
        type=int,
        default=512,
        help="tokens with a float64 reference (each path's own error); 0: none",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=60,
        help="CPU: seconds to wait for other processes to go quiet before each case",
    )
    p.add_argument(
        "--out", default=str(DEFAULT_OUT), help="results JSON (entries merged by device/tokens/mode)"
    )
    p.add_argument("--show", action="store_true", help="print the table of --out and exit")
    a = p.parse_args(argv)
    if a.show:
        return print_table(json.loads(Path(a.out).read_text()))
    if a.quick:
        default = default_chunk_tokens(a.vocab, a.hidden)
        a.tokens, a.chunks, a.repeats, a.ref_tokens = "4096", f"{default},2048", 1, 128
    a.tokens = [int(x) for x in str(a.tokens).split(",")]
    a.chunks = [int(x) for x in str(a.chunks).split(",")]
    a.modes = a.modes.split(",")
    if bad := [m for m in a.modes if m not in NAIVE_PEAK_TENSORS]:
        p.error(f"unknown mode(s) {bad}: choose from fwd, fwd_bwd")
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    entries = results.setdefault("entries", {})
    info = machine_info()
    settings = {
        "vocab": a.vocab,
        "hidden": a.hidden,
        "dtype": a.dtype,
        "device": a.device,
        "seed": a.seed,
        "repeats": a.repeats,
        "worker_threads": a.threads or "torch default",
        "library_default_chunk_tokens": default_chunk_tokens(a.vocab, a.hidden),
        "inputs": "hidden ~ N(0,1), W ~ N(0, 0.1^2), uniform targets; loss = sum(a*logp) + sum(b*H)",
    }
    with tempfile.TemporaryDirectory(prefix="logprob_memory-") as tmp:
        for tokens in a.tokens:
            reference = run_reference(a, tokens, Path(tmp))
            for mode in a.modes:
                entry = measure(a, tokens, mode, Path(tmp), reference)
                entry["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                entry["machine"], entry["settings"] = info, settings
                key = f"{a.device}/{tokens}/{mode}"
                entries[key] = carry_over(entries.get(key), entry)
                estimate_skipped(entries)
                on_device = {k: e for k, e in entries.items() if k.startswith(a.device + "/")}
                results.setdefault("recommendation", {})[a.device] = recommend(on_device)
                results.update(target_ratio=TARGET_RATIO, tolerance=TOLERANCE)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
