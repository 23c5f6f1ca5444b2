"""Typed, validated run configuration: YAML file + dotted ``key=value`` overrides (the schema:
``unipo.config_schema``; loading, checks and building the algorithm: here).

Every field has help text (``unipo config-help`` prints it). Unknown keys and bad values
are rejected before anything runs, with the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from unipo.config_env import EnvConfig, TurnRewardTerm
from unipo.config_io import ConfigError, apply_override, parse_yaml, read_config_file
from unipo.config_schema import (  # noqa: F401  (re-exported: the sections' models)
    AlgorithmConfig,
    Config,
    EvalConfig,
    LoraOptions,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RewardCombinerConfig,
    RewardTerm,
    RolloutConfig,
    TaskConfig,
    TrainConfig,
    VLLMOptions,
    _Strict,
)

__all__ = [  # the loading helpers live in unipo.config_io and are re-exported here
    "Config",
    "ConfigError",
    "EnvConfig",
    "TurnRewardTerm",
    "apply_override",
    "build_algorithm",
    "describe_fields",
    "format_validation_error",
    "load_config",
    "parse_yaml",
    "read_config_file",
    "validate_yaml",
]

M = TypeVar("M", bound=BaseModel)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cur: Any = model
    for part in loc[:-1]:
        field = (
            cur.model_fields.get(str(part)) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        )
        if field is None:
            return []
        ann = field.annotation
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return sorted(cur.model_fields) if cur is not None else []


def format_validation_error(err: ValidationError, root: type[BaseModel] = Config) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, e["loc"])
            lines.append(f"unknown key '{key}'; allowed here: {', '.join(allowed)}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def validate_yaml(model: type[M], path: str | Path | None, overrides: list[str] | None) -> M:
    """YAML file (optional) + dotted ``key=value`` overrides → a validated ``model`` instance."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    for o in overrides or []:
        apply_override(data, o, model)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model)) from None


def check_run_dir_flags(train: Any) -> None:
    """``train.resume`` and ``train.overwrite`` together are a ``ConfigError``: one keeps the run
    directory, the other writes over it, and resuming silently would surprise whoever asked for both."""
    if train.resume and train.overwrite:
        raise ConfigError(
            "train.resume=true and train.overwrite=true (--resume and --overwrite) contradict each other: "
            "resume continues the run in train.output_dir, overwrite starts it afresh; give only one"
        )


def check_servers(cfg: Any) -> None:
    """Server settings that only mean something together: several servers or a split placement need
    servers unipo starts (engine=vllm, no rollout.url), and a split placement needs Ray to place them."""
    r = cfg.rollout
    starts = r.engine == "vllm" and not r.url
    if r.num_servers > 1 and not starts:
        raise ConfigError(
            f"rollout.num_servers={r.num_servers} counts the vLLM servers unipo starts, but "
            + ("rollout.engine=hf starts none" if r.engine != "vllm" else "rollout.url gives yours")
        )
    if r.vllm.placement == "split" and starts and cfg.train.launcher != "ray":
        raise ConfigError(
            "rollout.vllm.placement=split puts the servers on resources of their own, which the Ray launcher "
            "places (train.launcher=ray); under torchrun start servers yourself and give rollout.url, or "
            "use placement=colocate"
        )


def check_reward_terms(terms: list[RewardTerm], key: str) -> None:
    """Resolve every reward term now, so that a bad name is a one-line ``ConfigError`` before any model
    loads: an unknown built-in, a ``module:function`` / ``file.py:function`` that cannot be imported,
    lacks the function or names a non-callable, a ``params`` key that is not a named argument of the
    function (it would silently vanish into ``**columns``), or two terms logged under one name."""
    from unipo.rewards import get_reward_fn, reward_label

    labels: dict[str, int] = {}
    for i, term in enumerate(terms):
        where = f"{key}[{i}].name={term.name!r}"
        if term.name != "task":
            try:
                fn = get_reward_fn(term.name)
            except ValueError as e:
                raise ConfigError(f"{where}: {str(e).removeprefix(f'reward {term.name!r}: ')}") from None
            try:
                args = inspect.signature(fn).parameters.values()
                named = {p.name for p in args if p.kind is not p.VAR_KEYWORD}
            except (TypeError, ValueError):  # some builtins have no signature: nothing to check
                named = set(term.params)
            if bad := sorted(set(term.params) - named):  # a typo would vanish into **columns
                raise ConfigError(
                    f"{key}[{i}].params: {bad} are not named arguments of {term.name!r} "
                    f"(it takes {sorted(named - {'prompts', 'completions'})} besides the columns)"
                )
        label = reward_label(term.name)
        if label in labels or label == "total":
            raise ConfigError(
                f"{where} is logged as {label!r}, like {key}[{labels.get(label)}]; reward names must be "
                "unique (and not 'total'): rename one function"
            )
        labels[label] = i


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (optional) + dotted overrides → a validated ``Config``; also checks what one field
    cannot: distinct train/eval seeds, resume vs overwrite, and that every reward term resolves."""
    cfg = validate_yaml(Config, path, overrides)
    if cfg.task.eval_size and cfg.task.eval_seed == cfg.task.train_seed:
        raise ConfigError(
            "task.eval_seed must differ from task.train_seed (held-out prompts need another seed)"
        )
    check_run_dir_flags(cfg.train)
    if cfg.task.source == "env" and cfg.env is None:
        raise ConfigError("task.source=env takes its examples from the environment: set env.name too")
    if cfg.env is not None:
        from unipo.envs import env_class

        try:
            env_class(cfg.env.name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    check_servers(cfg)
    check_reward_terms(cfg.rewards, "rewards")
    if cfg.reward_combiner is not None:
        from unipo.rewards.combiners import make_combiner

        try:
            make_combiner(cfg.reward_combiner.name, **cfg.reward_combiner.params)
        except ValueError as e:
            raise ConfigError(f"reward_combiner: {e}") from None
    return cfg


def build_algorithm(
    cfg: AlgorithmConfig, group_size: int | None = None, engine: str | None = None
):  # -> Algorithm
    """The preset named in the config with the requested parts swapped and parameters set.

    With ``group_size`` (``rollout.group_size``), a ``ConfigError`` when it is below the advantage
    part's ``min_group_size`` (group-relative estimators: 2, since a lone completion has no
    baseline and every advantage would be 0; parts that do not declare it: 2 if ``uses_groups``,
    which defaults to True, else 1). With ``group_size`` and ``engine`` (``rollout.engine``), a
    ``ConfigError`` when a part's ``check_rollout(group_size, engine)`` refuses them (ETMR's trees:
    only the hf engine, G a multiple of the tree's leaves).
    """
    from unipo.algorithms import get_algorithm
    from unipo.parts.registry import make_part, part_name

    algo = get_algorithm(cfg.name)
    changes: dict[str, Any] = {}
    singles = (("advantage", "advantage"), ("surrogate", "surrogate"), ("aggregate", "aggregate"),
               ("scheduler", "scheduler"))  # fmt: skip
    for kind, attr in singles:
        name = getattr(cfg, attr)
        if name is not None:
            changes[attr] = make_part(kind, name, **cfg.params.get(name, {}))
    for kind, attr in (
        ("selection", "selections"),
        ("token_weight", "token_weights"),
        ("regularizer", "regularizers"),
        ("correction", "corrections"),
        ("buffer", "buffers"),
    ):
        names = getattr(cfg, attr)
        if names is not None:
            changes[attr] = tuple(make_part(kind, n, **cfg.params.get(n, {})) for n in names)
    try:
        algo = algo.replace(**changes) if changes else algo
    except ValueError as e:
        raise ConfigError(str(e)) from None
    used = {part_name(p) for p in algo.parts()}
    unknown = set(cfg.params) - used
    if unknown:
        raise ConfigError(
            f"algorithm.params has {sorted(unknown)}, which are not parts of {algo.name!r}; "
            f"its parts are: {', '.join(sorted(used))}"
        )

    def with_params(p: Any) -> Any:
        params = cfg.params.get(part_name(p))
        if not params or not dataclasses.is_dataclass(p):
            return p
        allowed = {f.name for f in dataclasses.fields(p)}
        bad = set(params) - allowed
        if bad:
            raise ConfigError(
                f"algorithm.params.{part_name(p)}: unknown {sorted(bad)}; allowed: {sorted(allowed)}"
            )
        try:
            return dataclasses.replace(p, **params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"algorithm.params.{part_name(p)}: {e}") from None

    if group_size is not None:
        adv = algo.advantage
        need = int(getattr(adv, "min_group_size", 2 if getattr(adv, "uses_groups", True) else 1))
        if group_size < need:
            raise ConfigError(
                f"rollout.group_size={group_size}, but the advantage {part_name(adv)!r} of {algo.name!r} "
                f"compares the completions of one prompt and needs group_size >= {need} (with fewer, every "
                "advantage is 0 and nothing is learned); raise rollout.group_size or choose an advantage "
                "that does not use groups (algorithm.advantage=reinforce_pp)"
            )
    try:
        algo = algo.replace(
            advantage=with_params(algo.advantage),
            surrogate=with_params(algo.surrogate),
            aggregate=with_params(algo.aggregate),
            selections=tuple(with_params(p) for p in algo.selections),
            token_weights=tuple(with_params(p) for p in algo.token_weights),
            regularizers=tuple(with_params(p) for p in algo.regularizers),
            rewards=tuple(with_params(p) for p in algo.rewards),
            corrections=tuple(with_params(p) for p in algo.corrections),
            rollout=with_params(algo.rollout) if algo.rollout is not None else None,
            scheduler=with_params(algo.scheduler) if algo.scheduler is not None else None,
            buffers=tuple(with_params(p) for p in algo.buffers),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if group_size is not None and engine is not None:
        for p in algo.parts():
            check = getattr(p, "check_rollout", None)
            if check is not None and (why := check(group_size, engine)):
                raise ConfigError(f"algorithm {algo.name!r}: its {part_name(p)} part cannot run here: {why}")
    return algo


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field — the config reference."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{field.alias or name}"  # the name a user writes (rollout.async)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((key, repr(default), field.description or ""))
    return rows
