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

from unipo.cli_output import console, err_console, print_summary, quiet_third_party, user_errors

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


PREFERENCE_SECTIONS = {"data", "loss", "pairs"}  # top-level sections only a preference config has
# ... only an RL config has (and a file's algorithm section)
RL_SECTIONS = {"rollout", "rewards", "reward_combiner"}


def route_train(config: str | None, args: list[str]) -> tuple[str, list[str]]:
    """Which trainer ``unipo train`` runs: ("rl" | "preference", the overrides to give it).

    Preference when ``algorithm.name`` (the last override, else the file's) names a preference
    preset (it becomes ``loss.preset``), or when no name is given and the file or the overrides
    have a preference section (data, loss, pairs). A name that is neither an RL algorithm nor a
    preference preset, or one that does not fit the config's sections, is a ``ConfigError``.
    """
    import yaml

    from unipo.algorithms import list_algorithms
    from unipo.config import ConfigError, read_config_file
    from unipo.preference import list_presets

    top: dict = read_config_file(config) if config is not None and Path(config).is_file() else {}
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


def run_objective(kind: str, config: str | None, args: list[str]) -> dict:
    """Build the RL (``kind="rl"``) or preference objective from the config and run it in the one
    loop: what every process of a run does (alone, under torchrun, or as a Ray Train worker)."""
    from unipo.config import load_config
    from unipo.preference import load_preference_config
    from unipo.preference.trainer import PreferenceTrainer
    from unipo.train.trainer import Trainer

    if kind == "preference":
        return PreferenceTrainer(load_preference_config(config, args), console=console).train()
    return Trainer(load_config(config, args), console=console).train()


def _train_or_launch(kind: str, config: str | None, args: list[str]) -> None:
    """Run here, or start ``train.nproc`` processes (torchrun or Ray) that each run here."""
    from unipo.config import load_config
    from unipo.launch import in_launched_process, launch_ray, launch_torchrun, starts_servers
    from unipo.preference import load_preference_config
    from unipo.train.loggers import check_loggers
    from unipo.train.signals import Interrupted

    cfg: Any = None
    try:
        with user_errors(lambda: cfg.train.output_dir):
            cfg = load_preference_config(config, args) if kind == "preference" else load_config(config, args)
            t = cfg.train
            check_loggers(t.loggers)  # before the run directory is made
            split = kind == "rl" and starts_servers(cfg) and cfg.rollout.vllm.placement == "split"
            if (t.nproc > 1 or split) and not in_launched_process():
                if t.launcher == "ray":  # split vLLM servers need Ray to place them, even for one trainer
                    rl_cfg = cfg if kind == "rl" else None
                    launch_ray(kind, config, args, t.nproc, t.ray_address, t.ray_use_gpu, cfg=rl_cfg)
                    return
                code = launch_torchrun(t.nproc, ["train", *([config] if config else []), *args])
                if code:
                    raise typer.Exit(code=code)
                return
            summary = run_objective(kind, config, args)
    except Interrupted as e:
        console.print(f"[yellow]{escape(str(e))}[/]")
        raise typer.Exit(code=130) from None
    print_summary(summary, cfg.train.output_dir)


def _run_preference(config: str | None, args: list[str]) -> None:
    _train_or_launch("preference", config, args)


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
