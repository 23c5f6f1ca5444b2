"""Environments in the shape TRL's ``environment_factory`` and OpenEnv use, and the one protocol the
rollout drives.

Write an environment as a class; one instance is made per episode::

    class Calculator(Environment):
        def reset(self, **example) -> str | None:   # the task example's columns
            self.target = example["answer"]
            return None                               # or text appended to the prompt
        def calc(self, expression: str) -> str:     # public methods are the tools (typed, docstring)
            '''Evaluate arithmetic.

            Args:
                expression: e.g. 12*7
            '''
            return calculate(expression)
        def reward(self) -> float:                   # after the episode: self.answer, self.turns
            return float(self.answer.strip() == self.target)

The episode ends on a final answer (a turn without a tool call), on ``env.max_turns`` model turns, or
on the token budget (``env.max_tokens``, model and environment tokens after the prompt); ``reward()``
then scores it. Gym-style environments (``step(action) -> observation, reward, terminated, truncated,
info``) run through ``unipo.envs.gym.GymEpisode``.

What the rollout calls (``Episode``)::

    start(example) -> str | None     text appended to the prompt (None: nothing)
    act(turn_text) -> Step           the model's turn (decoded) → observation, reward, done, ...
    score() -> float                 the episode's reward once it has ended
    stop                             strings that end a model turn besides EOS
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from unipo.envs.formats import CompactFormat, ToolFormat
from unipo.envs.tools import Tool, ToolResult, call_tool, tool_name


@dataclass
class Step:
    """What the environment returns for one model turn."""

    observation: str = ""  # text appended after the turn (tool results, the next observation); "" none
    reward: float = 0.0  # this turn's reward (a Gym step reward; tool environments: 0)
    done: bool = False  # the episode ended (final answer, goal reached, terminated)
    truncated: bool = False  # the environment cut the episode
    ok: bool = True  # the turn's action was valid and its tool calls succeeded (SPA-RL's grounding)
    tool_calls: int = 0
    tool_errors: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Episode(Protocol):
    stop: tuple[str, ...]

    def start(self, example: dict[str, Any]) -> str | None: ...

    def act(self, text: str) -> Step: ...

    def score(self) -> float: ...


_BASE_NAMES = frozenset({"reset", "reward", "tools", "max_turns", "answer", "turns", "replay"})


class Environment:
    """Base class of tool-calling environments (see the module docstring). Public methods other than
    ``reset``/``reward``/``tools`` are the tools; override ``tools()`` to list them yourself.

    Set by the episode driver before ``reward()`` runs: ``self.answer`` (the final turn's text, None
    when the episode ended without one) and ``self.turns`` (every model turn's text).
    """

    answer: str | None = None
    turns: list[str]

    def reset(self, **example: Any) -> str | None:
        return None

    def tools(self) -> list[Tool]:
        """The public instance methods a subclass defines (not class/static methods, not the base's)."""
        out = []
        for name in dir(type(self)):
            raw = inspect.getattr_static(self, name, None)
            if inspect.isfunction(raw) and not name.startswith("_") and name not in _BASE_NAMES:
                out.append(getattr(self, name))
        return out

    def reward(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define reward()")


class ToolEpisode:
    """Drives an ``Environment`` through a ``ToolFormat``: a turn with tool calls gets their results
    (each with ``timeout_s``; failures are observations), a turn without one is the final answer."""

    def __init__(self, env: Environment, fmt: ToolFormat | None = None, timeout_s: float = 5.0) -> None:
        self.env = env
        self.fmt = fmt or CompactFormat()
        self.timeout_s = timeout_s
        self.stop = tuple(self.fmt.stop)
        self.tools = {tool_name(t): t for t in env.tools()}
        self.results: list[list[ToolResult]] = []  # per turn
        env.answer, env.turns = None, []

    def start(self, example: dict[str, Any]) -> str | None:
        return self.env.reset(**example)

    def act(self, text: str) -> Step:
        self.env.turns.append(text)
        calls = self.fmt.parse(text, self.tools)
        if not calls:
            self.env.answer = text
            self.results.append([])
            return Step(done=True)
        results = [call_tool(self.tools, c, self.timeout_s) for c in calls]
        self.results.append(results)
        errors = sum(not r.ok for r in results)
        return Step(observation=self.fmt.render(results), ok=errors == 0, tool_calls=len(results),
                    tool_errors=errors)  # fmt: skip

    def score(self) -> float:
        return float(self.env.reward())


EpisodeFactory = Callable[[], Episode]
