"""Reward combiners: hand-worked steps, their metrics through RewardSet, and exact resume of their state."""

from __future__ import annotations

import math

import pytest

from unipo.config import ConfigError, load_config
from unipo.rewards import RewardSet
from unipo.rewards.combiners import HypervolumeCombiner, LagrangeCombiner, hypervolume, make_combiner


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_lagrange_two_steps_by_hand():
    comb = LagrangeCombiner({"c": 0.5}, lr=0.1, momentum=0.1, max_grad_norm=None)
    comps = {"task": [1.0, 0.0], "c": [0.2, 0.6]}
    total, metrics = comb(comps, {"task": 1.0, "c": 1.0})
    # sigma(0) = 0.5, objective scale = m - sum sigma = 1 - 0.5 = 0.5
    # total_0 = 0.5*1 + 0.5*0.2 = 0.6; total_1 = 0.5*0 + 0.5*0.6 = 0.3
    assert total == [pytest.approx(0.6), pytest.approx(0.3)]
    # mean c = 0.4, violation -0.1; g = sigma'(0)*(-0.1) = 0.25*-0.1 = -0.025; b = -0.025;
    # lambda = 0 - 0.1 * b = 0.0025
    assert metrics == {"lagrange/c": 0.5, "lagrange/c_violation": pytest.approx(-0.1),
                       "lagrange/objective_scale": 0.5}  # fmt: skip
    assert comb.lambdas["c"] == pytest.approx(0.0025)
    total, _ = comb(comps, {"task": 1.0, "c": 1.0})
    s = sigmoid(0.0025)  # the multiplier of this batch is the one before its own step
    assert total == [pytest.approx((1 - s) * 1 + s * 0.2), pytest.approx(s * 0.6)]
    g = s * (1 - s) * -0.1
    buf = 0.1 * -0.025 + g  # momentum 0.1
    assert comb.lambdas["c"] == pytest.approx(0.0025 - 0.1 * buf)


def test_lagrange_clip_equality_and_excluded_items():
    comb = LagrangeCombiner({"c": 0.0}, lr=1.0, momentum=0.0, max_grad_norm=0.01, equality=True)
    total, _ = comb({"task": [1.0, None], "c": [4.0, 4.0]}, {"task": 2.0, "c": 1.0})
    # tanh(0) = 0: the constrained term vanishes, objective scale 1 - 0 = 1 -> total_0 = 2*1; item 1 is None
    assert total == [pytest.approx(2.0), None]
    # g = (1 - tanh^2 0) * (4 - 0) = 4, clipped to norm 0.01 -> lambda = -0.01 (pushes c down: equality)
    assert comb.lambdas["c"] == pytest.approx(-0.01)


def test_hypervolume_values():
    assert hypervolume([[2, 3]], [0, 0]) == 6  # one box 2 x 3
    assert hypervolume([[2, 3], [3, 1]], [0, 0]) == 7  # 2*3 + (3-2)*1
    assert hypervolume([[1, 1, 1], [2, 0.5, 0.5]], [0, 0, 0]) == pytest.approx(1 + 1 * 0.25)
    assert hypervolume([[-1, 5]], [0, 0]) == 0  # dominated by the reference


def test_hypervolume_combiner_meta_reward():
    comb = HypervolumeCombiner()
    w = {"a": 1.0, "b": 0.5}
    total, m = comb({"a": [1.0, 3.0], "b": [2.0, 2.0]}, w)
    assert total == [2.0, 4.0]  # meta 1: 1 + 0.5*2, 3 + 0.5*2; the point (2, 2) becomes the reference
    assert m["hypervolume/contribution"] == 0.0
    total, m = comb({"a": [3.0, 3.0], "b": [4.0, 2.0]}, w)
    assert total == [5.0, 4.0]  # still meta 1 (it applies from the next batch)
    # point (3, 3) over reference (2, 2): contribution 1 x 1 = 1 -> meta = 0.5 + 1.5 tanh(1) = 1.642391
    assert m["hypervolume/contribution"] == pytest.approx(1.0)
    assert comb.meta == pytest.approx(0.5 + 1.5 * math.tanh(1.0))
    total, m = comb({"a": [1.0], "b": [1.0]}, w)
    assert total == [pytest.approx(1.5 * (0.5 + 1.5 * math.tanh(1.0)))]
    assert m["hypervolume/contribution"] == 0.0 and comb.meta == 0.5  # (1, 1) adds nothing: 0.5 + 1.5 tanh 0
    restored = HypervolumeCombiner()
    restored.load_state_dict(comb.state_dict())
    assert restored.state_dict() == comb.state_dict() == {
        "meta": 0.5, "buffer": [[2.0, 2.0], [3.0, 3.0]], "names": ["a", "b"]
    }  # fmt: skip


def test_reward_set_with_combiner_logs_and_checkpoints():
    comb = LagrangeCombiner({"short": 0.9}, lr=0.5, momentum=0.0, max_grad_norm=None)
    terms = [("task", lambda p, c, **k: [1.0] * len(c), 1.0),
             ("short", lambda p, c, **k: [float(len(x) < 3) for x in c], 1.0)]  # fmt: skip
    rs = RewardSet(terms, combiner=comb)
    result = rs(["q", "q"], ["ab", "abcd"])
    # sigma(0) = 0.5: total = 0.5*1 + 0.5*short -> [1.0, 0.5]
    assert result.total == [1.0, 0.5]
    metrics = result.metrics()
    assert metrics["rewards/lagrange/short"] == 0.5
    assert metrics["rewards/lagrange/short_violation"] == pytest.approx(0.5 - 0.9)
    state = rs.state_dict()
    # g = sigma'(0) * (0.5 - 0.9) = 0.25 * -0.4; lambda = -lr * g = 0.5 * 0.25 * 0.4
    lam, buf = pytest.approx(0.5 * 0.25 * 0.4), pytest.approx(0.25 * -0.4)
    assert state == {"rewards": {}, "combiner": {"lambdas": {"short": lam}, "buffers": {"short": buf}}}
    fresh = LagrangeCombiner({"short": 0.9}, lr=0.5, momentum=0.0, max_grad_norm=None)
    RewardSet(rs.rewards, combiner=fresh).load_state_dict(state)
    assert fresh.lambdas == comb.lambdas


def test_combiner_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown reward_combiner 'lagrangian'"):
        make_combiner("lagrangian")
    with pytest.raises(ValueError, match="not reward terms"):
        RewardSet([("task", lambda p, c, **k: [0.0] * len(c), 1.0)], combiner=LagrangeCombiner({"x": 1.0}))
    with pytest.raises(ConfigError, match=r"reward_combiner: .*bad params"):
        load_config(None, ["reward_combiner={name: lagrange, params: {threshold: 1}}"])


@pytest.mark.slow
def test_trainer_resume_restores_the_combiner_exactly(tiny_model_dir, tmp_path):
    from unipo.train.trainer import Trainer

    def cfg(out, steps, *extra):
        return load_config(None, [
            f"model.path={tiny_model_dir}", "model.device=cpu", "task.name=chain_sum",
            "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=40",
            "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
            "rollout.sampling.max_new_tokens=4", "optim.lr=1e-3", "optim.micro_batch_size=8",
            "train.threads=1",
            f"train.steps={steps}", f"train.output_dir={out}", "train.save_every=1", "train.save_final=false",
            "rewards=[{name: task}, {name: format, weight: 0.0}]",
            "reward_combiner={name: lagrange, params: {thresholds: {format: 0.5}, lr: 1.0}}", *extra,
        ])  # fmt: skip

    def parity(prompts, completions, **kw):  # varies within groups, so the batch means move
        return [float(len(c) % 2) for c in completions]

    full = Trainer(cfg(tmp_path / "full", 3), extra_rewards=[("parity", parity, 1.0)])
    full.train()
    cut = Trainer(cfg(tmp_path / "cut", 2), extra_rewards=[("parity", parity, 1.0)])
    cut.train()
    resumed = Trainer(cfg(tmp_path / "cut", 3, "train.resume=true"), extra_rewards=[("parity", parity, 1.0)])
    resumed.train()
    assert full.reward_set.combiner.lambdas["format"] != 0.0  # it moved
    assert resumed.reward_set.combiner.state_dict() == full.reward_set.combiner.state_dict()
