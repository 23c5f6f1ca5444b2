"""The env config through the RL objective: collect plays episodes, every preset's batch is the
trajectories, evaluation reports success and tool calls; SUPO's segments become rows of their group."""

from __future__ import annotations

import pytest

from unipo.config import ConfigError, EnvConfig, load_config
from unipo.envs import Calculator, EnvRollout, EpisodeLimits, ToolEpisode, build_env_rollout
from unipo.envs.scripted import ScriptedEngine
from unipo.models.tiny import build_tokenizer
from unipo.rollout.base import SamplingParams
from unipo.train.collect import collect


def overrides(model_dir, out, *extra: str) -> list[str]:
    return [
        f"model.path={model_dir}", "model.device=cpu", "task.source=env", "task.chat=false",
        "task.train_size=16",
        "task.eval_size=4", "env.name=calculator", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.sampling.max_new_tokens=6", "eval.samples=2", "eval.ks=[1]", "train.steps=1",
        f"train.output_dir={out}", "train.entropy_change=none", *extra,
    ]  # fmt: skip


def test_trainer_plays_episodes_and_reports_tool_calls(tiny_model_dir, tmp_path):
    from unipo.train.trainer import Trainer

    cfg = load_config(None, overrides(tiny_model_dir, tmp_path / "run", "algorithm.name=igpo",
                                      "env.turn_rewards=[{name: igpo}]"))  # fmt: skip
    trainer = Trainer(cfg)
    batch, metrics = trainer.collect()
    assert batch.context_mask is not None and batch.turn_index is not None
    assert {"env/turns_mean", "env/tool_calls_mean", "env/truncated"} <= set(metrics)
    assert all("igpo" in m["turn_terms"] and len(m["turn_rewards"]) == m["turns"] for m in batch.metadata)
    (record,) = list(trainer.update(batch))
    assert "loss/total" in record
    ev = trainer.evaluate()
    assert {"eval/accuracy", "eval/tool_calls", "eval/tool_calls_stderr", "eval/turns"} <= set(ev)


def test_config_refuses_an_env_source_without_an_env_and_unknown_envs(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"set env\.name"):
        load_config(None, [f"model.path={tiny_model_dir}", "task.source=env"])
    with pytest.raises(ConfigError, match=r"env\.name='nope'"):
        load_config(None, overrides(tiny_model_dir, tmp_path, "env.name=nope"))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_config(None, overrides(tiny_model_dir, tmp_path, "env.name=no_such_module:Env"))


def test_summarized_episodes_become_segments_of_their_group():
    tok = build_tokenizer()

    def policy(ctx: str) -> str:  # a call, then a summary when asked, then (from the summary) the answer
        if ctx.endswith("summary:"):
            return "S</s>"
        if ctx.endswith("S"):
            return "42</s>"
        return "[1+1]"

    limits = EpisodeLimits(max_turns=4, max_tokens=40, summary_tokens=5, summary_prompt="summary:")
    rollout = EnvRollout(lambda: ToolEpisode(Calculator()), tok, limits)
    ex = [{"question": "Q: 6*7+0=\n", "answer": "42"}, {"question": "Q: 2*3+1=\n", "answer": "7"}]
    prompts = [tok(e["question"], add_special_tokens=False)["input_ids"] for e in ex]
    gen = rollout(ScriptedEngine(tok, policy), ex, prompts, 2, SamplingParams(max_new_tokens=8))
    # each episode: segment 0 = "[1+1]=2\n" + "summary:" + "S</s>", segment 1 (prompt + "S") = "42</s>"
    assert gen.row_prompt == [0, 0, 0, 0, 1, 1, 1, 1]
    seg0, seg1 = gen.trajectories[0], gen.trajectories[1]
    assert tok.decode(seg0.ids) == "[1+1]=2\nsummary:S</s>" and seg0.end == "summary"
    assert tok.decode(seg1.prompt_ids[-1:]) == "S" and tok.decode(seg1.ids) == "42</s>"
    assert [t.reward for t in gen.trajectories] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert len(gen.episodes_only().completions) == 4  # evaluation sees one row per episode

    from unipo.envs import env_reward
    from unipo.rewards import build_reward_set

    batch, _, _, _ = collect(
        engine=ScriptedEngine(tok, policy), reward_set=build_reward_set([], env_reward), selections=(),
        examples=ex, prompt_ids=prompts, prompt_texts=[e["question"] for e in ex], group_size=2,
        sampling=SamplingParams(max_new_tokens=8), max_refill_rounds=0, more=None, rollout=rollout,
    )  # fmt: skip
    assert batch.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [m["episode"] for m in batch.metadata] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.rewards.tolist() == [1.0] * 4 + [0.0] * 4


def test_build_env_rollout_reads_the_class_limits():
    rollout = build_env_rollout(EnvConfig(name="calculator"), build_tokenizer())
    assert rollout.limits == EpisodeLimits(Calculator.max_turns, Calculator.max_tokens)
    guess = build_env_rollout(EnvConfig(name="guess", max_turns=3), build_tokenizer())
    assert guess.limits.max_turns == 3 and guess.make_episode().stop == ("\n",)
