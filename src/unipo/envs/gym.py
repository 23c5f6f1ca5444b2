"""Gym-style environments as episodes: ``reset() -> observation`` and ``step(action) -> observation,
reward, terminated, truncated, info`` (Gymnasium, TextArena), or OpenEnv's ``StepResult`` objects.

Each model turn is one action: the turn's text (EOS and a trailing stop string removed, whitespace
stripped) goes to ``step``; the observation it returns is rendered by the format (``observe``) and
appended as environment tokens; the step reward is the turn's reward. The episode's reward is
``env.reward()`` when the environment has one, else the sum of its step rewards. ``info["valid"]``
(default True) is the turn's validity flag (SPA-RL's grounding signal).

``reset`` receives the task example's columns as keyword arguments when it accepts them (a
``seed=``/``options=`` Gymnasium signature gets ``seed=example["seed"]`` if the example has one).
"""

from __future__ import annotations

import inspect
from typing import Any

from unipo.envs.base import Step
from unipo.envs.formats import CompactFormat, ToolFormat


def _unpack_step(out: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
    """(observation, reward, terminated, truncated, info) from a Gymnasium 5-tuple, an old Gym
    4-tuple or an OpenEnv ``StepResult`` (observation / reward / done attributes)."""
    if isinstance(out, tuple):
        if len(out) == 5:
            obs, reward, term, trunc, info = out
        elif len(out) == 4:
            obs, reward, term, info = out
            trunc = False
        else:
            raise ValueError(
                f"step() returned a {len(out)}-tuple; expected (obs, reward, terminated, truncated, info)"
            )
        return _text(obs), float(reward or 0.0), bool(term), bool(trunc), dict(info or {})
    obs = getattr(out, "observation", None)
    term = bool(getattr(out, "terminated", getattr(out, "done", False)))
    info = dict(getattr(out, "info", None) or getattr(out, "metadata", None) or {})
    return (
        _text(obs),
        float(getattr(out, "reward", 0.0) or 0.0),
        term,
        bool(getattr(out, "truncated", False)),
        info,
    )


def _text(obs: Any) -> str:
    if obs is None:
        return ""
    if isinstance(obs, str):
        return obs
    for attr in ("text", "content", "message", "prompt"):  # OpenEnv observations are dataclasses
        value = getattr(obs, attr, None)
        if isinstance(value, str):
            return value
    return str(obs)


class GymEpisode:
    """Adapts a Gym-style environment instance to the rollout's ``Episode`` protocol."""

    def __init__(self, env: Any, fmt: ToolFormat | None = None) -> None:
        for name in ("reset", "step"):
            if not callable(getattr(env, name, None)):
                raise ValueError(
                    f"{type(env).__name__} has no {name}(); a Gym-style environment needs reset and step"
                )
        self.env = env
        self.fmt = fmt or CompactFormat()
        self.stop: tuple[str, ...] = ()
        self.rewards: list[float] = []

    def start(self, example: dict[str, Any]) -> str | None:
        params = inspect.signature(self.env.reset).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            out = self.env.reset(**example)
        elif "seed" in params:
            out = self.env.reset(seed=example.get("seed"))
        else:
            out = self.env.reset()
        if isinstance(out, tuple) and len(out) == 2:  # Gymnasium: (observation, info)
            out = out[0]
        text = _text(getattr(out, "observation", out))
        return self.fmt.observe(text) if text else None

    def act(self, text: str) -> Step:
        obs, reward, term, trunc, info = _unpack_step(self.env.step(text.strip()))
        self.rewards.append(reward)
        done = term or trunc
        return Step(observation="" if done else self.fmt.observe(obs), reward=reward, done=done,
                    truncated=trunc, ok=bool(info.get("valid", True)), info=info)  # fmt: skip

    def score(self) -> float:
        reward = getattr(self.env, "reward", None)
        return float(reward()) if callable(reward) else float(sum(self.rewards))
