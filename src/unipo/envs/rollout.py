"""Multi-turn rollouts kept as token ids end to end.

``run_episodes`` plays many episodes at once: at every turn all live episodes decode their next turn in
one ``engine.generate(prompts_token_ids, n, sampling)`` call (the first turn of a group shares its prompt
and goes out as one prompt with ``n`` samples, so an engine that prefills once per prompt still does),
each turn's text goes to its episode, and the observation the episode returns is tokenized once and
appended. The model's tokens are appended exactly as sampled and nothing is ever re-tokenized, so the
ids the trainer scores are the ids the sampler produced (no retokenization drift, TRL #5242).

The engine is used only through the ``RolloutEngine`` protocol (``generate`` and the ``Generation`` it
returns: ``completion_ids``, ``completion_mask``, ``truncated`` and, when the engine gives them, the
sampler's ``logprobs`` [B, T] and ``weight_version`` [B]), so the HF engine and the vLLM one
(``rollout.engine=vllm``: the turn's context goes to the server as token ids, the sampled ids come
back) drive it alike. A trajectory's weight version is the oldest of its turns'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unipo.envs.base import Episode
from unipo.rollout.base import RolloutEngine, SamplingParams


@dataclass
class Trajectory:
    """One episode: the prompt and everything after it, token by token.

    ``ids`` / ``loss_mask`` / ``turn_index`` / ``logprobs`` are aligned lists over the tokens after the
    prompt: the model's own tokens (loss mask 1, their turn k) and environment tokens (0, turn −1).
    The trajectory always ends on a model token (an observation after the last turn is dropped).
    """

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    turn_index: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)  # sampler log μ; 0 on env tokens
    turn_texts: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)  # per model turn: the environment's step reward
    turn_terms: dict[str, list[float]] = field(default_factory=dict)  # name -> per turn (IGPO's "igpo")
    turn_ok: list[bool] = field(default_factory=list)  # per model turn
    tool_calls: int = 0
    tool_errors: int = 0
    end: str = ""  # answer | env | turns | tokens | length (see run_episodes)
    reward: float | None = None  # the episode's score; None when score() failed
    error: str = ""
    episode: int = 0  # the row (prompt·n + j) this trajectory, or segment of one, belongs to
    segment: int = 0  # SUPO: the segment's place in its episode (0 without summarization)
    episode_end: str = ""  # the episode's ``end`` (a summarized segment's own end is "summary")
    # the oldest weight version that sampled one of its turns (None: the engine reports none)
    weight_version: int | None = None

    @property
    def truncated(self) -> bool:
        """Ended by a limit (turns, tokens, a turn cut at max_new_tokens) rather than by the episode."""
        return self.end in ("turns", "tokens", "length")

    @property
    def num_turns(self) -> int:
        return len(self.turn_texts)

    def turn_spans(self) -> list[tuple[int, int]]:
        """[start, end) of each model turn's tokens in ``ids``."""
        spans: list[tuple[int, int]] = []
        for pos, k in enumerate(self.turn_index):
            if k < 0:
                continue
            if k == len(spans):
                spans.append((pos, pos + 1))
            else:
                spans[k] = (spans[k][0], pos + 1)
        return spans

    def context_before(self, turn: int) -> list[int]:
        """Prompt and trajectory tokens before model turn ``turn`` (its observation included)."""
        spans = self.turn_spans()
        cut = spans[turn][0] if turn < len(spans) else len(self.ids)
        return self.prompt_ids + self.ids[:cut]

    def _append(self, toks: Sequence[int], model: bool, turn: int, logps: Sequence[float] | None) -> None:
        self.ids.extend(toks)
        self.loss_mask.extend([int(model)] * len(toks))
        self.turn_index.extend([turn if model else -1] * len(toks))
        if self.logprobs is not None:
            if logps is None and model:
                self.logprobs = None  # the engine gave none: the trajectory carries none
            else:
                self.logprobs.extend(list(logps) if logps is not None else [0.0] * len(toks))


@dataclass(frozen=True)
class EpisodeLimits:
    """Turn and token limits of an episode, and SUPO's summarization (``summary_tokens``: when a segment's
    tokens after its prompt reach it, the model is asked for a summary, ``summary_prompt`` appended as
    environment tokens; the episode then goes on in a new segment whose prompt is the task prompt and the
    summary; at most ``max_summaries`` per episode)."""

    max_turns: int = 4  # action turns (summary turns not counted)
    max_tokens: int = 256  # tokens after the prompt of a segment, model and environment together
    summary_tokens: int | None = None
    summary_prompt: str = "\nsummary:"
    max_summaries: int = 1

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_tokens < 1:
            raise ValueError(
                f"env.max_turns and env.max_tokens must be ≥ 1, got {self.max_turns}, {self.max_tokens}"
            )
        if self.summary_tokens is not None and not 0 < self.summary_tokens < self.max_tokens:
            raise ValueError(
                f"env.summary_tokens must be in (0, max_tokens={self.max_tokens}), got {self.summary_tokens}"
            )


def _groups_share_prompts(contexts: list[list[int]], n: int) -> bool:
    return all(contexts[g * n + j] == contexts[g * n] for g in range(len(contexts) // n) for j in range(n))


def run_episodes(
    engine: RolloutEngine,
    episodes: list[Episode],
    examples: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    n: int,
    sampling: SamplingParams,
    tokenizer: Any,
    limits: EpisodeLimits,
) -> list[Trajectory]:
    """Play ``len(prompt_ids) × n`` episodes (row = prompt·n + j, episode ``episodes[row]``); see the
    module docstring. Returns one trajectory per episode in row order, or, with summarization
    (``limits.summary_tokens``), each episode's segments in order (``episode``, ``segment``). An episode
    ends with ``end``:

        answer   the episode said done (a final answer, the goal, terminated)
        env      the environment truncated it
        turns    ``limits.max_turns`` model turns were played
        tokens   the next turn or observation would pass ``limits.max_tokens``
        length   a turn hit ``sampling.max_new_tokens`` without ending (EOS / a stop string)
    """
    rows = len(prompt_ids) * n
    if len(episodes) != rows or len(examples) != len(prompt_ids):
        raise ValueError(f"run_episodes: {len(episodes)} episodes, {len(examples)} examples for {rows} rows")
    trajs: list[Trajectory] = []
    for g, ex in enumerate(examples):
        for j in range(n):
            row = g * n + j
            extra = episodes[row].start(ex)
            ids = _tokens(tokenizer, extra) if extra else []
            trajs.append(Trajectory(prompt_ids=list(prompt_ids[g]) + ids, episode=row))
    base = [list(t.prompt_ids) for t in trajs]  # each episode's prompt (a new segment starts from it)
    done: list[Trajectory] = []  # finished segments of summarized episodes
    summaries, turn_of = [0] * rows, [0] * rows  # summaries made, action turns played
    summarizing: set[int] = set()
    stops = list(dict.fromkeys([*sampling.stop, *(s for e in episodes[:1] for s in e.stop)]))
    live = list(range(rows))
    for _ in range(limits.max_turns + limits.max_summaries):
        if not live:
            break
        ask = _tokens(tokenizer, limits.summary_prompt) if limits.summary_tokens is not None else []
        for r in live:  # SUPO: a long segment is summarized before its next action
            t = trajs[r]
            if ask and len(t.ids) >= limits.summary_tokens and summaries[r] < limits.max_summaries \
                    and len(t.ids) + len(ask) < limits.max_tokens:  # fmt: skip
                t._append(ask, False, -1, None)
                summarizing.add(r)
        room = {r: limits.max_tokens - len(trajs[r].ids) for r in live}
        budget = max(1, min(sampling.max_new_tokens, max(room.values())))
        params = sampling.model_copy(update={"max_new_tokens": budget,
                                             "stop": stops})  # fmt: skip
        contexts = [trajs[r].prompt_ids + trajs[r].ids for r in live]
        if max(turn_of) == 0 and n > 1 and len(live) == rows and _groups_share_prompts(contexts, n):
            gen = engine.generate(contexts[::n], n, params)
        else:
            gen = engine.generate(contexts, 1, params)
        logps = getattr(gen, "logprobs", None)
        versions = getattr(gen, "weight_version", None)  # [B] or None
        still: list[int] = []
        for i, r in enumerate(live):
            traj, valid = trajs[r], gen.completion_mask[i].bool()
            toks = gen.completion_ids[i][valid].tolist()
            lp = logps[i][valid].tolist() if logps is not None else None
            cut = len(toks) > room[r]
            toks, lp = toks[: room[r]], (lp[: room[r]] if lp is not None else None)
            traj._append(toks, True, traj.num_turns, lp)
            if versions is not None:
                v = int(versions[i])
                traj.weight_version = v if traj.weight_version is None else min(traj.weight_version, v)
            text = tokenizer.decode(toks, skip_special_tokens=True)
            traj.turn_texts.append(text)
            if r in summarizing:  # the segment ends on its summary; the episode goes on from prompt + summary
                summarizing.discard(r)
                summaries[r] += 1
                traj.turn_rewards.append(0.0)
                traj.turn_ok.append(True)
                traj.end = "summary"
                done.append(traj)
                nxt = Trajectory(
                    prompt_ids=base[r] + _tokens(tokenizer, text), episode=r, segment=traj.segment + 1
                )
                nxt.logprobs = [] if traj.logprobs is not None else None
                trajs[r] = nxt
                still.append(r)
                continue
            turn = turn_of[r]
            turn_of[r] += 1
            try:
                step = episodes[r].act(text)
            except Exception as e:
                traj.error = f"{type(e).__name__}: {e}"
                traj.turn_rewards.append(0.0)
                traj.turn_ok.append(False)
                traj.end = "env"
                continue
            traj.turn_rewards.append(float(step.reward))
            traj.turn_ok.append(bool(step.ok))
            traj.tool_calls += step.tool_calls
            traj.tool_errors += step.tool_errors
            if step.done or step.truncated:
                ended = "env" if step.truncated and not step.done else "answer"
                traj.end = "length" if ended == "answer" and bool(gen.truncated[i]) else ended
            elif cut:
                traj.end = "tokens"
            elif bool(gen.truncated[i]) and not step.observation:
                traj.end = "length"
            elif turn == limits.max_turns - 1:
                traj.end = "turns"
            else:
                obs = _tokens(tokenizer, step.observation) if step.observation else []
                if len(traj.ids) + len(obs) >= limits.max_tokens:
                    traj.end = "tokens"  # no room for the observation and a next turn
                    continue
                traj.observations.append(step.observation)
                traj._append(obs, False, -1, None)
                still.append(r)
        live = still
    for r, traj in enumerate(trajs):
        if not traj.end:
            traj.end = "turns"
        try:
            traj.reward = float(episodes[r].score())
        except Exception as e:
            traj.reward, traj.error = None, traj.error or f"score: {type(e).__name__}: {e}"
        traj.episode_end = traj.end
    for seg in done:  # a summarized episode's earlier segments share its reward and its end
        last = trajs[seg.episode]
        seg.reward, seg.episode_end, seg.error = last.reward, last.end, seg.error or last.error
    return sorted(done + trajs, key=lambda t: (t.episode, t.segment))


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
