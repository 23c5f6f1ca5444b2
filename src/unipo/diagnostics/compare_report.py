"""The ``unipo compare`` report: overlaid curves with bands, the entropy-law plot, and the HTML page.

``compare.py`` runs the cells and computes the numbers (``variant_numbers``); this module only
draws and renders them.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.ticker import MaxNLocator

from unipo.diagnostics.plots import plt

if TYPE_CHECKING:
    from unipo.diagnostics.compare import Cell, CompareSpec

CURVES = {  # plot name → (metric key, y label; {eval}: the evaluation set's name, evalset.eval_set_label)
    "reward": ("reward/mean", "training reward (all samples)"),
    "accuracy": ("eval/accuracy", "accuracy on the {eval}"),
    "entropy": ("policy/entropy", "token entropy of the trained batch (nats)"),
    "eval_entropy": ("eval/entropy", "token entropy on the {eval} (nats)"),
    "length": ("response/length_mean", "response length (tokens)"),
}


def _save(fig: Any, ax: Any, path: Path, **labels: str) -> None:
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plots(numbers: dict[str, dict[str, Any]], out: Path, eval_label: str = "evaluation set") -> list[str]:
    """plots/<curve>.png (mean over seeds with its 95% band, one colour per variant) and
    plots/entropy_law.png (the (H, R) points and each variant's fitted law); ``eval_label`` names
    the evaluation prompts ("held-out set" only when none is a training prompt)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (_, ylabel) in CURVES.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for variant, nums in numbers.items():
            c = nums["curves"][name]
            if c["steps"]:
                (line,) = ax.plot(c["steps"], c["mean"], marker="o" if len(c["steps"]) < 12 else None,
                                  ms=3, label=f"{variant} (n≤{int(max(c['n']))})")  # fmt: skip
                ax.fill_between(c["steps"], c["lo"], c["hi"], color=line.get_color(), alpha=0.2, lw=0)
        if ax.lines:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _save(fig, ax, out / f"{name}.png", xlabel="step", ylabel=ylabel.replace("{eval}", eval_label),
                  title="seed mean, 95% band")  # fmt: skip
            written.append(f"plots/{name}.png")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, nums in numbers.items():
        (H, R), law = nums["points"], nums["law"]
        if H:
            (dots,) = ax.plot(H, R, ".", alpha=0.4, label=variant)
            if math.isfinite(law["a"]):
                xs = [min(H) + (max(H) - min(H)) * i / 50 for i in range(51)]
                ax.plot(xs, [law["b"] - law["a"] * math.exp(x) for x in xs], color=dots.get_color())
    if ax.lines:
        _save(fig, ax, out / "entropy_law.png", xlabel="policy/entropy H", ylabel="training reward R",
              title="R = −a·exp(H) + b per variant")  # fmt: skip
        written.append("plots/entropy_law.png")
    plt.close(fig)
    return written


def _ci(e: dict[str, float]) -> str:
    if e["n"] == 0:
        return "—"
    if not math.isfinite(e["lo"]):
        return f"{e['mean']:.3f} (n=1)"
    return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] (n={e['n']})"


def _fit(law: dict[str, float], k: str) -> str:
    lo, hi = law[f"{k}_lo"], law[f"{k}_hi"]
    return f"{law[k]:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if math.isfinite(lo) else "")


Table = tuple[list[str], list[list[str]]]  # (header, rows) of plain text
DYNAMICS = ("entropy_start", "entropy_end", "entropy_change", "dyn_r", "dyn_sign_agree")
NOTES = {
    "finals": "accuracy, greedy_accuracy, pass@k, entropy_eval, length: evaluation on the {eval} after "
    "training (summary.json); <name>_before: the same evaluation before training; <name>_change: after − "
    "before, per run; entropy_last, reward_last: the last training step. With few seeds the interval is "
    "narrow and itself uncertain.",
    "entropy–performance law on checkpoints": "R = accuracy, H = token entropy on the {eval} at "
    "every evaluation of every seed run (step 0, every eval.every steps, the end), fitted once on all "
    "points; [95% interval] from refits on seed runs resampled with replacement.",
    "entropy dynamics": "entropy_start/end: mean policy/entropy of the first/last 5 steps; dyn_r: Pearson "
    "r of the predicted (−Cov(log π, A)) and the measured entropy change, per run; pooled r: all runs' "
    "pairs, centred per run.",
}


def report_tables(numbers: dict[str, Any], gaps: dict[str, Any], baseline: str | None) -> dict[str, Table]:
    """The report's tables as plain text, keyed by section title; HTML and Markdown render these."""
    metrics = list(dict.fromkeys(m for n in numbers.values() for m in n["table"]))
    tables: dict[str, Table] = {
        "Final numbers: mean [95% bootstrap CI] over seeds": (
            ["variant", *metrics],
            [[v, *(_ci(n["table"][m]) if m in n["table"] else "—" for m in metrics)]
             for v, n in numbers.items()],
        ),
        "Entropy–performance law R = −a·exp(H) + b": (
            ["variant", "a", "b", "R²", "ceiling −a+b", "points", "a (10-step means)", "b", "R²", "ceiling",
             "points"],
            [[v, *(f"{n['law'][k]:.4g}" for k in ("a", "b", "r2", "ceiling")), str(int(n["law"]["n"])),
              *(f"{n['law'][k + '_binned']:.4g}" for k in ("a", "b", "r2", "ceiling")),
              str(int(n["law"]["n_binned"]))] for v, n in numbers.items()],
        ),
        "Entropy–performance law on checkpoints": (
            ["variant", "a", "b", "R²", "ceiling −a+b", "points (runs)"],
            [[v, *(_fit(n["checkpoint_law"], k) for k in ("a", "b", "r2", "ceiling")),
              f"{int(n['checkpoint_law']['n'])} ({int(n['checkpoint_law']['runs'])})"]
             for v, n in numbers.items()],
        ),
        "Entropy dynamics": (
            ["variant", *DYNAMICS, "pooled r (points)"],
            [[v, *(_ci(n["dynamics"][k]) for k in DYNAMICS),
              f"{n['dynamics']['pooled_r']:.3f} ({n['dynamics']['pooled_points']})"]
             for v, n in numbers.items()],
        ),
    }  # fmt: skip
    if baseline and gaps:
        cols = list(dict.fromkeys(m for g in gaps.values() for m in g))
        fmt = "{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        tables[f"Difference from {baseline}: mean [95% bootstrap CI]"] = (
            ["variant", *cols],
            [[v, *(fmt.format(**g[m]) if m in g else "—" for m in cols)] for v, g in gaps.items()],
        )
    return tables


def _html_table(table: Table) -> str:
    header, rows = table
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def _note(title: str, eval_label: str = "evaluation set") -> str:
    note = NOTES["finals"] if title.startswith("Final") else NOTES.get(title.split(":")[0].lower(), "")
    return note.replace("{eval}", eval_label)


_CSS = """body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } img { max-width: 580px; }
.note { color: #666; font-size: 0.85em; }"""


def render_html(
    spec: CompareSpec, cells: list[Cell], tables: dict[str, Table], images: list[str],
    eval_label: str = "evaluation set",
) -> str:  # fmt: skip
    esc = html.escape
    sections = "".join(
        f"<h2>{esc(title)}</h2>\n{_html_table(t)}"
        + (f"<p class='note'>{esc(n)}</p>\n" if (n := _note(title, eval_label)) else "")
        for title, t in tables.items()
    )
    links = "<a href='{0}/seed{1}/report.html'>report</a> · <a href='logs/{0}-seed{1}.log'>log</a>"
    runs = "".join(
        f"<tr><td>{esc(c.variant)}</td><td>{c.seed}</td><td>{esc(c.status)}</td>"
        f"<td>{links.format(esc(c.variant), c.seed)}</td></tr>\n"
        for c in cells
    )
    variants = "".join(
        f"<li><b>{esc(v)}</b>: <code>{esc(' '.join(o))}</code></li>" for v, o in spec.variants.items()
    )
    figures = "".join(f"<figure><img src='{esc(s)}' alt='{esc(s)}'></figure>\n" for s in images)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>unipo compare: "
        f"{esc(spec.output_dir)}</title><style>{_CSS}</style></head><body>\n<h1>unipo compare</h1>\n"
        f"<p>seeds {esc(str(spec.seeds))}; variants:</p><ul>{variants}</ul>\n{sections}"
        f"<h2>Curves</h2>\n<div class='plots'>\n{figures or '<p>no data</p>'}</div>\n"
        "<h2>Cells</h2>\n<table><thead><tr><th>variant</th><th>seed</th><th>status</th><th>run</th></tr>"
        f"</thead><tbody>\n{runs}</tbody></table>\n</body></html>\n"
    )


def render_markdown(spec: CompareSpec, tables: dict[str, Table], eval_label: str = "evaluation set") -> str:
    """compare.md: the same tables as GitHub Markdown, ready to paste into a results page."""

    def md(table: Table) -> str:
        header, rows = table
        cell = lambda c: c.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]) + "\n"

    parts = [f"# unipo compare: {spec.output_dir}\n", f"Seeds {spec.seeds}.\n"]
    for title, t in tables.items():
        parts.append(f"## {title}\n\n{md(t)}" + (f"\n{n}\n" if (n := _note(title, eval_label)) else ""))
    return "\n".join(parts)
