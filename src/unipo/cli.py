"""Command line: ``unipo train | preference | eval | report | compare | algorithms | demo | config-help``.

Help texts are Markdown (typer's ``rich_markup_mode="markdown"``): write code as `x`, not ``x``.
Errors a user can fix are one line, ``error: ...``, and exit code 2 (``_user_errors``).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="unipo: policy optimization for language models.",
)
console = Console()
err_console = Console(stderr=True)
MODEL_COMMANDS = {"train", "eval", "preference", "demo"}  # commands that load transformers models


class _DropDeprecations(logging.Filter):
    """Drops third-party log records about deprecations (transformers' "... are deprecated")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


_DEPRECATION = r".*(is deprecated|are deprecated|will be removed)"
_show_warning = warnings.showwarning


def _show_unipo_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """unipo's own warnings as one ``warning: ...`` line on stderr; others as Python shows them."""
    from unipo.models.task_file import UnipoWarning

    if issubclass(category, UnipoWarning):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
    else:
        _show_warning(message, category, *args, **kwargs)


def quiet_third_party(load_models: bool = True) -> None:
    """Once per process, at the CLI entry: hide the deprecation notices that transformers (and torch,
    peft) print on every run, as warnings (FutureWarning / DeprecationWarning whose text says
    "deprecated" or "will be removed") and as transformers log records, and print unipo's own
    warnings (``UnipoWarning``) as one line. Other warnings are left alone. ``load_models``: also
    filter transformers' logger (importing it takes a second, so only commands that load models do).
    """
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=category)
    warnings.showwarning = _show_unipo_warning
    if load_models:
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger("transformers")  # creates transformers' own handler
        for handler in logging.getLogger("transformers").handlers:
            if not any(isinstance(f, _DropDeprecations) for f in handler.filters):
                handler.addFilter(_DropDeprecations())


@app.callback()
def _entry(ctx: typer.Context) -> None:
    quiet_third_party(load_models=ctx.invoked_subcommand in MODEL_COMMANDS)


def _run_args(
    config: str | None, overrides: list[str] | None, *, overwrite: bool, resume: bool
) -> tuple[str | None, list[str]]:
    """(config file or None, dotted overrides): a first argument with '=' is an override, not a file."""
    args = list(overrides or [])
    if config is not None and "=" in config:
        args.insert(0, config)
        config = None
    if overwrite:
        args.append("train.overwrite=true")
    if resume:
        args.append("train.resume=true")
    return config, args


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(code=2)


def _first_disk_full(err: BaseException) -> BaseException:
    """The earliest ``DiskFullError`` in ``err``'s context chain (a failed write of the error record
    after the first failure adds a second one)."""
    from unipo.train.run_dir import DiskFullError

    found, cur, seen = err, err, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DiskFullError):
            found = cur
        cur = cur.__context__
    return found


@contextmanager
def _user_errors(run_dir: Any = None) -> Iterator[None]:
    """Turn the errors a user can fix into ``error: ...`` and exit code 2: config and run-directory
    problems, a missing device, logger package or file, no space left on the device (naming the
    path and the checkpoint kept), an unwritable place. ``run_dir``: a callable giving the run
    directory (for the disk-full message), or None."""
    from unipo.diagnostics.compare import CompareError
    from unipo.train.checkpoint import disk_full_message
    from unipo.train.run_dir import DiskFullError, RunDirError, is_disk_full

    def where() -> Any:
        try:
            return run_dir() if callable(run_dir) else run_dir
        except Exception:
            return None

    try:
        yield
    except DiskFullError as e:
        _fail(disk_full_message(_first_disk_full(e), where()))
    except (RunDirError, CompareError, ValueError, FileNotFoundError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _is_user_runtime_error(e):
            raise
        _fail(str(e))
    except OSError as e:
        if is_disk_full(e):
            _fail(disk_full_message(DiskFullError(e.filename or "?"), where()))
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))


def _is_user_runtime_error(e: RuntimeError) -> bool:
    """TrainingError / PreferenceTrainingError / RunDirError: a run that cannot go on, said plainly."""
    from unipo.preference.trainer import PreferenceTrainingError
    from unipo.train.run_dir import RunDirError
    from unipo.train.trainer import TrainingError

    return isinstance(e, (TrainingError, PreferenceTrainingError, RunDirError))


LAST_KEYS = ("reward/mean", "policy/entropy", "response/length_mean", "loss/total", "pref/reward_accuracy",
             "pref/margin", "time/step")  # fmt: skip


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "—" if v is None else str(v)
    return str(v) if isinstance(v, int) else f"{v:.4f}"


def print_summary(summary: dict[str, Any], run_dir: Any) -> None:
    """The end of a run as tables: evaluation before → after, and the last training step."""
    from unipo.diagnostics.evalset import eval_set_label, overlap_of

    label = eval_set_label([overlap_of(summary, None)])
    what = summary.get("algorithm") or summary.get("preset") or "run"
    rounds = f", {summary['rounds']} rounds" if "rounds" in summary else ""
    wall = summary.get("wall_seconds")
    head = f"{what}: {summary.get('steps')} steps{rounds}"
    head += f" in {wall:.0f} s" if isinstance(wall, float) else ""
    skip = {"train_prompt_overlap"}
    keys = list(dict.fromkeys(k.split("/", 1)[1] for k in summary if k.startswith(("before/", "after/"))))
    keys = [k for k in keys if k not in skip]
    console.print(f"[bold]{escape(head)}[/]")
    if keys:
        table = Table(title=f"evaluation on the {label}")
        for col in ("metric", "before", "after", "change"):
            table.add_column(col, justify="right")
        for k in keys:
            b, a = summary.get(f"before/{k}"), summary.get(f"after/{k}")
            change = f"{a - b:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "—"
            table.add_row(k, _fmt(b), _fmt(a), change)
        console.print(table)
    last = summary.get("last") or {}
    rows = [(k, last[k]) for k in LAST_KEYS if isinstance(last.get(k), (int, float))]
    if rows:
        table = Table(title="last training step")
        table.add_column("metric", justify="right")
        table.add_column("value", justify="right")
        for k, v in rows:
            table.add_row(k, _fmt(v))
        console.print(table)
    if run_dir is not None:
        console.print(
            f"run directory: [bold]{escape(str(run_dir))}[/] (summary.json, metrics.jsonl, report.html)"
        )


PREFERENCE_SECTIONS = {"data", "loss", "pairs"}  # top-level sections only a preference config has
RL_SECTIONS = {"rollout", "rewards"}  # ... only an RL config has (and a file's algorithm section)


def route_train(config: str | None, args: list[str]) -> tuple[str, list[str]]:
    """Which trainer ``unipo train`` runs: ("rl" | "preference", the overrides to give it).

    Preference when ``algorithm.name`` (the last override, else the file's) names a preference
    preset (it becomes ``loss.preset``), or when no name is given and the file or the overrides
    have a preference section (data, loss, pairs). A name that is neither an RL algorithm nor a
    preference preset, or one that does not fit the config's sections, is a ``ConfigError``.
    """
    import yaml

    from unipo.algorithms import list_algorithms
    from unipo.config import ConfigError
    from unipo.preference import list_presets

    top: dict = {}
    if config is not None and Path(config).is_file():
        try:
            loaded = yaml.safe_load(Path(config).read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {config} is not valid YAML: {e}") from None
        top = loaded if isinstance(loaded, dict) else {}
    algo = top.get("algorithm")
    name = algo.get("name") if isinstance(algo, dict) else None
    for a in args:
        key, _, raw = a.partition("=")
        if key.strip() == "algorithm.name":
            name = yaml.safe_load(raw) if raw else ""
    sections = set(top) | {a.partition("=")[0].strip().split(".")[0] for a in args}
    rl_names = sorted(a.name for a in list_algorithms())
    pref_names = sorted(p.name for p in list_presets())
    pref = sorted(sections & PREFERENCE_SECTIONS)
    # an algorithm.name override alone does not make an RL config; an algorithm section in the file does
    rl = sorted((sections & RL_SECTIONS) | (set(top) & {"algorithm"}))
    if name is None:
        return ("preference" if pref else "rl"), args
    name = str(name)
    if name in pref_names:
        if rl:
            raise ConfigError(
                f"{name!r} is a preference preset, but the config has RL sections {rl}; give a "
                "preference config (sections model, task, data, loss, pairs, optim, eval, train), "
                "e.g. examples/preference/dpo_demo.yaml"
            )
        return "preference", [a for a in args if a.partition("=")[0].strip() != "algorithm.name"] + [
            f"loss.preset={name}"
        ]
    if name in rl_names:
        if pref:
            raise ConfigError(
                f"{name!r} is an RL algorithm, but the config has preference sections {pref}; for a "
                f"preference run name a preference preset: {', '.join(pref_names)}"
            )
        return "rl", args
    raise ConfigError(
        f"unknown algorithm {name!r}: neither an RL algorithm ({', '.join(rl_names)}) "
        f"nor a preference preset ({', '.join(pref_names)})"
    )


def _run_preference(config: str | None, args: list[str]) -> None:
    from unipo.preference import load_preference_config
    from unipo.preference.trainer import PreferenceTrainer
    from unipo.train.loggers import check_loggers

    cfg = None
    with _user_errors(lambda: cfg.train.output_dir):
        cfg = load_preference_config(config, args)
        check_loggers(cfg.train.loggers)
        summary = PreferenceTrainer(cfg, console=console).train()
    print_summary(summary, cfg.train.output_dir)


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
    """
    from unipo.config import load_config
    from unipo.train.loggers import check_loggers
    from unipo.train.signals import Interrupted
    from unipo.train.trainer import Trainer

    config, args = _run_args(config, overrides, overwrite=overwrite, resume=resume)
    with _user_errors():
        kind, args = route_train(config, args)
    if kind == "preference":
        _run_preference(config, args)
        return
    cfg = None
    try:
        with _user_errors(lambda: cfg.train.output_dir):
            cfg = load_config(config, args)
            check_loggers(cfg.train.loggers)  # before the run directory is made
            summary = Trainer(cfg, console=console).train()
    except Interrupted as e:
        console.print(f"[yellow]{escape(str(e))}[/]")
        raise typer.Exit(code=130) from None
    print_summary(summary, cfg.train.output_dir)


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

    with _user_errors():
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

    with _user_errors():
        path = report_main(run_dirs, out, overwrite)
    console.print(f"report: {escape(str(path))}")


@app.command()
def compare(
    spec: Annotated[str, typer.Argument(help="Spec YAML: base, variants, seeds, output_dir.")],
) -> None:
    """Run each (variant, seed) as a run directory; write compare.html/.json with 95% intervals."""
    from unipo.diagnostics.compare import compare_main

    with _user_errors():
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
        table = Table(show_lines=True, title="unipo preference presets")
        for col in ("name", "loss (defaults)", "paper / notes"):
            table.add_column(col, overflow="fold")
        for p in list_presets():
            d = p.describe()
            loss = d["loss"] + (f"\nordering: {d['ordering']}" if "ordering" in d else "")
            table.add_row(d["name"], loss, d["paper"] + (f"\n{d['notes']}" if d["notes"] else ""))
        console.print(table)
        return
    config, args = _run_args(config, overrides, overwrite=overwrite, resume=resume)
    _run_preference(config, args)


@app.command()
def algorithms(
    name: Annotated[str | None, typer.Argument(help="Show one preset in full.")] = None,
) -> None:
    """List every preset: its parts, their defaults and its paper."""
    from unipo.algorithms import get_algorithm, list_algorithms

    algos = [get_algorithm(name)] if name else list_algorithms()
    table = Table(show_lines=True, title="unipo algorithms")
    for col in ("name", "parts (defaults)", "paper / notes"):
        table.add_column(col, overflow="fold")
    for a in algos:
        d = a.describe()
        parts = [f"advantage: {d['advantage']}"]
        parts += [f"selection: {s}" for s in d["selections"]]
        parts += [f"token weight: {s}" for s in d["token_weights"]]
        parts += [f"surrogate: {d['surrogate']}"]
        parts += [f"regularizer: {s}" for s in d["regularizers"]]
        parts += [f"aggregate: {d['aggregate']}"]
        parts += [f"reward: {s}" for s in d["rewards"]]
        table.add_row(a.name, "\n".join(parts), d["paper"] + (f"\n{d['notes']}" if d["notes"] else ""))
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
) -> None:
    """Build the tiny model, warm-start it, train it with GRPO and show before/after.

    A non-empty demo directory is refused unless `--overwrite` is given (then the previous demo
    run is replaced, and the output says so).
    """
    from unipo.demo import run_demo

    with _user_errors(lambda: output_dir):
        run_demo(output_dir=output_dir, overwrite=overwrite, quick=quick, console=console)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
