"""Multi-turn environments: token-id round trips across turns, tools (timeouts, failures, the sandbox),
the Gym and chat-template adapters, and the env config through collect and the trainer."""

from __future__ import annotations

import time

import pytest
import torch

from unipo.envs import (
    Calculator,
    Environment,
    EnvRollout,
    EpisodeLimits,
    GuessNumber,
    GymEpisode,
    ToolCall,
    ToolEpisode,
    call_tool,
    tool_schema,
)
from unipo.envs.formats import ChatTemplateFormat, CompactFormat
from unipo.envs.scripted import ScriptedEngine
from unipo.models.tiny import build_tokenizer
from unipo.rollout.base import SamplingParams

calculator_script = Calculator.oracle


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_calculator_round_trip_keeps_ids_masks_and_turns(tok):
    ex = Calculator.problem(37, 48, 15)
    engine = ScriptedEngine(tok, calculator_script)
    rollout = EnvRollout(lambda: ToolEpisode(Calculator()), tok, EpisodeLimits(4, 64))
    prompt = tok(ex["question"], add_special_tokens=False)["input_ids"]
    gen = rollout(engine, [ex], [prompt], 2, SamplingParams(max_new_tokens=12))
    traj = gen.trajectories[0]
    # the exact text, model pieces and environment pieces interleaved, never re-tokenized
    assert tok.decode(traj.ids) == "[37*48]=1776\n[1776+15]=1791\n1791</s>"
    pieces = [("[37*48]", 1), ("=1776\n", 0), ("[1776+15]", 1), ("=1791\n", 0), ("1791</s>", 1)]
    expect_mask = [m for text, m in pieces for _ in tok(text, add_special_tokens=False)["input_ids"]]
    assert traj.loss_mask == expect_mask
    assert traj.turn_index == [0] * 7 + [-1] * 6 + [1] * 9 + [-1] * 6 + [2] * 5
    assert traj.reward == 1.0 and traj.tool_calls == 2 and traj.end == "answer"
    # the batch fields: loss mask, context mask, turn index; sampler log-probs only on model tokens
    assert gen.completion_mask[0].tolist()[: len(expect_mask)] == expect_mask
    assert gen.context_mask[0].sum() == len(traj.ids)
    assert torch.equal(gen.logprobs[0][: len(traj.ids)], torch.tensor([-0.5 * m for m in expect_mask]))
    assert gen.columns["env_reward"] == [1.0, 1.0] and gen.columns["tool_calls"] == [2, 2]
    # the first turn of a group went out as one prompt × n; later turns one row per live episode
    assert engine.calls == [(1, 2), (2, 1), (2, 1)]
    # each turn's context is exactly prompt + every token so far
    assert (
        traj.context_before(2)
        == prompt + tok("[37*48]=1776\n[1776+15]=1791\n", add_special_tokens=False)["input_ids"]
    )


def test_turn_limit_and_token_budget_end_episodes(tok):
    ex = Calculator.problem(11, 12, 3)
    loop = ScriptedEngine(tok, lambda ctx: "[2*2]")  # never answers
    gen = EnvRollout(lambda: ToolEpisode(Calculator()), tok, EpisodeLimits(3, 64))(
        loop, [ex], [tok(ex["question"])["input_ids"]], 1, SamplingParams(max_new_tokens=8)
    )
    t = gen.trajectories[0]
    assert t.end == "turns" and t.num_turns == 3 and t.reward == 0.0 and bool(gen.truncated[0])
    assert t.loss_mask[-1] == 1  # the observation after the last turn is dropped: rows end on a model token
    tight = EnvRollout(lambda: ToolEpisode(Calculator()), tok, EpisodeLimits(4, 10))(
        loop, [ex], [tok(ex["question"])["input_ids"]], 1, SamplingParams(max_new_tokens=8)
    )
    assert tight.trajectories[0].end == "tokens" and len(tight.trajectories[0].ids) <= 10


class Slow(Environment):
    def sleep(self, seconds: str) -> str:
        """Sleep.

        Args:
            seconds: how long
        """
        time.sleep(float(seconds))
        return "woke"

    def boom(self, x: str) -> str:
        """Fail.

        Args:
            x: anything
        """
        raise RuntimeError("broken tool")

    def count(self, x: str) -> int:
        """Return a number.

        Args:
            x: anything
        """
        return len(x)

    def reward(self) -> float:
        return 0.0


def test_tool_timeouts_and_failures_become_observations():
    tools = {t.__name__: t for t in Slow().tools()}
    assert sorted(tools) == ["boom", "count", "sleep"]
    t0 = time.perf_counter()
    slow = call_tool(tools, ToolCall("sleep", {"seconds": "5"}), timeout_s=0.2)
    assert not slow.ok and slow.error == "timeout" and "timed out after 0.2s" in slow.content
    assert time.perf_counter() - t0 < 2.0
    raised = call_tool(tools, ToolCall("boom", {"x": "1"}), timeout_s=1)
    assert (raised.ok, raised.error, raised.content) == (False, "raised", "error: RuntimeError: broken tool")
    bad = call_tool(tools, ToolCall("boom", {"y": "1"}), timeout_s=1)
    assert bad.error == "bad_arguments"
    unknown = call_tool(tools, ToolCall("nope", {}), timeout_s=1)
    assert unknown.error == "unknown_tool" and "boom, count, sleep" in unknown.content
    assert (
        call_tool(tools, ToolCall("count", {"x": "abc"}), timeout_s=1).content == "3"
    )  # numbers become text
    # in an episode, the failure is the observation and the episode goes on
    episode = ToolEpisode(Slow(), CompactFormat(), timeout_s=0.2)
    step = episode.act("[boom 1]")
    assert not step.done and not step.ok and step.tool_errors == 1 and step.observation.startswith("=error:")
    assert episode.act("[nope x]").observation.startswith("=error: unknown tool")
    assert episode.act("final").done


def test_calculator_tool_refuses_two_operations():
    env = Calculator()
    env.reset(answer="1")
    step = ToolEpisode(env).act("[1+2*3]")
    assert step.observation == "=error: ValueError: one operation at a time\n" and not step.ok
    assert ToolEpisode(env).act("[-3*4]").observation == "=-12\n"


def test_tool_schema_is_the_openai_function_schema():
    schema = tool_schema(Calculator().calc)
    assert schema["type"] == "function" and schema["function"]["name"] == "calc"
    assert schema["function"]["parameters"]["properties"]["expression"]["type"] == "string"
    assert schema["function"]["parameters"]["required"] == ["expression"]


def test_gym_episode_plays_guess_number_with_partial_observations(tok):
    ex = {"question": "guess 1-15\n", "secret": 10, "answer": ""}

    def binary_search(ctx: str) -> str:
        lo, hi = 1, 15
        for line_guess, obs in zip(ctx.split("\n")[1::2], ctx.split("\n")[2::2]):
            g = int(line_guess)
            lo, hi = (g + 1, hi) if obs == ">" else (lo, g - 1)
        return f"{(lo + hi) // 2}\n"

    def make():
        episode = GymEpisode(GuessNumber())
        episode.stop = ("\n",)
        return episode

    gen = EnvRollout(make, tok, EpisodeLimits(4, 32))(
        ScriptedEngine(tok, binary_search), [ex], [tok(ex["question"])["input_ids"]], 1,
        SamplingParams(max_new_tokens=4),
    )  # fmt: skip
    t = gen.trajectories[0]
    assert tok.decode(t.ids) == "8\n>\n12\n<\n10\n"  # the winning guess ends the episode (no observation)
    assert t.turn_rewards == [0.0, 0.0, 1.0] and t.reward == 1.0 and t.end == "answer"
    assert t.turn_ok == [True, True, True]
    bad = GymEpisode(GuessNumber())
    bad.start(ex)
    step = bad.act("x")
    assert step.observation == "?\n" and not step.ok and not step.done


def test_chat_template_format_is_openai_compatible():
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}<tool>{{ m['content'] }}</s>\n"
        "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}"
        "{% for c in m.get('tool_calls', []) %}<tool_call>{{ c['function'] | tojson }}</tool_call>"
        "{% endfor %}"
        "</s>\n{% else %}<|user|>{{ m['content'] }}</s>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert isinstance(tok, PreTrainedTokenizerFast)
    fmt = ChatTemplateFormat(tok)
    calls = fmt.parse('<tool_call>{"name": "calc", "arguments": {"expression": "2*3"}}</tool_call>', {})
    assert calls == [ToolCall("calc", {"expression": "2*3"}, "call_0")]
    assert calls[0].openai()["function"] == {"name": "calc", "arguments": '{"expression": "2*3"}'}
    from unipo.envs.tools import ToolResult

    # the text after the model's EOS: the template's own rendering of the tool message and the next turn
    assert fmt.render([ToolResult(calls[0], "6")]) == "\n<tool>6</s>\n<|assistant|>"
    assert fmt.observe("hot") == "\n<|user|>hot</s>\n<|assistant|>"
    assert fmt.parse("the answer is 6", {}) == []


def test_python_tool_runs_in_the_sandbox():
    from unipo.envs import PythonTool

    tool = PythonTool(wall_s=2.0, cpu_s=1.0)
    assert tool("print(6*7)") == "42"
    assert tool("import socket; socket.socket()").startswith("error: ")
    assert tool("while True: pass").startswith("error: ")
