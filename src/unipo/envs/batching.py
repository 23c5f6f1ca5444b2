"""From trajectories to the rows every preset trains on, and the rollout function ``collect`` calls.

A multi-turn rollout becomes an ordinary ``Generation`` (hence an ordinary ``RolloutBatch``): the
completion is the whole trajectory after the prompt, and

    completion_mask  [B, T] float   the loss mask: 1 on the model's tokens, 0 on environment tokens
    context_mask     [B, T] float   1 on every trajectory token (what the model reads; the attention mask)
    turn_index       [B, T] long    model turn k of each token, −1 on environment tokens and padding
    logprobs         [B, T] float   the sampler's log-probs (0 on environment tokens), when the engine
                                    gave them; None otherwise
    weight_version   [B] long       the oldest weight version that sampled one of the row's turns (None
                                    when the engine reports none)

so selections, advantages, surrogates, aggregates and their denominators see model tokens only. Per
row, ``columns`` reach the reward functions (``env_reward``: the episode's score; ``turns``,
``tool_calls``, ``tool_errors``, ``final_answer``, ``env_end``) and ``row_metadata`` lands in
``RolloutBatch.metadata``: ``turn_rewards`` (list, one per model turn: the environment's step reward;
0 for tool environments), ``turn_terms`` ({name: list per turn}: intrinsic turn rewards computed at
rollout time, IGPO's information gain under "igpo"), ``turn_ok`` (list of bool: the turn's action was
valid / its tool calls succeeded), ``tool_calls``, ``turns``, ``env_end``. Group advantages are per
prompt across whole trajectories: the rows of one prompt share its group id as always.

Parts that credit turns (``unipo.parts.agent_turns.turn_returns``) split the row's reward r (the reward
set's total, ``batch.rewards``) over its K turns: turn k < K−1 gets its step reward, the last turn the
rest, so the turn rewards sum to r (a Gym environment's default score is the sum of its step rewards;
a tool environment's reward lands on its final turn); intrinsic terms come on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unipo.envs.base import Episode
from unipo.envs.rollout import EpisodeLimits, Trajectory, run_episodes
from unipo.rollout.base import Generation, RolloutEngine, SamplingParams


@dataclass
class EpisodeGeneration(Generation):
    """A ``Generation`` of whole trajectories (see the module docstring for the extra fields)."""

    context_mask: Tensor | None = None  # [B, T] float
    turn_index: Tensor | None = None  # [B, T] long
    logprobs: Tensor | None = None  # [B, T] float or None
    columns: dict[str, list[Any]] = field(default_factory=dict)  # per-row reward columns
    row_metadata: list[dict[str, Any]] = field(default_factory=list)  # per-row metadata
    metrics: dict[str, float] = field(default_factory=dict)  # env/* (means and counts)
    trajectories: list[Trajectory] = field(default_factory=list)
    # the prompt each row belongs to, when a rollout returns more rows than prompts × n (SUPO's
    # segments); None: row = prompt·n + j
    row_prompt: list[int] | None = None

    def episodes_only(self) -> EpisodeGeneration:
        """One row per episode (its last segment): what evaluation reads, prompt-major as ``generate``'s."""
        if self.row_prompt is None:
            return self
        last = [i for i, t in enumerate(self.trajectories)
                if i + 1 == len(self.trajectories)
                or self.trajectories[i + 1].episode != t.episode]  # fmt: skip
        return trajectories_to_generation([self.trajectories[i] for i in last], self._tokenizer)

    _tokenizer: Any = field(default=None, repr=False)


def _right(rows: Sequence[Sequence[Any]], width: int, fill: Any, dtype: torch.dtype) -> Tensor:
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(list(r), dtype=dtype)
    return out


def trajectories_to_generation(trajs: list[Trajectory], tokenizer: Any, n_per: int = 0) -> EpisodeGeneration:
    """Pad the trajectories into one ``EpisodeGeneration`` (prompts left-padded, completions right-padded);
    ``n_per`` (episodes per prompt) maps segmented episodes' rows to their prompts (``row_prompt``)."""
    from unipo.rollout.hf import left_pad

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max([len(t.ids) for t in trajs] + [1])
    p_ids, p_mask = left_pad([t.prompt_ids for t in trajs], pad, "cpu")
    ids = _right([t.ids for t in trajs], width, pad, torch.long)  # [B, T]
    loss = _right([t.loss_mask for t in trajs], width, 0, torch.float32)  # [B, T]
    seen = _right([[1] * len(t.ids) for t in trajs], width, 0, torch.float32)  # [B, T]
    turns = _right([t.turn_index for t in trajs], width, -1, torch.long)  # [B, T]
    have_lp = all(t.logprobs is not None for t in trajs)
    logps = _right([t.logprobs or [] for t in trajs], width, 0.0, torch.float32) if have_lp else None
    truncated = torch.tensor([t.truncated for t in trajs], dtype=torch.bool)
    known = bool(trajs) and all(t.weight_version is not None for t in trajs)
    versions = torch.tensor([t.weight_version for t in trajs], dtype=torch.long) if known else None  # [B]
    texts = [tokenizer.decode(t.ids, skip_special_tokens=True) for t in trajs]
    finals = [t.turn_texts[-1] if t.turn_texts and t.end == "answer" else "" for t in trajs]
    segmented = any(t.segment for t in trajs)
    columns: dict[str, list[Any]] = {
        "env_reward": [t.reward for t in trajs],
        "turns": [t.num_turns for t in trajs],
        "tool_calls": [t.tool_calls for t in trajs],
        "tool_errors": [t.tool_errors for t in trajs],
        "final_answer": finals,
        "env_end": [t.episode_end or t.end for t in trajs],
    }
    meta = [{"turn_rewards": list(t.turn_rewards),
             "turn_terms": {k: list(v) for k, v in t.turn_terms.items()},
             "turn_ok": list(t.turn_ok), "tool_calls": t.tool_calls, "turns": t.num_turns,
             "env_end": t.episode_end or t.end, "episode": t.episode, "segment": t.segment}
            | ({"env_error": t.error} if t.error else {})
            for t in trajs]  # fmt: skip
    n = max(len(trajs), 1)
    metrics = {
        "env/turns_mean": sum(t.num_turns for t in trajs) / n,
        "env/tool_calls_mean": sum(t.tool_calls for t in trajs) / n,
        "env/env_tokens_mean": float((seen - loss).sum()) / n,
        "env/tool_errors": float(sum(t.tool_errors for t in trajs)),
        "env/truncated": float(sum(t.truncated for t in trajs)),
        "env/errors": float(sum(bool(t.error) for t in trajs)),
    }
    return EpisodeGeneration(
        prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=ids, completion_mask=loss, truncated=truncated,
        completions=texts, context_mask=seen, turn_index=turns, logprobs=logps, weight_version=versions,
        columns=columns,
        row_metadata=meta, metrics=metrics, trajectories=trajs, _tokenizer=tokenizer,
        row_prompt=[t.episode // n_per for t in trajs] if segmented and n_per else None,
    )  # fmt: skip


TurnReward = Callable[[list[Trajectory], list[dict[str, Any]]], list[list[float]]]
"""A per-turn reward term: (trajectories, their examples) → one value per model turn of each, kept in
``turn_terms[term.name]`` (IGPO's information gain: ``unipo.envs.turn_rewards``)."""


class EnvRollout:
    """The rollout function ``collect`` and ``evaluate`` call instead of ``engine.generate`` when an
    environment is configured: ``rollout(engine, examples, prompt_ids, n, sampling) -> EpisodeGeneration``.

    ``make_episode()`` builds one fresh episode (``ToolEpisode`` / ``GymEpisode``) per row; every row's
    example is passed to its ``start``. ``turn_rewards`` terms fill ``turn_terms`` under their ``name``.
    """

    def __init__(
        self,
        make_episode: Callable[[], Episode],
        tokenizer: Any,
        limits: EpisodeLimits,
        turn_rewards: Sequence[TurnReward] = (),
    ) -> None:
        self.make_episode = make_episode
        self.tokenizer = tokenizer
        self.limits = limits
        self.turn_rewards = tuple(turn_rewards)

    def __call__(
        self, engine: RolloutEngine, examples: list[dict[str, Any]], prompt_ids: list[list[int]], n: int,
        sampling: SamplingParams,
    ) -> EpisodeGeneration:  # fmt: skip
        episodes = [self.make_episode() for _ in range(len(examples) * n)]
        trajs = run_episodes(engine, episodes, examples, prompt_ids, n, sampling, self.tokenizer, self.limits)
        rows = [examples[t.episode // n] for t in trajs]  # each trajectory's (or segment's) example
        for term in self.turn_rewards:
            name = getattr(term, "name", type(term).__name__)
            for traj, extra in zip(trajs, term(trajs, rows), strict=True):
                if len(extra) != traj.num_turns:
                    raise ValueError(
                        f"turn reward {name!r} gave {len(extra)} values for {traj.num_turns} turns"
                    )
                traj.turn_terms[name] = [float(v) for v in extra]
        return trajectories_to_generation(trajs, self.tokenizer, n)
