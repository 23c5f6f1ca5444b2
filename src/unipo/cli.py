"""Command line: ``unipo train | preference | eval | report | compare | algorithms | rewards | demo |
config-help``.

Help texts are Markdown (typer's ``rich_markup_mode="markdown"``): write code as `x`, not ``x``.
Errors a user can fix are one line, ``error: ...``, and exit code 2 (``cli_output.user_errors``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from unipo.cli_output import console, err_console, quiet_third_party, user_errors
from unipo.cli_train import _run_args, _run_preference, _train_or_launch, route_train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="unipo: policy optimization for language models.",
)
MODEL_COMMANDS = {"train", "eval", "preference", "demo"}  # commands that load transformers models


@app.callback()
def _entry(ctx: typer.Context) -> None:
    quiet_third_party(load_models=ctx.invoked_subcommand in MODEL_COMMANDS)


@app.command()
def train(
    config: Annotated[str | None, typer.Argument(help="YAML config file (optional).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty run directory.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in the run directory.")
    ] = False,
) -> None:
    """Train a policy: `unipo train CONFIG.yaml model.path=DIR algorithm.name=dapo`.

    A preference preset as `algorithm.name` (or a preference config: sections data / loss /
    pairs) runs the preference trainer, offline or in on-policy rounds, as `unipo preference`.

    The run directory (`train.output_dir`) is refused when it is not empty, unless `--resume` or
    `--overwrite`. A run on a model saved by unipo warns when its prompt format (template, chat
    template, system prompt) differs from the one the model was trained with (`unipo_task.json`).
    `train.nproc=N` trains on N processes (torchrun; `train.launcher=ray` for Ray), data
    parallel (`train.parallel=ddp|fsdp2`).
    """

    config, args = _run_args(config, overrides, overwrite=overwrite, resume=resume)
    with user_errors():
        kind, args = route_train(config, args)
    _train_or_launch(kind, config, args)


@app.command("eval")
def eval_cmd(
    model_dir: Annotated[str, typer.Argument(help="Local HF model directory to evaluate.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted key=value (`task.*`, `eval.*`, `rollout.*`)")
    ] = None,
    config: Annotated[str | None, typer.Option(help="YAML config to take task/eval settings from.")] = None,
    out: Annotated[
        str | None, typer.Option(help="Output directory (default: `evals/<model name>-<date-time>` here).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty `--out` directory.")] = False,
) -> None:
    """Accuracy, mean reward, pass@k / maj@k, length and entropy on the task's evaluation prompts.

    `unipo eval runs/demo/final task.name=chain_sum eval.samples=8 eval.ks=[1,4,8]`

    A model saved by unipo carries the prompt format and task it was trained with
    (`unipo_task.json`: template, chat template on or off, system prompt, max_new_tokens, the
    task and its options, the evaluation seed and size); they are used for every key you do not
    set, and each key you set to another value is printed. Results go to `--out`, by default a
    new `evals/<model name>-<date-time>` directory under the current one (never into the model
    directory): `eval.json` and `samples.jsonl`.
    """
    from unipo.train.evaluate import default_eval_dir, eval_config, run_eval
    from unipo.train.run_dir import RunDirError, ensure_writable_dir
    from unipo.train.utils import resolve_device

    with user_errors():
        cfg, saved, differ = eval_config(model_dir, config, list(overrides or []))
        resolve_device(cfg.model.device)  # a missing GPU is refused before anything is written
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"model directory {model_dir} does not exist")
        place = Path(out) if out else default_eval_dir(model_dir)
        if out and place.is_dir() and any(place.iterdir()) and not overwrite:
            raise RunDirError(f"{place} is not empty; pass --overwrite to replace its eval.json and "
                              "samples.jsonl, or give another --out")  # fmt: skip
        ensure_writable_dir(place, "give another --out", "eval output directory")
        _print_eval_settings(model_dir, cfg, saved, differ)
        record = {"settings_from": f"{model_dir}/unipo_task.json" if saved else None,
                  "differ_from_saved": differ}  # fmt: skip
        metrics = run_eval(cfg, place, console=console, record=record)
    table = Table(title=f"eval of {model_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"written to [bold]{escape(str(place))}[/] (eval.json, samples.jsonl)")


def _print_eval_settings(model_dir: str, cfg: Any, saved: dict[str, Any] | None, differ: list[str]) -> None:
    t = cfg.task
    chat = {True: "on", False: "off", None: "if the tokenizer has one"}[t.chat]
    name = t.name if t.source == "reasoning_gym" else t.path
    what = (f"task {name} {t.config or ''}, template {t.template!r}, "
            f"chat template {chat}, {cfg.rollout.sampling.max_new_tokens} new tokens, "
            f"{t.eval_size} prompts (seed {t.eval_seed})")  # fmt: skip
    if saved is None:
        console.print(f"{escape(model_dir)} has no unipo_task.json (not saved by unipo); evaluating with "
                      f"{escape(what)}", soft_wrap=True)  # fmt: skip
        return
    console.print(f"settings the model was trained with ({escape(model_dir)}/unipo_task.json): "
                  f"{escape(what)}", soft_wrap=True)  # fmt: skip
    for line in differ:
        err_console.print(f"[yellow]warning:[/] not as trained: {escape(line)}", soft_wrap=True)


@app.command()
def report(
    run_dirs: Annotated[list[str], typer.Argument(help="Run directories (several are overlaid).")],
    out: Annotated[
        str | None,
        typer.Option(help="Where to write report.html and plots/ (default: the run itself for one run, "
                     "`reports/<name>-vs-<name>` for several)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a report already in `--out`.")] = False,
) -> None:
    """PNG plots and an HTML page for one or several runs.

    One run: written into its run directory (`report.html`, `plots/`), as the trainer writes it.
    Several runs: a new `reports/<name>-vs-<name>` directory (or `--out`); never into a run
    directory, and an existing report is replaced only with `--overwrite`.
    """
    from unipo.diagnostics.report import report_main

    with user_errors():
        path = report_main(run_dirs, out, overwrite)
    console.print(f"report: {escape(str(path))}")


@app.command()
def compare(
    spec: Annotated[str, typer.Argument(help="Spec YAML: base, variants, seeds, output_dir.")],
) -> None:
    """Run each (variant, seed) as a run directory; write compare.html/.json with 95% intervals."""
    from unipo.diagnostics.compare import compare_main

    with user_errors():
        console.print(f"comparison report: {escape(str(compare_main(spec, console=console)))}")


@app.command()
def preference(
    config: Annotated[str | None, typer.Argument(help="YAML config file (optional).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty run directory.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint (round ends).")] = False,
    presets: Annotated[bool, typer.Option("--presets", help="List the preference presets and exit.")] = False,
) -> None:
    """Preference optimization: `unipo preference CONFIG.yaml model.path=DIR loss.preset=ipo`."""
    from unipo.preference import list_presets

    if presets:
        from unipo.algorithms import get_algorithm
        from unipo.preference.presets import RL_PRESETS

        table = Table(show_lines=True, title="unipo preference presets")
        for col in ("name", "loss (defaults)", "paper / notes", "source"):
            table.add_column(col, overflow="fold")
        for p in list_presets():
            d = p.describe()
            loss = d["loss"] + "".join(f"\n{k}: {d[k]}" for k in ("ordering", "pairing") if k in d)
            paper = d["paper"] + (f"\n{d['notes']}" if d["notes"] else "")
            table.add_row(d["name"], loss, paper, d["source"])
        for name in RL_PRESETS:  # preference papers' methods that run in the RL trainer
            a = get_algorithm(name)
            parts = a.describe()
            table.add_row(f"{name}\n(RL: unipo train algorithm.name={name})",
                          f"{parts['advantage']}\n{parts['surrogate']}", f"{a.paper}\n{a.notes}",
                          a.source)  # fmt: skip
        console.print(table)
        return
    config, args = _run_args(config, overrides, overwrite=overwrite, resume=resume)
    _run_preference(config, args)


def _parts_lines(d: dict) -> list[str]:
    """One "kind: part(params)" line per part of a described RL preset."""
    lines = [f"advantage: {d['advantage']}"]
    lines += [f"selection: {s}" for s in d["selections"]]
    lines += [f"token weight: {s}" for s in d["token_weights"]]
    lines += [f"surrogate: {d['surrogate']}"]
    lines += [f"regularizer: {s}" for s in d["regularizers"]]
    lines += [f"aggregate: {d['aggregate']}"]
    lines += [f"reward: {s}" for s in d["rewards"]]
    lines += [f"correction: {s}" for s in d.get("corrections", [])]
    lines += [f"prompt scheduler: {d['scheduler']}"] if d.get("scheduler") else []
    lines += [f"buffer: {s}" for s in d.get("buffers", [])]
    return lines + ([f"rollout: {d['rollout']}"] if d.get("rollout") else [])


def _show_one(d: dict, kind: str, parts: list[str]) -> None:
    """One preset in full: a field / value table with its source and every deviation."""
    table = Table(show_header=False, show_lines=True, title=f"{d['name']} ({kind})")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("paper", d["paper"])
    table.add_row("parts" if kind == "RL algorithm" else "loss", "\n".join(parts))
    if d["notes"]:
        table.add_row("notes", d["notes"])
    table.add_row("source", d["source"] or "(not stated)")
    if d["deviations"] is None:
        table.add_row("deviations", "(not stated)")
    elif not d["deviations"]:
        table.add_row("deviations", "none")
    else:
        table.add_row("deviations", "\n".join(f"- {x}" for x in d["deviations"]))
    console.print(table)


@app.command()
def algorithms(
    name: Annotated[str | None, typer.Argument(help="Show one preset (RL or preference) in full.")] = None,
) -> None:
    """List every preset: RL algorithms (parts, defaults, paper) and preference presets.

    ``unipo algorithms NAME`` shows one of either kind in full, with its source and deviations.
    """
    from rich.markup import escape

    from unipo.algorithms import list_algorithms
    from unipo.preference import list_presets

    algos, prefs = list_algorithms(), list_presets()
    if name is not None:
        for a in algos:
            if a.name == name:
                d = a.describe()
                return _show_one(d, "RL algorithm", _parts_lines(d))
        for p in prefs:
            if p.name == name:
                d = p.describe()
                loss = [d["loss"], *([f"ordering: {d['ordering']}"] if "ordering" in d else [])]
                return _show_one(d, "preference preset", loss)
        known = (  # one line, not wrapped, whatever the terminal width
            f"RL algorithms: {', '.join(a.name for a in algos)}; "
            f"preference presets: {', '.join(p.name for p in prefs)}"
        )
        console.print(f"[bold red]error:[/] unknown preset {escape(repr(name))}; {known}", soft_wrap=True)
        raise typer.Exit(code=2)
    table = Table(show_lines=True, title="unipo algorithms (RL)")
    for col in ("name", "parts (defaults)", "paper / notes"):
        table.add_column(col, overflow="fold")
    for a in algos:
        d = a.describe()
        about = d["paper"] + (f"\n{d['notes']}" if d["notes"] else "")
        table.add_row(a.name, "\n".join(_parts_lines(d)), about)
    console.print(table)
    title = "preference presets (unipo preference CFG loss.preset=NAME; unipo train algorithm.name=NAME)"
    table = Table(show_lines=True, title=title)
    for col in ("name", "loss (defaults)", "paper / notes"):
        table.add_column(col, overflow="fold")
    for p in prefs:
        d = p.describe()
        loss = d["loss"] + (f"\nordering: {d['ordering']}" if "ordering" in d else "")
        table.add_row(p.name, loss, d["paper"] + (f"\n{d['notes']}" if d["notes"] else ""))
    console.print(table)


@app.command("config-help")
def config_help() -> None:
    """Every config key with its default and help text."""
    from unipo.config import describe_fields

    table = Table(title="unipo config keys")
    for col in ("key", "default", "help"):
        table.add_column(col, overflow="fold")
    for key, default, text in describe_fields():
        table.add_row(key, default, text)
    console.print(table)


@app.command()
def demo(
    output_dir: Annotated[str, typer.Option(help="Demo directory.")] = "runs/demo",
    overwrite: Annotated[
        bool, typer.Option(help="Replace a previous demo run in the demo directory (`make demo` passes it).")
    ] = False,
    quick: Annotated[bool, typer.Option(help="A tiny budget (smoke test), not the real demo.")] = False,
    env: Annotated[
        str | None,
        typer.Option(help="An embedded environment instead: calculator (tool use) or guess (a game)."),
    ] = None,
) -> None:
    """Build the tiny model, warm-start it, train it with GRPO and show before/after.

    A non-empty demo directory is refused unless `--overwrite` is given (then the previous demo
    run is replaced, and the output says so). `--env calculator|guess` runs an embedded
    environment's demo instead (its own directory, runs/demo-ENV by default, always replaced).
    """
    if env is not None:
        from unipo.envs.demo import run_env_demo

        out = output_dir if output_dir != "runs/demo" else f"runs/demo-{env}"
        with user_errors(lambda: out):
            run_env_demo(env, output_dir=out, quick=quick, console=console)
        return
    from unipo.demo import run_demo

    with user_errors(lambda: output_dir):
        run_demo(output_dir=output_dir, overwrite=overwrite, quick=quick, console=console)


@app.command()
def rewards() -> None:
    """List the rewards, reward combiners and reward parts beyond exact answers, with their sources."""
    from unipo.rewards.catalog import REWARD_CATALOG

    table = Table(title="rewards (config: rewards[].name, reward_combiner.name, algorithm parts)")
    for col in ("name", "kind", "what", "source", "deviations"):
        table.add_column(col, overflow="fold")
    for r in REWARD_CATALOG:
        table.add_row(r.name, r.kind, r.summary, r.source, "\n".join(r.deviations) or "none")
    console.print(table)


def main() -> None:
    if "WORLD_SIZE" in __import__("os").environ:  # a torchrun worker: its traceback goes to the error
        from torch.distributed.elastic.multiprocessing.errors import record  # file torchrun prints

        record(_main)()
    else:
        _main()


def _main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
