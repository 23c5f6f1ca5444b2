"""HBPO's advantage and AdaCoT's selective loss masking (hand-worked), the code task, and a
label-free (hidden labels) training run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.config import AlgorithmConfig, build_algorithm, load_config
from unipo.parts.base import LossInputs
from unipo.parts.rewards_t2 import HBPOAdvantage, SelectiveLossMask
from unipo.tasks.code import CodeTask


def _batch(rewards, completions, group_ids):
    b, t = len(rewards), 3
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.zeros(b, t, dtype=torch.long), completion_mask=torch.ones(b, t),
        group_ids=torch.tensor(group_ids), truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        metadata=[{"completion": c} for c in completions],
    )  # fmt: skip


def test_hbpo_advantage_by_hand():
    with8, with16 = "I will answer the question with 8 tokens", "I will answer the question with 16 tokens"
    batch = _batch([3.0, 1.0, 2.0, 0.0, 5.0], [with8, with8, with16, "no budget", "alone"], [0, 0, 0, 0, 1])
    adv, metrics = HBPOAdvantage(max_length=16, scale=4.0)(batch)
    # group 0: mean 1.5, unbiased std sqrt((2.25+.25+.25+2.25)/3) = sqrt(5/3); inter = (r - 1.5)/(std + 1e-6)
    std = math.sqrt(5 / 3)
    inter = [(r - 1.5) / (std + 1e-6) for r in (3.0, 1.0, 2.0, 0.0)]
    # subgroup b=8: mu = (3+1)/2 = 2, f2(8) = 4 cos(pi*8/32) = 2.8284 -> intra = -0.8284
    # subgroup b=16: mu = 2, f2(16) = 4 cos(pi/2) = 0 -> intra = 2; "no budget" is b = L_max = 16 too
    f2_8 = 4 * math.cos(math.pi / 4)
    # rows 2 ("with 16") and 3 (no budget -> 16) share the subgroup: mu = (2+0)/2 = 1 -> intra = 1 - 0 = 1
    expected = [inter[0] + 2 - f2_8, inter[1] + 2 - f2_8, inter[2] + 1, inter[3] + 1, 0.0]  # lone row: 0
    assert adv[:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(adv[:, 0:1].expand(-1, 3), adv)  # the same value on every token
    assert float(metrics["hbpo/budgeted_frac"]) == pytest.approx(3 / 5)


def test_adacot_selective_loss_mask():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    x = LossInputs(logprobs=torch.zeros(3, 4), old_logprobs=torch.zeros(3, 4), advantages=torch.zeros(3, 4),
                   mask=mask, row_flags={"adacot_slm": torch.tensor([True, False, True])})  # fmt: skip
    weight, metrics = SelectiveLossMask(position=1, width=2)(x)
    # flagged rows lose positions 1 and 2, where they are valid tokens: row 0 only position 1 (2 is padding)
    assert weight.tolist() == [[1, 0, 1, 1], [1, 1, 1, 1], [1, 0, 0, 1]]
    assert float(metrics["adacot/masked_tokens"]) == 3.0
    # no flag in the inputs: all ones
    zeros = torch.zeros(1, 2)
    plain = LossInputs(logprobs=zeros, old_logprobs=zeros, advantages=zeros, mask=torch.ones(1, 2))
    assert SelectiveLossMask()(plain)[0].tolist() == [[1.0, 1.0]]
    algo = build_algorithm(AlgorithmConfig(name="grpo", token_weights=["adacot_slm"]))
    assert algo.row_flags == ("adacot_slm",)  # collect copies the example column into each row's metadata


def test_code_task_split_and_canonical_answers_pass():
    task = CodeTask()
    train, held = task.problems("train"), task.problems("eval")
    assert not set(train) & set(held) and len(train) + len(held) == 18 * 41  # a in [-9, 9] \ {0}, |b| <= 20
    assert CodeTask(holdout=False).problems("eval") == CodeTask(holdout=False).problems("train")
    examples = task.examples(50, seed=3)
    assert examples == task.examples(50, seed=3)  # deterministic
    assert task.examples(5, seed=0, split="eval")[0]["question"] not in {
        e["question"] for e in task.examples(0, 0)
    }
    ex = examples[0]
    reward = task.reward_fn()
    got = reward(["p"] * 2, [ex["answer"], "0"], tests=[ex["tests"]] * 2, template=[ex["template"]] * 2)
    assert got == [1.0, 0.0]  # a = 0 is never a problem, so the constant 0 fails


@pytest.mark.slow
def test_hidden_labels_train_with_ttrl_and_evaluate_with_labels(tiny_model_dir, tmp_path):
    from unipo.train.trainer import Trainer

    seen: list[set[str]] = []

    def spy(prompts, completions, **columns):
        seen.append(set(columns))
        return [0.0] * len(completions)

    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cpu", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=20",
        "task.eval_size=4", "task.eval_seed=1000000", "task.chat=false", "task.hide_labels=true",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.sampling.max_new_tokens=3",
        "optim.micro_batch_size=8", "eval.samples=2", "eval.ks=[1,2]", "train.steps=1",
        f"train.output_dir={tmp_path / 'run'}", "rewards=[{name: ttrl}]",
    ])  # fmt: skip
    summary = Trainer(cfg, extra_rewards=[("spy", spy, 0.0)]).train()
    assert seen and all(not ({"answer", "entry"} & cols) for cols in seen)  # no label reached a reward
    assert {"group_id", "completion_length"} <= seen[0]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "loss/total" in r)
    assert "rewards/ttrl/majority_ratio" in step and "rewards/ttrl_mean" in step
    assert "after/accuracy" in summary  # evaluation still scores against the labels
    # with labels hidden, a reward that needs them fails with the column named
    bad = load_config(
        None, [*cfg_overrides(tiny_model_dir, tmp_path / "bad"), "rewards=[{name: exact_match}]"]
    )
    with pytest.raises(Exception, match="answer"):
        Trainer(bad).train()


def cfg_overrides(model_dir, out):
    return [f"model.path={model_dir}", "model.device=cpu", "task.name=chain_sum", "task.train_size=20",
            "task.eval_size=0", "task.chat=false", "task.hide_labels=true", "rollout.prompts_per_step=2",
            "rollout.group_size=2", "rollout.sampling.max_new_tokens=2", "train.steps=1",
            f"train.output_dir={out}"]  # fmt: skip


def test_pear_advantage_by_hand():
    from unipo.parts.rewards_t2 import PEARAdvantage

    # completions (ids): row 0 "5 9 7 1" with delimiter (9) at 1; row 1 "5 5 5 0" with no delimiter (0 = pad)
    batch = _batch([1.0, 1.0], ["", ""], [0, 0])
    batch = batch.replace(
        completion_ids=torch.tensor([[5, 9, 7, 1], [5, 5, 5, 0]]),
        completion_mask=torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]),
        entropies=torch.tensor([[2.0, 9.0, 1.0, 3.0], [1.0, 2.0, 3.0, 50.0]]),
    )
    adv, metrics = PEARAdvantage(think_coef=0.5, answer_coef=0.25, delimiter_ids=(9,))(batch)
    # row 0: think = [0] -> H = 2; answer = [2, 3] -> H = (1+3)/2 = 2; r~ = 1 - 0.5*2 + 0.25*2 = 0.5
    # row 1: no delimiter: think = [0, 1, 2] -> H = 2 (padding 50 ignored); r~ = 1 - 0.5*2 = 0.0
    # group of 2: mean 0.25, unbiased std = sqrt(2 * 0.25^2) = 0.35355 -> A = ±0.25 / 0.35355 = ±0.7071
    a = 0.25 / (math.sqrt(2 * 0.25**2) + 1e-6)
    assert adv[:, 0].tolist() == pytest.approx([a, -a], abs=1e-5)
    assert float(adv[1, 3]) == 0.0  # padding
    assert float(metrics["pear/think_entropy"]) == pytest.approx(2.0)
    assert float(metrics["pear/answer_entropy"]) == pytest.approx(
        1.0
    )  # (2 + 0) / 2: row 1 has no answer phase
    with pytest.raises(ValueError, match="entropies"):
        PEARAdvantage()(_batch([1.0, 0.0], ["", ""], [0, 0]))
