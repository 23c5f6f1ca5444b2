"""f-DPG's pseudo-reward advantage (parts/fdpg.py), worked by hand for each divergence of the paper."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.batch import RolloutBatch
from unipo.parts.fdpg import FDPGAdvantage


def batch(rewards=(1.0, 0.0), old=(-2.0, -3.0), ref=(-2.5, -3.0), groups=(0, 0)) -> RolloutBatch:
    """One-token completions: Σ_t log π_old = ``old``, Σ_t log π_ref = ``ref`` per row."""
    n = len(rewards)
    return RolloutBatch(
        prompt_ids=torch.ones(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
        completion_ids=torch.ones(n, 1, dtype=torch.long), completion_mask=torch.ones(n, 1),
        group_ids=torch.tensor(groups), truncated=torch.zeros(n, dtype=torch.bool),
        rewards=torch.tensor(rewards), old_logprobs=torch.tensor(old)[:, None],
        ref_logprobs=torch.tensor(ref)[:, None],
    )  # fmt: skip


# filter target: row 0 accepted (r = 1 ≥ 0.5): log P = log π_ref = −2.5; row 1 rejected: outside p's support.
# Ẑ = mean over the group of P/π_old = (e^{−2.5+2} + 0)/2 = e^{−0.5}/2, so
# log t_0 = log π_old − log P + log Ẑ = −2 + 2.5 − 0.5 − log 2 = −log 2 (t_0 = ½); t_1 = ∞.
@pytest.mark.parametrize(
    ("divergence", "accepted", "rejected"),
    [
        ("kl", 2.0, 0.0),  # R = −f′(t) = 1/t = 2; 1/∞ = 0
        ("tv", 0.5, -0.5),  # R = −sign(log t)/2
        ("js", math.log(1.5), -math.log(2)),  # R = softplus(−log t) − log 2 = log 3 − log 2; −log 2 at ∞
    ],
)
def test_pseudo_rewards_for_the_filter_target(divergence, accepted, rejected):
    adv = FDPGAdvantage(divergence=divergence, baseline_window=0)
    r_f, log_t = adv.pseudo_rewards(batch())
    assert log_t[0].item() == pytest.approx(-math.log(2), abs=1e-6) and math.isinf(log_t[1].item())
    assert r_f.tolist() == pytest.approx([accepted, rejected], abs=1e-6)
    a, m = adv(batch())
    assert a[:, 0].tolist() == pytest.approx([accepted, rejected], abs=1e-6)  # no baseline
    assert m["advantage/f_dpg_in_support"].item() == 0.5


def test_reverse_kl_with_the_exp_reward_target():
    # β = 1: log P = log π_ref + r = (−1.5, −3); log P/π_old = (0.5, 0): Ẑ = (e^0.5 + 1)/2
    # log t = log π_old − log P + log Ẑ = (−0.5, 0) + log Ẑ; R = −(log t + 1)
    adv = FDPGAdvantage(divergence="rkl", target="exp_reward", beta=1.0, baseline_window=0)
    r_f, _ = adv.pseudo_rewards(batch())
    log_z = math.log((math.exp(0.5) + 1) / 2)
    assert r_f.tolist() == pytest.approx([-(-0.5 + log_z + 1), -(0.0 + log_z + 1)], abs=1e-6)
    with pytest.raises(ValueError, match="reverse KL to the 'filter' target is infinite"):
        FDPGAdvantage(divergence="rkl", target="filter")


def test_partition_function_is_estimated_per_prompt():
    # two prompts with the same rows: each group's Ẑ uses only its own samples, so the results repeat
    adv = FDPGAdvantage(divergence="kl", baseline_window=0)
    two = batch((1.0, 0.0, 1.0, 0.0), (-2.0, -3.0, -2.0, -3.0), (-2.5, -3.0, -2.5, -3.0), (0, 0, 5, 5))
    r_f, _ = adv.pseudo_rewards(two)
    assert r_f.tolist() == pytest.approx([2.0, 0.0, 2.0, 0.0], abs=1e-6)
    # a prompt with no accepted sample: Ẑ = 0, every sample is outside the support (R = 0 for KL)
    r_f, log_t = adv.pseudo_rewards(batch((0.0, 0.0)))
    assert r_f.tolist() == [0.0, 0.0] and torch.isinf(log_t).all()


def test_moving_average_baseline_and_its_state():
    # window 3: step 1 has no history (b = 0) and records (2, 0); step 2: b = 1; after it the window holds
    # the last 3 pseudo-rewards (0, 2, 0): b = 2/3, and it survives state_dict / load_state_dict
    adv = FDPGAdvantage(divergence="kl", baseline_window=3)
    a1, _ = adv(batch())
    a2, m = adv(batch())
    assert a1[:, 0].tolist() == pytest.approx([2.0, 0.0]) and a2[:, 0].tolist() == pytest.approx([1.0, -1.0])
    assert m["advantage/f_dpg_baseline"].item() == pytest.approx(1.0)
    fresh = FDPGAdvantage(divergence="kl", baseline_window=3)
    fresh.load_state_dict(adv.state_dict())
    a3, _ = fresh(batch())
    assert a3[:, 0].tolist() == pytest.approx([2.0 - 2 / 3, -2 / 3])


def test_f_dpg_presets():
    for name, div in [("f_dpg_kl", "kl"), ("f_dpg_rkl", "rkl"), ("f_dpg_tv", "tv"), ("f_dpg_js", "js")]:
        algo = get_algorithm(name)
        assert algo.advantage.divergence == div and algo.aggregate.part_name == "seq_mean_token_sum"
        assert algo.surrogate.part_name == "policy_gradient" and algo.needs_reference
    assert get_algorithm("f_dpg_rkl").advantage.target == "exp_reward"
