"""unipo's GRPO step time as completions per step and completion length grow; fitted exponents.

    python benchmarks/scaling.py                     # demo model on CPU: 32..256 completions, 16..128 tokens
    python benchmarks/scaling.py --preset 25m --completions 16,32,64 --lengths 16,32,64 --steps 2
    python benchmarks/scaling.py --axes completions --completions 16,32 --warmup 1 --steps 2   # smoke
    python benchmarks/scaling.py --show              # table of the JSON

Each point is one GRPO step configuration run in its own worker process, exactly as
``vs_trl.py`` runs unipo (its ``prepare``, ``run_worker`` and ``summarize``: the same model
directory, prompt pool, cheap reward, fixed-length completions with ``min_new_tokens =
max_new_tokens = L``, μ = 1, a reference pass for β > 0). Two axes, the other sizes held fixed:

- ``completions``: P prompts × G = 8 completions per step, P·G = 32, 64, 128, 256 (L = 16);
- ``length``: L = 16, 32, 64, 128 completion tokens (P·G = 32).

Micro-batches have a fixed size (``--micro``, default 32 rows), so more completions mean more
micro-batches (gradient accumulation), as in real training. The step time of a point is the
median over its timed steps (after ``--warmup`` untimed ones) of all rounds; with
``--rounds`` > 1 the points run in reverse order every other round, so that slow drift of the
machine does not masquerade as scaling. The exponent b of ``time ≈ a·N^b`` is the least-squares
slope on log-log axes, with its standard error; the per-segment slopes show whether growth
steepens at the large end. Per-phase exponents (generate, reference log-probs, update) come
from the step's own phase timers. Target: b ≤ 1.05 on the completions axis (no worse than linear).
Results are merged into ``benchmarks/results/scaling.json``, one entry per ``preset/device``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from vs_trl import COMMON, PHASES, add_quiet_args, machine_info, prepare, run_worker, summarize  # noqa: E402

DEFAULT_OUT = HERE / "results" / "scaling.json"
LINEAR_TOLERANCE = 1.05  # "no worse than linear": fitted b at most this


def fit_power_law(xs: list[float], ys: list[float]) -> dict:
    """Least-squares fit of log y = log a + b·log x. Returns a, b, b's standard error and R².

    Needs ≥ 2 points with x, y > 0; the standard error needs ≥ 3 (else NaN)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    n = len(pts)
    if n < 2:
        raise ValueError("fit_power_law needs at least two positive points")
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        raise ValueError("fit_power_law needs at least two distinct x values")
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    log_a = my - b * mx
    resid = [p[1] - (log_a + b * p[0]) for p in pts]
    ss_res = sum(r * r for r in resid)
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    se = math.sqrt(ss_res / (n - 2) / sxx) if n > 2 else math.nan
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"a": math.exp(log_a), "b": b, "b_se": se, "r2": r2, "points": n}


def local_exponents(xs: list[float], ys: list[float]) -> list[float]:
    """Slope of log y against log x between consecutive points (x sorted ascending)."""
    pairs = sorted(zip(xs, ys))
    return [
        math.log(y1 / y0) / math.log(x1 / x0)
        for (x0, y0), (x1, y1) in itertools.pairwise(pairs)
        if x1 > x0 and y0 > 0 and y1 > 0
    ]


def axis_points(a: argparse.Namespace) -> dict[str, list[dict]]:
    """(P, G, L) of every point of each requested axis."""
    pts: dict[str, list[dict]] = {}
    for axis in a.axes:
        if axis == "completions":
            if bad := [n for n in a.completions if n % a.group]:
                raise SystemExit(f"--completions {bad} are not multiples of --group {a.group}")
            pts[axis] = [
                {"prompts": n // a.group, "group": a.group, "length": a.base_length} for n in a.completions
            ]
        elif axis == "length":
            pts[axis] = [
                {"prompts": a.base_completions // a.group, "group": a.group, "length": n} for n in a.lengths
            ]
        else:
            raise SystemExit(f"unknown axis {axis!r}: choose from completions, length")
    return pts


def point_key(p: dict) -> str:
    return f"{p['prompts']}x{p['group']}x{p['length']}"


def fit_axis(axis: str, points: list[dict]) -> dict:
    """Fit step time (and each phase) against the axis variable."""
    ok = [p for p in points if "step_s" in p]
    out: dict = {}
    if len(ok) < 2:
        return {"error": "fewer than two points measured"}
    xs = [p["x"] for p in ok]
    out["fit"] = fit_power_law(xs, [p["step_s"] for p in ok])
    out["local_exponents"] = local_exponents(xs, [p["step_s"] for p in ok])
    out["no_worse_than_linear"] = out["fit"]["b"] <= LINEAR_TOLERANCE
    phase_fits = {}
    for ph in PHASES:
        ys = [p.get("phases_s", {}).get(ph) for p in ok]
        if all(isinstance(y, (int, float)) and y > 0 for y in ys):
            phase_fits[ph.removeprefix("time/")] = fit_power_law(xs, ys)["b"]
    out["phase_exponents"] = phase_fits
    return out


def run(a: argparse.Namespace, workdir: Path) -> dict:
    setup = {
        **COMMON,
        "preset": a.preset,
        "device": a.device,
        "dtype": a.dtype,
        "beta": a.beta,
        "micro": a.micro,
        "warmup": a.warmup,
        "steps": a.steps,
        "gradient_checkpointing": False,
    }
    model_dir, prompts_file = prepare(setup, workdir)
    base = {**setup, "model_dir": str(model_dir), "prompts_file": str(prompts_file)}
    from vs_trl import QUESTIONS

    base["questions"] = str(QUESTIONS)
    axes = axis_points(a)
    unique: dict[str, dict] = {}
    for pts in axes.values():
        for p in pts:
            unique.setdefault(point_key(p), p)
    runs: dict[str, list[dict]] = {k: [] for k in unique}
    discarded: list[dict] = []
    for r in range(a.rounds):
        order = list(unique) if r % 2 == 0 else list(reversed(unique))
        for key in order:
            p = unique[key]
            spec = {**base, **p, "micro": min(a.micro, p["prompts"] * p["group"])}
            if p["prompts"] * p["group"] % spec["micro"]:
                raise SystemExit(f"{key}: P*G must be a multiple of --micro {spec['micro']}")
            for attempt in range(a.retries + 1):
                res = run_worker("unipo", sys.executable, spec, workdir, f"{key}-r{r}", a.max_wait)
                share = res.get("foreign_cpu_share", 0.0)
                if a.device != "cpu" or share <= a.max_foreign or attempt == a.retries or "error" in res:
                    break
                print(
                    f"[{key}] round {r + 1}: other processes took {share:.0%} of the cores; redoing",
                    flush=True,
                )
                discarded.append(
                    {
                        "point": key,
                        "round": r,
                        "foreign_cpu_share": share,
                        "step_s": [st["step_s"] for st in res.get("steps", [])],
                    }
                )
            runs[key].append(res)
            if "error" in res:
                print(f"[{key}] round {r + 1}: FAILED {res['error'].splitlines()[0]}", flush=True)
            else:
                med = sorted(st["step_s"] for st in res["steps"])[len(res["steps"]) // 2]
                print(
                    f"[{key}] round {r + 1}/{a.rounds}: {med:.3f} s/step "
                    f"(other processes {res['foreign_cpu_share']:.0%})",
                    flush=True,
                )
    summaries = {k: summarize(v) for k, v in runs.items()}
    entry: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info([x for v in runs.values() for x in v if "error" not in x]),
        "config": {k: v for k, v in base.items() if k not in ("model_dir", "prompts_file", "questions")},
        "rounds": a.rounds,
        "linear_tolerance": LINEAR_TOLERANCE,
        "discarded_runs": discarded,
        "axes": {},
    }
    for axis, pts in axes.items():
        rows = []
        for p in pts:
            s = summaries[point_key(p)]
            x = p["prompts"] * p["group"] if axis == "completions" else p["length"]
            row = {"x": x, **p}
            if "error" in s:
                row["error"] = s["error"]
            else:
                row.update(
                    {
                        k: s[k]
                        for k in (
                            "step_s",
                            "round_medians_s",
                            "generated_tokens_per_step",
                            "trained_tokens_per_step",
                            "completion_len_min",
                            "foreign_cpu_share",
                            "timed_steps",
                        )
                        if k in s
                    }
                )
                row["phases_s"] = s.get("phases_s", {})
                row["versions"] = s.get("versions")
            rows.append(row)
        entry["axes"][axis] = {
            "x": "completions per step" if axis == "completions" else "completion tokens",
            "points": rows,
            **fit_axis(axis, rows),
        }
    return entry


def print_table(results: dict) -> None:
    for name, e in results.items():
        print(f"{name} ({e.get('date', '?')}):")
        for axis, ax in e.get("axes", {}).items():
            fit = ax.get("fit", {})
            pts = ", ".join(
                f"{p['x']}: {p['step_s']:.3f} s" if "step_s" in p else f"{p['x']}: failed"
                for p in ax.get("points", [])
            )
            print(f"  {axis:12s} {pts}")
            if fit:
                local = ", ".join(f"{b:.2f}" for b in ax.get("local_exponents", []))
                phases = ", ".join(f"{k} {b:.2f}" for k, b in ax.get("phase_exponents", {}).items())
                verdict = "no worse than linear" if ax.get("no_worse_than_linear") else "WORSE than linear"
                print(
                    f"  {'':12s} b = {fit['b']:.3f} ± {fit['b_se']:.3f} (R² {fit['r2']:.3f}; {verdict}); "
                    f"per segment {local}; phases {phases}"
                )


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", help="TINY_PRESETS name of the model (demo, 25m, ...)")
    p.add_argument("--axes", default="completions,length", help="completions and/or length")
    p.add_argument("--completions", default="32,64,128,256", help="completions per step (P*G) on that axis")
    p.add_argument("--lengths", default="16,32,64,128", help="completion lengths on that axis")
    p.add_argument("--group", type=int, default=8, help="G (completions per prompt)")
    p.add_argument("--base-completions", type=int, default=32, help="P*G on the length axis")
    p.add_argument("--base-length", type=int, default=16, help="L on the completions axis")
    p.add_argument("--micro", type=int, default=32, help="rows per forward/backward (fixed)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (a reference pass when > 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per point and round")
    p.add_argument("--steps", type=int, default=5, help="timed steps per point and round")
    p.add_argument("--rounds", type=int, default=1, help="sweeps over all points (alternating order)")
    add_quiet_args(p, max_wait=120, retries=1, unit="point")
    p.add_argument("--workdir", help="where models, prompts and logs go (default: a temporary directory)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON (entries merged by preset/device)")
    p.add_argument("--show", action="store_true", help="print the table of --out and exit")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.show:
        return print_table(json.loads(out.read_text()))
    a.axes = [x.strip() for x in a.axes.split(",") if x.strip()]
    a.completions, a.lengths = _ints(a.completions), _ints(a.lengths)
    a.dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    sys.path.insert(0, str(HERE.parent / "src"))  # prepare() imports unipo (installed or not)
    results = json.loads(out.read_text()) if out.exists() else {}
    name = f"{a.preset}/{a.device}"
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        workdir = Path(a.workdir) if a.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results[name] = run(a, workdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table({name: results[name]})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
