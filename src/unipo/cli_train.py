"""What ``unipo train`` and ``unipo preference`` do after parsing: split the arguments, route a
config to the RL or the preference trainer, and run it here or start ``train.nproc`` processes
(torchrun or Ray Train) that each run it (``run_objective``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from unipo.cli_output import console, print_summary, user_errors


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
