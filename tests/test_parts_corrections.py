"""Rollout corrections (parts/corrections.py) on hand-worked ratios, and their effect on the loss.

The batch used throughout (B = 2 rows, T = 3, the last token of row 1 is padding), built so that
the token ratios ρ_t = π_old/μ are exact round numbers:

    row 0:  ρ = 3, 1, 0.5      ρ_seq = 1.5            ρ_geo = 1.5^(1/3) = 1.1447
    row 1:  ρ = 1.5, 1.8, —    ρ_seq = 2.7            ρ_geo = 2.7^(1/2) = 1.6432
"""

from __future__ import annotations

import math

import pytest
import torch

import unipo.functional as UF
from unipo.algorithms import get_algorithm
from unipo.batch import RolloutBatch
from unipo.config import build_algorithm, load_config
from unipo.parts.aggregate import SeqMeanTokenMean, TokenMean
from unipo.parts.corrections import MIS, TIS, Bypass, GeoRS, apply_corrections, mismatch_metrics

RHO = torch.tensor([[3.0, 1.0, 0.5], [1.5, 1.8, 1.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def batch() -> RolloutBatch:
    mu = torch.full((2, 3), -1.0)
    return RolloutBatch(
        prompt_ids=torch.zeros(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.long),
        completion_ids=torch.zeros(2, 3, dtype=torch.long), completion_mask=MASK.clone(),
        group_ids=torch.tensor([0, 0]), truncated=torch.zeros(2, dtype=torch.bool),
        old_logprobs=mu + RHO.log(), rollout_logprobs=mu,
    )  # fmt: skip


def close(a, b) -> None:
    a, b = (torch.as_tensor(v, dtype=torch.float32) for v in (a, b))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tis_token_caps_each_ratio():
    w, keep, m = TIS(level="token", cap=2.0)(batch())
    close(w, [[2.0, 1.0, 0.5], [1.5, 1.8, 0.0]])  # min(ρ_t, 2), 0 on padding
    assert keep.tolist() == MASK.bool().tolist()  # TIS rejects nothing
    close(m["rollout_corr/tis_clipped_frac"], 1 / 5)  # only ρ = 3 is capped, of 5 tokens
    close(m["rollout_corr/tis_weight_mean"], (2 + 1 + 0.5 + 1.5 + 1.8) / 5)


def test_tis_two_sided_and_sequence_level():
    w, _, m = TIS(level="token", cap=2.0, floor=0.8)(batch())
    close(w, [[2.0, 1.0, 0.8], [1.5, 1.8, 0.0]])  # TRL's clip_min: 0.5 → 0.8
    close(m["rollout_corr/tis_clipped_frac"], 2 / 5)
    w, _, m = TIS(level="sequence", cap=2.0)(batch())
    close(w, [[1.5, 1.5, 1.5], [2.0, 2.0, 0.0]])  # ρ_seq = 1.5 kept, 2.7 capped at 2 on every token
    close(m["rollout_corr/tis_clipped_frac"], 2 / 5)


def test_mis_token_rejects_out_of_range_tokens():
    w, keep, m = MIS(level="token", low=0.6, high=2.5)(batch())
    assert keep.tolist() == [[False, True, False], [True, True, False]]  # ρ = 3 and 0.5 leave
    close(w, [[0.0, 1.0, 0.0], [1.5, 1.8, 0.0]])  # kept tokens weighted by ρ
    close(m["rollout_corr/mis_masked_frac"], 2 / 5)
    close(m["rollout_corr/mis_seq_masked_frac"], 1 / 2)  # row 0 lost a token
    w, _, _ = MIS(level="token", low=0.6, high=2.5, weight="one")(batch())
    close(w, [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


def test_mis_sequence_rejects_whole_rows():
    w, keep, m = MIS(level="sequence", low=0.5, high=2.0)(batch())
    assert keep.tolist() == [[True, True, True], [False, False, False]]  # ρ_seq 1.5 in, 2.7 out
    close(w, [[1.5, 1.5, 1.5], [0.0, 0.0, 0.0]])
    close(m["rollout_corr/mis_masked_frac"], 2 / 5)
    close(m["rollout_corr/mis_seq_masked_frac"], 1 / 2)


def test_geo_rs_uses_the_length_normalized_ratio():
    w, keep, m = GeoRS(low=0.8, high=1.2)(batch())
    assert keep.tolist() == [[True, True, True], [False, False, False]]  # 1.1447 in, 1.6432 out
    close(w, MASK)
    close(m["rollout_corr/geo_rs_seq_masked_frac"], 1 / 2)
    close(m["rollout_corr/geo_ratio_min"], 1.5 ** (1 / 3))
    close(m["rollout_corr/geo_ratio_max"], 2.7**0.5)
    # the same rows under ρ_seq would be 1.5 and 2.7: a [0.8, 1.2] sequence filter would drop both
    _, keep_seq, _ = MIS(level="sequence", low=0.8, high=1.2)(batch())
    assert not keep_seq.any()


def test_composition_multiplies_weights_and_intersects_keeps():
    weights, loss_mask, m = apply_corrections((TIS(cap=2.0), GeoRS(low=0.8, high=1.2)), batch())
    close(weights, [[2.0, 1.0, 0.5], [1.5, 1.8, 0.0]])  # geo_rs's weights are 1
    close(loss_mask, [[1, 1, 1], [0, 0, 0]])
    close(m["rollout_corr/loss_token_frac"], 3 / 5)
    weights, loss_mask, _ = apply_corrections((TIS(cap=10.0),), batch())  # nothing capped, nothing rejected
    assert loss_mask is None
    close(weights, RHO * MASK)


def test_mismatch_metrics_hand_worked():
    m = mismatch_metrics(batch().old_logprobs, batch().rollout_logprobs, MASK)
    logs = torch.tensor([3.0, 1.0, 0.5, 1.5, 1.8]).log()  # log ρ of the 5 valid tokens
    close(m["rollout_corr/kl_k1"], float((-logs).mean()))
    close(m["rollout_corr/kl_k3"], float((logs.exp() - 1 - logs).mean()))
    close(m["rollout_corr/ratio_min"], 0.5)
    close(m["rollout_corr/ratio_max"], 3.0)
    close(m["rollout_corr/ratio_mean"], (3 + 1 + 0.5 + 1.5 + 1.8) / 5)


def test_rejected_tokens_leave_the_loss_and_its_denominators():
    # on-policy (π_θ = π_old: ratio 1), so each kept token's loss is −w·A, A = [[1, 2, 3], [4, 5, 6]]
    b = batch()
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    logp = b.old_logprobs.clone().requires_grad_(True)
    mis = MIS(level="token", low=0.6, high=2.5)
    algo = get_algorithm("dapo").replace(aggregate=TokenMean(), corrections=(mis,))
    loss, m = UF.compute_loss(algo, logp, MASK, old_logprobs=b.old_logprobs, advantages=adv,
                              rollout_logprobs=b.rollout_logprobs)  # fmt: skip
    # kept: (0,1) w 1 A 2, (1,0) w 1.5 A 4, (1,1) w 1.8 A 5; token mean over the 3 kept tokens
    close(loss, -(1 * 2 + 1.5 * 4 + 1.8 * 5) / 3)
    close(m["rollout_corr/mis_masked_frac"], 2 / 5)
    # sequence level with a per-row mean: row 1 rejected leaves the row count (1 row, not 2)
    seq = get_algorithm("dapo").replace(aggregate=SeqMeanTokenMean(), corrections=(MIS(level="sequence"),))
    loss, _ = UF.compute_loss(seq, logp, MASK, old_logprobs=b.old_logprobs, advantages=adv,
                              rollout_logprobs=b.rollout_logprobs)  # fmt: skip
    close(loss, -(1.5 * (1 + 2 + 3) / 3) / 1)


def test_bypass_takes_the_sampler_as_pi_old():
    # one token, A = 1, π_θ = 0.3, μ = 0.2: ratio π_θ/μ = 1.5, clipped by DAPO's ε_high = 0.28 to 1.28
    logp = torch.tensor([[math.log(0.3)]], requires_grad=True)
    mu = torch.tensor([[math.log(0.2)]])
    mask = torch.ones(1, 1)
    adv = torch.ones(1, 1)
    algo = get_algorithm("dapo").replace(aggregate=TokenMean(), corrections=(Bypass(),))
    loss, _ = UF.compute_loss(algo, logp, mask, advantages=adv, rollout_logprobs=mu)
    close(loss, -1.28)
    no_bypass = get_algorithm("dapo").replace(aggregate=TokenMean())
    plain, _ = UF.compute_loss(no_bypass, logp, mask, advantages=adv)
    close(plain, -1.0)  # without bypass π_old = sg(π_θ): ratio 1


def test_bypass_refuses_other_corrections():
    with pytest.raises(ValueError, match="would do nothing"):
        get_algorithm("grpo").replace(corrections=(Bypass(), TIS()))


def test_corrections_need_rollout_logprobs():
    algo = get_algorithm("dapo").replace(corrections=(TIS(),))
    with pytest.raises(ValueError, match="pass rollout_logprobs"):
        logp = torch.zeros(1, 2, requires_grad=True)
        UF.compute_loss(algo, logp, torch.ones(1, 2), advantages=torch.ones(1))
    b = batch().replace(rollout_logprobs=None)
    with pytest.raises(ValueError, match="sampler's log-probs"):
        TIS()(b)


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="tis cap"):
        TIS(cap=0)
    with pytest.raises(ValueError, match="mis needs 0 ≤ low < high"):
        MIS(low=2.0, high=1.0)
    with pytest.raises(ValueError, match="geo_rs needs"):
        GeoRS(low=1.1)


def test_config_adds_a_correction_to_any_preset():
    cfg = load_config(None, ["algorithm.name=grpo", "algorithm.corrections=[tis, geo_rs]",
                             "algorithm.params={tis: {level: sequence, cap: 3.0}}"])  # fmt: skip
    algo = build_algorithm(cfg.algorithm)
    assert [type(c) for c in algo.corrections] == [TIS, GeoRS]
    assert algo.corrections[0].level == "sequence" and algo.corrections[0].cap == 3.0
    assert algo.any_part("needs_old_logprobs")  # the trainer then runs the π_old pass
    with pytest.raises(ValueError, match="unknown correction part 'tiss'"):
        build_algorithm(load_config(None, ["algorithm.corrections=[tiss]"]).algorithm)
