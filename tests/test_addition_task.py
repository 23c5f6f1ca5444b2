"""The demo's testbed task: worked column addition, its verifier, and pools disjoint by text."""

from __future__ import annotations

import pytest

from unipo.config import load_config
from unipo.tasks import AdditionTask, task_from_config
from unipo.tasks.addition import POOLS, completion_answer, pool_of, score_completion, worked_solution


def test_worked_solution_by_hand():
    # 347 + 586: 7+6 = 13 (carry 1), 4+8+1 = 13 (carry 1), 3+5+1 = 09 → 933
    assert worked_solution(347, 586, 3) == "7+6+0=13,4+8+1=13,3+5+1=09>933"
    # 999 + 999: every column carries, the answer has a fourth digit
    assert worked_solution(999, 999, 3) == "9+9+0=18,9+9+1=19,9+9+1=19>1998"
    assert worked_solution(100, 100, 3) == "0+0+0=00,0+0+0=00,1+1+0=02>200"
    assert worked_solution(12, 9, 2) == "2+9+0=11,1+0+1=02>21"  # a shorter operand is zero-padded


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        ("7+6+0=13,4+8+1=13,3+5+1=09>933", 1.0),  # the worked format
        ("933", 1.0),  # a bare answer (no '>'): the whole text is the answer
        ("  933 ", 1.0),  # surrounding whitespace is ignored
        ("7+6+0=13,4+8+1=13,3+5+1=09>934", 0.0),  # wrong sum
        ("7+6+0=13>1>933", 1.0),  # the last '>' counts
        ("7+6+0=13,4+8+1=13,3+5+1=09>933>1", 0.0),
        ("7+6+0=13,4+8+1=13,3+5+1=09>0933", 0.0),  # a leading zero is not the plain sum
        ("7+6+0=13,4+8+1=13,3+5+1=09>933x", 0.0),  # trailing junk
        ("7+6+0=13,4+8+1=13,3+5+1=09>", 0.0),  # no answer
        ("7+6+0=13,4+8+1=13,3+5+1=09", 0.0),  # the steps alone are not an answer
        ("", 0.0),
        (">+933", 0.0),
    ],
)
def test_verifier_on_hand_made_completions(completion, score):
    assert score_completion(completion, 933) == score


def test_reward_fn_reads_the_target_column_or_the_answer():
    reward = AdditionTask(digits=3).reward_fn()
    done = ["7+6+0=13,4+8+1=13,3+5+1=09>933", "933", "932"]
    assert reward(["347+586="] * 3, done, target=[933, 933, 933]) == [1.0, 1.0, 0.0]
    assert reward(["347+586="] * 3, done, answer=["933", "933", "933"]) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="expected 3"):
        reward(["q"] * 3, done, target=[933])
    with pytest.raises(ValueError, match="'target' or 'answer'"):
        reward(["q"], ["1"])


def test_examples_carry_a_correct_demonstration_the_tokenizer_can_spell(tiny):
    _, tok = tiny
    task = AdditionTask(digits=3)
    for ex in task.examples(50, 0):
        a, b = map(int, ex["question"].removesuffix("=").split("+"))
        assert ex["target"] == a + b and ex["answer"] == str(a + b)
        assert 100 <= a <= 999 and 100 <= b <= 999
        assert score_completion(ex["demonstration"], ex["target"]) == 1.0
        assert completion_answer(ex["demonstration"]) == ex["answer"]
        assert tok.unk_token_id not in tok(ex["demonstration"])["input_ids"]
        assert len(ex["demonstration"]) >= 3 * 9  # three fixed-width steps: ≥ 8 tokens by far
    bare = AdditionTask(digits=3, worked=False).examples(5, 0)
    assert all(ex["demonstration"] == ex["answer"] for ex in bare)


def test_pools_are_disjoint_by_text_for_any_seeds():
    task = AdditionTask(digits=3)
    warm = {ex["question"] for ex in task.warm_start_examples(20_000, 0)}
    rl = {ex["question"] for ex in task.examples(20_000, 0)}  # same seed as the warm start on purpose
    held = [ex["question"] for ex in task.held_out_examples(2_000, 0)]
    assert len(warm) == len(rl) == 20_000 and len(set(held)) == 2_000  # draws are distinct problems
    assert not warm & rl
    assert not set(held) & (warm | rl)
    assert all(pool_of(q, task.pool_weights) == "eval" for q in held)


def test_pool_shares_follow_the_weights_over_the_whole_space():
    # digits=2: all 90 × 90 problems; each lands in exactly one pool, in about the weights' shares
    task = AdditionTask(digits=2, pool_weights=(0.4, 0.4, 0.2))
    counts = {p: 0 for p in POOLS}
    for a in range(10, 100):
        for b in range(10, 100):
            counts[pool_of(f"{a}+{b}=", task.pool_weights)] += 1
    assert sum(counts.values()) == task.space == 8100
    for pool, share in zip(POOLS, (0.4, 0.4, 0.2)):
        assert abs(counts[pool] / 8100 - share) < 0.02  # binomial s.d. ≈ 0.005
    drawn = task.held_out_examples(10_000, 3)  # asks for more than the pool holds: all of it, once
    assert len(drawn) == counts["eval"]


def test_bad_configuration_names_the_field():
    with pytest.raises(ValueError, match="digits"):
        AdditionTask(digits=0)
    with pytest.raises(ValueError, match="pool_weights"):
        AdditionTask(pool_weights=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="pool must be one of"):
        AdditionTask().pool_examples("test", 1, 0)


def test_config_source_addition_and_held_out_examples():
    cfg = load_config(None, ["task.source=addition", "task.config={digits: 2, pool_weights: [2, 1, 1]}"])
    task = task_from_config(cfg.task)
    assert isinstance(task, AdditionTask) and task.digits == 2 and task.pool_weights == (2.0, 1.0, 1.0)
    held = task.examples(20, cfg.task.eval_seed, "eval")  # what the trainer evaluates on
    assert [ex["question"] for ex in held] == [ex["question"] for ex in task.held_out_examples(20, 2)]
    assert {ex["question"] for ex in task.examples(200, 1)}.isdisjoint(
        ex["question"] for ex in task.examples(200, 1, "eval")
    )  # one seed, two pools: disjoint by text
    with pytest.raises(ValueError, match="unknown fields"):
        task_from_config(load_config(None, ["task.source=addition", "task.config={digit: 2}"]).task)
    with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
        task.examples(2, 0, "test")


@pytest.mark.slow
def test_trainer_evaluates_on_the_evaluation_pool(tiny_model_dir, tmp_path):
    from unipo.train.trainer import Trainer

    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cpu", "task.source=addition", "task.config={digits: 2}",
        "task.train_size=300", "task.eval_size=40", "task.chat=false", f"train.output_dir={tmp_path / 'run'}",
        "train.steps=1",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    train_q = {ex["question"] for ex in trainer.train_examples}
    eval_q = [ex["question"] for ex in trainer.eval_set.examples]
    assert len(eval_q) == 40 and not train_q & set(eval_q)
    assert all(pool_of(q, trainer.task.pool_weights) == "eval" for q in eval_q)
