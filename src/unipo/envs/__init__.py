"""Multi-turn environments, tools and the rollouts that keep them as token ids (README: Agents and tools).

The config edge: ``env: {name: calculator}`` (a built-in) or ``{name: "my_pkg.envs:Shop"}`` /
``{name: "path/to/envs.py:Shop"}``. A class derived from ``Environment`` is driven as a tool-calling
environment (``ToolEpisode``); any other class with ``reset`` and ``step`` as a Gym-style one
(``GymEpisode``). ``build_env_rollout`` makes the rollout function the RL objective's collect stage and
evaluation call instead of ``engine.generate``; ``env_task`` the task whose reward is the episode's.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unipo.envs.base import Environment, Episode, Step, ToolEpisode
from unipo.envs.batching import EnvRollout, EpisodeGeneration, trajectories_to_generation
from unipo.envs.builtin import BUILTIN_ENVIRONMENTS, Calculator, GuessNumber
from unipo.envs.formats import ChatTemplateFormat, CompactFormat, make_format
from unipo.envs.gym import GymEpisode
from unipo.envs.rollout import EpisodeLimits, Trajectory, run_episodes
from unipo.envs.tools import PythonTool, ToolCall, ToolResult, calculate, call_tool, tool_schema

__all__ = [
    "BUILTIN_ENVIRONMENTS",
    "Calculator",
    "ChatTemplateFormat",
    "CompactFormat",
    "EnvRollout",
    "Environment",
    "Episode",
    "EpisodeGeneration",
    "EpisodeLimits",
    "GuessNumber",
    "GymEpisode",
    "PythonTool",
    "Step",
    "ToolCall",
    "ToolEpisode",
    "ToolResult",
    "Trajectory",
    "build_env_rollout",
    "calculate",
    "call_tool",
    "env_class",
    "env_reward",
    "env_rollout",
    "env_task",
    "episode_factory",
    "make_format",
    "run_episodes",
    "tool_schema",
    "trajectories_to_generation",
]  # fmt: skip


def env_class(name: str) -> type:
    """A built-in environment, or ``module:Class`` / ``path/to/file.py:Class``."""
    if name in BUILTIN_ENVIRONMENTS:
        return BUILTIN_ENVIRONMENTS[name]
    if ":" not in name:
        raise ValueError(f"env.name={name!r}: a built-in ({', '.join(sorted(BUILTIN_ENVIRONMENTS))}) or "
                         "module:Class / path/to/file.py:Class")  # fmt: skip
    where, _, attr = name.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where)
            spec = importlib.util.spec_from_file_location(f"unipo_env_{path.stem}", path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ImportError(f"no file {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"env.name={name!r} cannot be loaded: {e}") from None
    if not inspect.isclass(cls):
        raise ValueError(f"env.name={name!r} is not a class")
    return cls


def _setting(cfg: Any, cls: type, key: str, default: Any) -> Any:
    value = getattr(cfg, key, None)
    return value if value is not None else getattr(cls, key, default)


def episode_factory(cfg: Any, tokenizer: Any) -> Callable[[], Episode]:
    """One fresh episode per call, for ``cfg`` (``unipo.config.EnvConfig``)."""
    cls = env_class(cfg.name)
    fmt = make_format(cfg.format, tokenizer)
    params = dict(cfg.params)
    if issubclass(cls, Environment):
        timeout = cfg.tool_timeout_s
        return lambda: ToolEpisode(cls(**params), fmt, timeout)
    if not (callable(getattr(cls, "reset", None)) and callable(getattr(cls, "step", None))):
        raise ValueError(f"env.name={cfg.name!r}: {cls.__name__} is neither an Environment subclass nor "
                         "Gym-style (reset and step)")  # fmt: skip
    stop = tuple(cfg.stop) if cfg.stop else tuple(getattr(cls, "turn_stop", ()))

    def make() -> Episode:
        episode = GymEpisode(cls(**params), fmt)
        episode.stop = stop
        return episode

    return make


def build_env_rollout(cfg: Any, tokenizer: Any, scorer: Any = None) -> EnvRollout:
    """The rollout function for ``cfg``; ``scorer`` (``unipo.envs.turn_rewards.PolicyScorer``) is what
    turn-reward terms that score with the policy (IGPO) use."""
    from unipo.envs.turn_rewards import make_turn_reward

    cls = env_class(cfg.name)
    limits = EpisodeLimits(_setting(cfg, cls, "max_turns", 4), _setting(cfg, cls, "max_tokens", 256),
                           cfg.summary_tokens, cfg.summary_prompt, cfg.max_summaries)  # fmt: skip
    terms = [make_turn_reward(t.name, scorer, tokenizer, **t.params) for t in cfg.turn_rewards]
    return EnvRollout(episode_factory(cfg, tokenizer), tokenizer, limits, terms)


def env_rollout(cfg: Any, tokenizer: Any, model: Any, device: Any, dist: Any = None) -> EnvRollout | None:
    """The RL objective's switch: the rollout function of ``cfg.env`` (a ``unipo.config.Config``), or
    None without an environment. Turn-reward terms score with ``model`` (the trainer's policy)."""
    from unipo.envs.turn_rewards import PolicyScorer

    if cfg.env is None:
        return None
    if cfg.env.turn_rewards and dist is not None and getattr(dist, "sharded", False):
        raise ValueError("env.turn_rewards score with the policy on each rank's share of the episodes, which "
                         "a "
                         "sharded (fsdp2) policy cannot do rank by rank; use train.parallel=ddp")  # fmt: skip
    if cfg.env.turn_rewards and getattr(cfg.rollout, "async_", False) and cfg.rollout.max_staleness > 0:
        raise ValueError("env.turn_rewards score with the policy while the episodes are played, which "
                         "rollout.async does during the update (the weights change under it); use "
                         "rollout.async=false")  # fmt: skip
    scorer = PolicyScorer(model, device, cfg.optim.micro_batch_size, cfg.rollout.sampling.temperature)
    return build_env_rollout(cfg.env, tokenizer, scorer)


def env_reward(prompts: list[str], completions: list[str], env_reward: list[Any] | None = None,
               **columns: Any) -> list[float | None]:  # fmt: skip
    """The episode's own score (``Environment.reward()`` / the Gym rewards), from the ``env_reward``
    column the multi-turn rollout fills; None (excluded) where the episode's score failed."""
    if env_reward is None:
        raise ValueError("the env reward reads the 'env_reward' column, which only an env rollout fills "
                         "(configure env: {name: ...})")  # fmt: skip
    return [None if r is None else float(r) for r in env_reward]


class EnvTask:
    """The task of an env run: examples from the environment class (``task.source=env``) or from the
    configured task, scored by the episode's own reward (``env_reward``)."""

    def __init__(self, cls: type, base: Any = None) -> None:
        if base is None and not callable(getattr(cls, "examples", None)):
            raise ValueError(f"task.source=env needs {cls.__name__}.examples(n, seed, split); give a task "
                             "(task.source=jsonl/reasoning_gym) whose rows reset() reads "
                             "instead")  # fmt: skip
        self.cls, self.base = cls, base

    def examples(self, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
        return (
            self.base.examples(n, seed, split) if self.base is not None else self.cls.examples(n, seed, split)
        )

    def reward_fn(self) -> Callable[..., list[float | None]]:
        return env_reward


def env_task(env_cfg: Any, base: Any = None) -> EnvTask:
    return EnvTask(env_class(env_cfg.name), base)
