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

    # The old form (r - a H_think + g H_answer on every row) gave other values: row 0 would be
    # 1 - 2.0 = -1.0 (a = 1, g = 0) and the wrong row 2 would be 0 - 3.0 = -3.0; the old constructor had
    # no alpha / format_score. Delimiter (</think>) id 9; 0 = padding.
    batch = _batch([1.0, 1.0, 0.0, 1.0, 1.2], [""] * 5, [0, 0, 0, 0, 1])
    batch = batch.replace(
        completion_ids=torch.tensor(
            [[5, 9, 7, 7, 0], [5, 5, 9, 7, 7], [5, 9, 7, 0, 0], [5, 5, 5, 5, 5], [5, 9, 7, 0, 0]]
        ),
        completion_mask=torch.tensor(
            [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
        ).float(),
        entropies=torch.tensor([
            [2.0, 8.0, 0.5, 0.5, 50.0],  # think [2.0] -> 2.0; answer [0.5, 0.5] -> 0.5 (delimiter, pad out)
            [0.2, 0.4, 8.0, 0.6, 0.6],  # think (0.2 + 0.4)/2 = 0.3 < answer 0.6
            [3.0, 8.0, 1.0, 0.0, 0.0],  # a wrong answer: its entropies do not matter
            [0.4, 0.4, 0.4, 0.4, 0.4],  # no delimiter: all thinking, H_answer = 0
            [0.1, 8.0, 0.9, 0.0, 0.0],  # think 0.1 < answer 0.9, reward 1.2 (a lone group)
        ]),
    )  # fmt: skip
    part = PEARAdvantage(delimiter_ids=(9,), format_score=0.1)
    assert (PEARAdvantage().alpha, PEARAdvantage().format_score) == (1.0, 0.0)  # α = 1, README format_score 0
    shaped, penalty, h_think, h_answer = part.shaped_rewards(batch)
    assert h_think.tolist() == pytest.approx([2.0, 0.3, 3.0, 0.4, 0.1])
    assert h_answer.tolist() == pytest.approx([0.5, 0.6, 1.0, 0.0, 0.9])
    # P = max(0, H_think - 1 * H_answer): 1.5, max(0, -0.3) = 0, (row 2: 2.0, unused), 0.4, 0
    assert penalty.tolist() == pytest.approx([1.5, 0.0, 2.0, 0.4, 0.0])
    # correct rows: min(1, s - P) = min(1, 1 - 1.5) = -0.5, 1, min(1, 1 - 0.4) = 0.6, min(1, 1.2 - 0) = 1;
    # the wrong row gets the fixed format score 0.1
    assert shaped.tolist() == pytest.approx([-0.5, 1.0, 0.1, 0.6, 1.0])
    adv, metrics = part(batch)
    # group 0: r~ = [-0.5, 1, 0.1, 0.6], mean 0.3, deviations [-0.8, 0.7, -0.2, 0.3], squares sum 1.26,
    # unbiased std sqrt(1.26 / 3) = sqrt(0.42); the lone row 4 gets 0
    std = math.sqrt(0.42) + 1e-6
    assert adv[:, 0].tolist() == pytest.approx([-0.8 / std, 0.7 / std, -0.2 / std, 0.3 / std, 0.0], abs=1e-5)
    assert float(adv[0, 4]) == 0.0 and float(adv[0, 3]) == pytest.approx(-0.8 / std, abs=1e-5)  # padding 0
    assert float(metrics["pear/penalty_correct"]) == pytest.approx((1.5 + 0.0 + 0.4 + 0.0) / 4)
    assert float(metrics["pear/correct_frac"]) == pytest.approx(4 / 5)
    # α = 0 (the paper's ablation: the thinking phase alone): P = H_think -> 1 - 2 = -1, 1 - 0.3 = 0.7,
    # format score 0 (default), 1 - 0.4 = 0.6, min(1, 1.2 - 0.1) = 1
    assert PEARAdvantage(alpha=0.0, delimiter_ids=(9,)).shaped_rewards(batch)[0].tolist() == pytest.approx(
        [-1.0, 0.7, 0.0, 0.6, 1.0]
    )
    with pytest.raises(ValueError, match="entropies"):
        PEARAdvantage()(_batch([1.0, 0.0], ["", ""], [0, 0]))
    with pytest.raises(ValueError, match="delimiter_ids"):
        PEARAdvantage(delimiter_ids=(-1,))
