"""One summary of every benchmark result in ``benchmarks/results/*.json``, as markdown tables.

    python benchmarks/summary.py                        # print to stdout
    python benchmarks/summary.py --results other/dir    # another results directory

Reads ``vs_trl.json`` (unipo / TRL step time per setup), ``logprob_memory.json`` (peak extra
memory of unipo's chunked log-probs vs the naive full log-softmax, per chunk size, and the
numerical differences) and ``scaling.json`` (fitted exponents of step time). A missing file is
reported as such; any other ``*.json`` is listed by name. Each table says which target it checks.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNOWN = ("vs_trl.json", "logprob_memory.json", "scaling.json", "length_grouping.json")
TRL_TARGET, MEMORY_TARGET, LINEAR_TOLERANCE = 0.5, 0.10, 1.05


def _f(x, spec: str, missing: str = "—") -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and math.isnan(x)):
        return missing
    return format(x, spec)


def _ok(flag: bool | None) -> str:
    return "—" if flag is None else ("yes" if flag else "**no**")


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def vs_trl_section(data: dict) -> str:
    rows = []
    for name, e in data.items():
        u, t = e.get("unipo", {}), e.get("trl", {})
        ratio = e.get("ratio")
        rows.append(
            [
                name,
                _f(u.get("step_s"), ".3f", "failed"),
                _f(t.get("step_s"), ".3f", "failed"),
                _f(ratio, ".2f"),
                _ok(None if ratio is None else ratio <= TRL_TARGET),
                e.get("machine", {}).get("cpu", "?"),
                str(e.get("date", "?"))[:10],
            ]
        )
    head = ["setup", "unipo s/step", "TRL s/step", "unipo/TRL", f"≤ {TRL_TARGET}", "machine", "date"]
    return "### unipo vs TRL GRPOTrainer (vs_trl.json)\n\n" + table(head, rows)


def _worst(d: dict | None) -> float | None:
    vals = [v for k, v in (d or {}).items() if not k.endswith("_max_abs")]
    return max(vals) if vals else None


def logprob_section(data: dict) -> str:
    rows = []
    for key, e in data.get("entries", {}).items():
        naive = e.get("naive", {})
        n_peak = _f(naive.get("peak_extra_mb"), ",.0f", "failed")
        est = e.get("naive_estimate", {}).get("peak_extra_mb")
        if "skipped" in naive:
            n_peak = f"skipped (too big); est. ~{est:,.0f}" if est else "skipped (too big)"
        for c, r in e.get("unipo", {}).items():
            ratio = r.get("memory_ratio")
            est_ratio = r.get("memory_ratio_vs_estimate")
            rows.append(
                [
                    key,
                    n_peak,
                    f"{c}*" if "carried_over_from" in r else c,
                    _f(r.get("peak_extra_mb"), ",.0f", "failed"),
                    _f(ratio, ".1%") if est_ratio is None else f"~{est_ratio:.1%} (est.)",
                    _f(r.get("memory_ratio_excl_grads"), ".1%"),
                    _f(r.get("time_ratio"), ".2f"),
                    _f(_worst(r.get("max_abs_diff")), ".1e"),
                    _f(_worst(r.get("error_vs_float64")), ".1e"),
                    _f(_worst(naive.get("error_vs_float64")), ".1e"),
                    _ok(None if ratio is None or e.get("tokens", 0) < 4096 else ratio <= MEMORY_TARGET)
                    if est_ratio is None
                    else f"{_ok(est_ratio <= MEMORY_TARGET)} (est.)",
                ]
            )
    head = [
        "device/tokens/mode",
        "naive peak MB",
        "chunk",
        "unipo peak MB",
        "unipo/naive memory",
        "excl. grads",
        "unipo/naive time",
        "max abs diff vs naive",
        "unipo err vs fp64",
        "naive err vs fp64",
        f"≤ {MEMORY_TARGET:.0%}",
    ]
    out = "### Log-prob + entropy memory, vocabulary {v:,} (logprob_memory.json)\n\n".format(
        v=next(iter(data.get("entries", {}).values()), {}).get("settings", {}).get("vocab", 0)
    )
    out += table(head, rows)
    if any(
        "carried_over_from" in r
        for e in data.get("entries", {}).values()
        for r in e.get("unipo", {}).values()
    ):
        out += "\n\n\\* from an earlier run than the naive column (ratios are to that run's naive numbers)"
    for device, rec in data.get("recommendation", {}).items():
        if rec.get("chunk_tokens"):
            out += (
                f"\n\n{device}: largest chunk meeting ≤ {MEMORY_TARGET:.0%} in every measured entry with "
                f"≥ 4096 tokens: **{rec['chunk_tokens']}** (worst ratio {rec['max_memory_ratio']:.1%})"
            )
        else:
            out += f"\n\n{device}: {rec.get('why', 'no recommendation')}"
        per = rec.get("largest_chunk_meeting_target")
        if per:
            out += "; largest chunk meeting it per entry: " + ", ".join(f"{k} {v}" for k, v in per.items())
    return out


def scaling_section(data: dict) -> str:
    rows = []
    for name, e in data.items():
        for axis, ax in e.get("axes", {}).items():
            fit = ax.get("fit", {})
            pts = ", ".join(f"{p['x']}: {_f(p.get('step_s'), '.3f', 'failed')}" for p in ax.get("points", []))
            local = ", ".join(f"{b:.2f}" for b in ax.get("local_exponents", []))
            phases = ", ".join(f"{k} {b:.2f}" for k, b in ax.get("phase_exponents", {}).items())
            b = fit.get("b")
            rows.append(
                [
                    name,
                    ax.get("x", axis),
                    pts,
                    f"{_f(b, '.2f')} ± {_f(fit.get('b_se'), '.2f')}",
                    local or "—",
                    phases or "—",
                    _ok(None if b is None else b <= LINEAR_TOLERANCE),
                    str(e.get("date", "?"))[:10],
                ]
            )
    head = [
        "preset/device",
        "N",
        "N: s/step",
        "exponent b",
        "per segment",
        "per phase",
        f"b ≤ {LINEAR_TOLERANCE}",
        "date",
    ]
    return "### Step time scaling, time ≈ a·N^b (scaling.json)\n\n" + table(head, rows)


def length_grouping_section(data: dict) -> str:
    rows = []
    for key, e in data.items():
        c, t = e["completion_len"], e["columns"]
        rows.append([
            key, str(e["rows"]), f"{c['median']:.0f} / {c['max']}", _f(e["row_order_s"], ".2f"),
            _f(e["grouped_s"], ".2f"), f"**{e['speedup']:.2f}×**",
            f"{t['row_order']:,} → {t['grouped']:,} ({t['completion_tokens']:,} real)",
            _f(e["max_diff"], ".1e"), e["date"][:10],
        ])  # fmt: skip
    head = ["preset/device/pass", "rows", "length median / max", "row order s", "grouped s", "speedup",
            "completion columns run", "max diff", "date"]  # fmt: skip
    title = "### Length-grouped micro-batches vs row order (length_grouping.json)"
    return title + "\n\n" + table(head, rows)


SECTIONS = {
    "vs_trl.json": vs_trl_section,
    "logprob_memory.json": logprob_section,
    "scaling.json": scaling_section,
    "length_grouping.json": length_grouping_section,
}


def summarize(results_dir: Path) -> str:
    parts = []
    for name, render in SECTIONS.items():
        path = results_dir / name
        if not path.exists():
            parts.append(f"### {name}\n\nnot run yet")
            continue
        try:
            parts.append(render(json.loads(path.read_text())))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            parts.append(f"### {name}\n\nunreadable: {type(exc).__name__}: {exc}")
    others = sorted(p.name for p in results_dir.glob("*.json") if p.name not in KNOWN)
    if others:
        parts.append("Other result files: " + ", ".join(others))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(HERE / "results"), help="directory of the *.json results")
    a = p.parse_args(argv)
    print(summarize(Path(a.results)))


if __name__ == "__main__":
    main()
