"""``unipo report``: PNG plots and one self-contained HTML page for one or several runs.

The page (``report.html``) references its images relatively (``plots/<panel>.png``), so the
output folder can be copied or zipped as a whole. For each run it shows a row of final numbers
(from ``summary.json`` where the run finished, else from ``metrics.jsonl``), its status, and its
resolved ``config.yaml`` and ``env.json`` in collapsible blocks.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from unipo.diagnostics.evalset import eval_set_label, run_overlap
from unipo.diagnostics.plots import PANELS, load_runs, plot_panels, plot_passk_curves, run_names
from unipo.train.run_dir import atomic_write_text

Numbers = dict[str, float]


def _eval_numbers(record: dict[str, Any]) -> Numbers:
    """``eval/accuracy`` → ``accuracy``: the eval keys of one record, without their prefix."""
    return {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("eval/") and _is_num(v)}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def run_numbers(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Final numbers of one run: status, steps, wall time, before/after eval, last training values.

    ``before``/``after`` come from ``summary.json`` (``before/*``, ``after/*``) when the run
    finished, else from the step-0 eval record and the ``final_eval`` event of ``metrics.jsonl``;
    an unfinished run has no "after" (its accuracy curve is still in the plots).
    """
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    steps_recs = [r for r in records if "event" not in r]
    before = {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("before/")}
    after = {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("after/")}
    if not before:
        before = next((_eval_numbers(r) for r in steps_recs if r.get("step") == 0), {})
    if not after:
        after = next((_eval_numbers(r) for r in records if r.get("event") == "final_eval"), {})
    last: Numbers = {}
    for r in steps_recs:
        last.update({k: v for k, v in r.items() if _is_num(v) and v == v})  # v == v drops NaN
    events = [r["event"] for r in records if "event" in r and r["event"] != "final_eval"]
    status = "finished" if summary else (events[-1] if events else "incomplete")
    wall = summary.get("wall_seconds")
    if wall is None and any("time/step" in r for r in steps_recs):
        wall = sum(r.get("time/step", 0.0) for r in steps_recs)  # training steps only: a lower bound
    return {
        "status": status,
        "steps": summary.get("steps", max((int(r.get("step", 0)) for r in steps_recs), default=0)),
        "wall_seconds": wall,
        "before": before,
        "after": after,
        "last": last,
    }


def _pass_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys = {k for row in rows for k in row["after"] if re.fullmatch(r"pass@\d+", k)}
    return sorted(keys, key=lambda k: int(k.split("@")[1]))


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def table_rows(names: list[str], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, formatted cells) of the final-numbers table, one row per run."""
    passk = _pass_keys(rows)
    header = ["run", "status", "steps", "wall time", "reward (last)", "accuracy before",
              "accuracy after", "greedy before", "greedy after", *[f"{k} after" for k in passk],
              "entropy (last)", "length (last)"]  # fmt: skip
    cells = []
    for name, row in zip(names, rows):
        b, a, last = row["before"], row["after"], row["last"]
        cells.append(
            [name, row["status"], _fmt(row["steps"]), _fmt_time(row["wall_seconds"]),
             _fmt(last.get("reward/mean")), _fmt(b.get("accuracy")), _fmt(a.get("accuracy")),
             _fmt(b.get("greedy_accuracy")), _fmt(a.get("greedy_accuracy")),
             *[_fmt(a.get(k)) for k in passk],
             _fmt(last.get("policy/entropy")), _fmt(last.get("response/length_mean"))]
        )  # fmt: skip
    return header, cells


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
th { background: #f3f3f3; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } img { max-width: 580px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.path { color: #777; font-size: 0.85em; }
"""


def _details(summary: str, path: Path) -> str:
    body = path.read_text() if path.exists() else f"({path.name} not found)"
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(body)}</pre></details>"


def render_html(
    names: list[str], run_dirs: list[Path], rows: list[dict[str, Any]], images: list[str],
    eval_label: str = "evaluation set",
) -> str:  # fmt: skip
    """The report page; ``images`` are paths relative to the page; ``eval_label`` names the
    evaluation prompts ("held-out set" only when none is a training prompt: ``evalset.py``)."""
    esc = html.escape
    header, cells = table_rows(names, rows)
    thead = "".join(f"<th>{esc(h)}</th>" for h in header)
    tbody = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in cells)
    runs = "".join(
        f"<li><b>{esc(n)}</b> <span class='path'>{esc(str(p.resolve()))}</span></li>"
        for n, p in zip(names, run_dirs)
    )
    figures = "".join(
        f"<figure><img src='{esc(src)}' alt='{esc(Path(src).stem)}'></figure>\n" for src in images
    )
    configs = "".join(
        f"<h3>{esc(n)}</h3>\n{_details('config.yaml (resolved)', p / 'config.yaml')}\n"
        f"{_details('env.json', p / 'env.json')}\n"
        for n, p in zip(names, run_dirs)
    )
    title = "unipo report: " + ", ".join(names)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>{esc(title)}</h1>\n<ul>{runs}</ul>\n"
        f"<h2>Final numbers</h2>\n<table><thead><tr>{thead}</tr></thead><tbody>\n{tbody}</tbody></table>\n"
        f"<p class='path'>before/after: evaluation on the {esc(eval_label)} at step 0 and after the last "
        "step; "
        "(last): the last training step. wall time without summary.json sums training steps only.</p>\n"
        f"<h2>Plots</h2>\n<div class='plots'>\n{figures or '<p>no metrics to plot</p>'}</div>\n"
        f"<h2>Configurations</h2>\n{configs}</body></html>\n"
    )


def _passk_curve(run_dir: Path) -> dict[str, list[float]] | None:
    """``summary.json``'s ``pass_at_k`` entry ({"k", "before", "after"}), if the run has one."""
    path = run_dir / "summary.json"
    curve = json.loads(path.read_text()).get("pass_at_k") if path.is_file() else None
    return curve if isinstance(curve, dict) and {"k", "before", "after"} <= set(curve) else None


def check_run_dirs(run_dirs: list[Path]) -> None:
    """Raise a clear error for a missing directory or one without ``metrics.jsonl``."""
    if not run_dirs:
        raise ValueError("no run directories given")
    for p in run_dirs:
        if not p.is_dir():
            raise FileNotFoundError(f"run directory {p} does not exist")
        if not (p / "metrics.jsonl").is_file():
            raise ValueError(f"{p} has no metrics.jsonl; is it a unipo run directory?")


def write_report(out_dir: Path, run_dirs: list[Path]) -> Path:
    """Write ``out_dir/plots/*.png`` (runs overlaid) and ``out_dir/report.html``; return the page."""
    out_dir, run_dirs = Path(out_dir), [Path(p) for p in run_dirs]
    check_run_dirs(run_dirs)
    data = load_runs(run_dirs)
    names = run_names(run_dirs)
    label = eval_set_label(run_overlap(p, data[n]) for n, p in zip(names, run_dirs))
    written = plot_panels(data, out_dir / "plots", label)
    order = {name: i for i, name in enumerate(PANELS)}
    images = [f"plots/{p.name}" for p in sorted(written, key=lambda p: order.get(p.stem, len(order)))]
    rows = [run_numbers(p, data[n]) for n, p in zip(names, run_dirs)]
    curves = {n: c for n, p in zip(names, run_dirs) if (c := _passk_curve(p))}
    if curves:  # runs whose summary.json holds a pass@k curve before/after (``unipo demo``)
        images.append(f"plots/{plot_passk_curves(curves, out_dir / 'plots' / 'pass_at_k_curve.png').name}")
    page = out_dir / "report.html"
    atomic_write_text(page, render_html(names, run_dirs, rows, images, label))
    return page


class ReportPlaceError(ValueError):
    """The report's output place is refused (it would overwrite something)."""


def _is_run_dir(p: Path) -> bool:
    return (p / "metrics.jsonl").is_file() or (p / "config.yaml").is_file()


def report_dir(
    run_dirs: list[Path], out: str | Path | None, overwrite: bool = False, root: str | Path = "reports"
) -> Path:
    """Where ``unipo report`` writes: ``out``, else the run directory for one run, else
    ``reports/<run names joined by -vs->`` (under the current directory).

    Refused (``ReportPlaceError``): a run directory other than the only run reported on (its own
    report would be replaced), and a place that already holds a report (``report.html``) unless
    ``overwrite``. One run's report in its own directory is regenerated (as the trainer writes it).
    """
    runs = [Path(p).resolve() for p in run_dirs]
    if out is None and len(runs) == 1:
        return Path(run_dirs[0])
    place = Path(out) if out is not None else Path(root) / "-vs-".join(run_names(run_dirs))
    own = len(runs) == 1 and place.resolve() == runs[0]
    if own:
        return place
    if _is_run_dir(place):
        raise ReportPlaceError(
            f"{place} is a run directory; this report would replace its own report. Give another --out "
            "(default for several runs: reports/<names>)"
        )
    if (place / "report.html").exists() and not overwrite:
        raise ReportPlaceError(
            f"{place} already holds a report; pass --overwrite to replace it, or give another --out"
        )
    return place


def report_main(run_dirs: list[str], out: str | None = None, overwrite: bool = False) -> Path:
    """CLI entry: ``unipo report RUN_DIR [RUN_DIR ...] [--out DIR] [--overwrite]`` (``report_dir``)."""
    if not run_dirs:
        raise ValueError("no run directories given")
    paths = [Path(p) for p in run_dirs]
    check_run_dirs(paths)
    return write_report(report_dir(paths, out, overwrite), paths)
