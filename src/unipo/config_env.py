"""The ``env:`` section of the run config: a multi-turn environment (README: Agents and tools)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TurnRewardTerm(_Strict):
    name: str = Field(description="A per-turn reward computed at rollout time: igpo (information gain).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Its options, e.g. {answer_column: answer}."
    )


class EnvConfig(_Strict):
    """A multi-turn environment (README: Agents and tools); absent: single-turn completions."""

    name: str = Field(
        description="A built-in environment (calculator, guess) or your own class as 'module:Class' or "
        "'path/to/file.py:Class': an unipo.envs.Environment subclass (tools = its public methods) or a "
        "Gym-style class with reset(**example) and step(action)."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the class.")
    format: Literal["compact", "chat"] = Field(
        "compact",
        description="How tool calls and observations are written: compact ([name args] → =result, for "
        "character-level models) or chat (OpenAI-compatible <tool_call> JSON and role=tool messages rendered "
        "by the tokenizer's chat template).",
    )
    max_turns: int | None = Field(
        None, ge=1, description="Model turns per episode (None: the class's, else 4)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Trajectory tokens after the prompt, model and environment (None: the class's, else "
        "256); each turn also stops at rollout.sampling.max_new_tokens.",
    )
    tool_timeout_s: float = Field(
        5.0, gt=0, description="Seconds one tool call may run; past it the call is an error observation."
    )
    stop: list[str] = Field(
        default_factory=list, description="Gym-style environments: strings that end a model turn (an action) "
        "besides EOS (empty: the class's turn_stop).",
    )
    summary_tokens: int | None = Field(
        None,
        ge=1,
        description="SUPO's summarization: when a segment's tokens after the prompt reach this, the model "
        "writes a summary (after summary_prompt) and the episode goes on from the prompt and the summary as "
        "a new row (None: never).",
    )
    summary_prompt: str = Field("\nsummary:", description="Text asking for the summary (environment tokens).")
    max_summaries: int = Field(1, ge=0, description="Summaries per episode at most.")
    turn_rewards: list[TurnRewardTerm] = Field(
        default_factory=list, description="Per-turn reward terms added to the environment's step rewards "
        "(metadata turn_rewards), e.g. [{name: igpo}].",
    )
