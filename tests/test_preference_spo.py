"""SPO: RAKE key contents, key-content-removed variants, the preference-degree loss, a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unipo.models import build_tokenizer
from unipo.preference import get_preset, make_loss
from unipo.preference.batch import PreferenceExample
from unipo.preference.losses import PreferenceInputs
from unipo.preference.variants import (
    add_variants,
    key_contents,
    remove_key_contents,
    response_variants,
    variant_batch,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def ids(tok, text, eos=True):
    return tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])


# ------------------------------------------------------------------ RAKE key contents
def test_rake_scores_by_degree_over_frequency():
    # candidates (split at commas): "red fox" (2 words), "red fox jumps" (3), "fox" (1)
    # freq: red 2, fox 3, jumps 1;  deg: red 2+3 = 5, fox 2+3+1 = 6, jumps 3
    # word scores: red 2.5, fox 2, jumps 3  →  "red fox jumps" 7.5 > "red fox" 4.5 > "fox" 2
    text = "red fox, red fox jumps, fox"
    assert key_contents(text) == [("red fox jumps", [(9, 22)]), ("red fox", [(0, 7)]), ("fox", [(24, 27)])]
    assert remove_key_contents(text, 1) == "red fox, , fox"
    assert remove_key_contents(text, 2) == ", , fox"
    assert remove_key_contents(text, 3) == ", ,"
    assert remove_key_contents(text, 4) is None  # only 3 key contents
    assert remove_key_contents(text, 0) is None


def test_rake_stop_words_split_and_ties_keep_text_order():
    # stop words (is, the, of) split the sentence into three one-word phrases, each scored 1/1 = 1
    text = "Paris is the capital of France"
    assert [k for k, _ in key_contents(text)] == ["paris", "capital", "france"]
    assert remove_key_contents(text, 1) == "is the capital of France"
    assert remove_key_contents(text, 2) == "is the of France"  # the double space is collapsed
    # a later phrase with a higher score comes first: "energy" 1 < "solar panels convert light" 4·4
    first = next(k for k, _ in key_contents("energy, solar panels convert light"))
    assert first == "solar panels convert light"
    # every occurrence of a chosen phrase goes; numbers count as words
    assert remove_key_contents("cats, dogs, cats", 1) == ", dogs,"
    assert remove_key_contents("42", 1) == "" and remove_key_contents("-7", 1) == "-"


def test_response_variants_tokens_and_missing(tok):
    out = response_variants(ids(tok, "Paris is the capital of France"), tok, 4)
    assert [tok.decode(v) for v in out[:3]] == [
        "is the capital of France</s>", "is the of France</s>", "is the of</s>",
    ]  # fmt: skip
    assert out[3] == []  # a fourth key content does not exist
    assert response_variants(ids(tok, "42"), tok, 2) == [[tok.eos_token_id], []]  # all removed: EOS only
    assert response_variants(ids(tok, "42", eos=False), tok, 1) == [[]]  # nothing left, no EOS: missing


def test_variant_batch_layout(tok):
    a = PreferenceExample([5], [ids(tok, "x y, z"), ids(tok, "d")], [1.0, 0.0])
    b = PreferenceExample([6, 7], [ids(tok, "e, f"), ids(tok, "g, h")], [1.0, 0.0])
    add_variants([a, b], tok, 2)  # "x y, z": "x y" (score 2 + 2) goes first, then "z" (1)
    assert len(a.variants) == 2 and a.variants[1] == [[tok.eos_token_id], []]
    batch, exist = variant_batch([a, b], pad_id=0)
    assert batch.response_ids.shape[:2] == (2, 4) and exist.shape == (2, 2, 2)
    assert exist.tolist() == [[[True, True], [True, False]], [[True, True], [True, True]]]
    assert batch.valid.tolist() == exist.view(2, 4).tolist()  # response-major rows
    assert tok.decode(batch.response_ids[0, 0, : len(a.variants[0][0])].tolist()) == ", z</s>"
    with pytest.raises(ValueError, match="variants has 1 values for 2 responses"):
        PreferenceExample([5], [[1], [2]], [1.0, 0.0], variants=[[[1]]])


# ------------------------------------------------------------------ the loss
def spo_inputs(variant_logps, variant_valid):
    # one pair of one-token responses: ρ_w = −1 − (−2) = 1, ρ_l = −2 − (−1) = −1
    return PreferenceInputs(
        logprobs=torch.tensor([[[-1.0], [-2.0]]], requires_grad=True),
        mask=torch.ones(1, 2, 1),
        ref_logprobs=torch.tensor([[[-2.0], [-1.0]]]),
        variant_logps=variant_logps,
        variant_ref_logps=torch.zeros(1, 2, 2),
        variant_valid=torch.tensor(variant_valid),
    )


def test_spo_loss_hand_computed():
    # β = 0.5, λ = 0.1, V = 2; variant log-ratios: chosen [0, −2], rejected [2, missing]
    vl = torch.tensor([[[0.0, -2.0], [2.0, 1e6]]], requires_grad=True)  # 1e6 sits in the missing slot
    x = spo_inputs(vl, [[[True, True], [True, False]]])
    loss, m = make_loss("spo", beta=0.5, lam=0.1, removals=2)(x)
    # DPO: −log σ(0.5·(1 − (−1))) = log(1 + e^−1)
    align = math.log1p(math.exp(-1.0))
    # chosen scores s = 0.5·[1, 0, −2] = [0.5, 0, −1]; Plackett–Luce over intact ≻ −1 ≻ −2:
    deg_w = (math.log(math.exp(0.5) + 1 + math.exp(-1)) - 0.5) + (math.log(1 + math.exp(-1)) - 0.0)
    # rejected s = 0.5·[−1, 2] = [−0.5, 1] (the missing copy takes no part)
    deg_l = math.log(math.exp(-0.5) + math.exp(1.0)) + 0.5
    assert loss.item() == pytest.approx(align + 0.1 * (deg_w + deg_l), abs=1e-6)  # 0.575142
    assert m["spo/align_loss"] == pytest.approx(align, abs=1e-6)
    assert m["spo/degree_loss"] == pytest.approx(deg_w + deg_l, abs=1e-6)
    assert m["spo/degree_accuracy"] == pytest.approx(2 / 3)  # 0 < 0.5, −1 < 0.5, but 1 > −0.5
    assert m["spo/variants_per_response"] == pytest.approx(1.5) and m["pref/reward_accuracy"] == 1.0
    loss.backward()
    assert vl.grad[0, 1, 1] == 0.0 and vl.grad[0, 0, 0] != 0.0  # no gradient through a missing copy


def naive_degree_loss(s, valid):  # loops over responses and positions, independent of the vectorized form
    total = 0.0
    for scores, ok in zip(s, valid):
        kept = [float(v) for v, o in zip(scores, ok) if o]
        for i in range(len(kept)):
            total += math.log(sum(math.exp(u) for u in kept[i:])) - kept[i]
    return total


def test_spo_degree_loss_matches_naive_plackett_luce():
    g = torch.Generator().manual_seed(0)
    n, v, beta = 5, 3, 0.3
    vl = torch.randn(n, 2, v, generator=g)
    valid = torch.rand(n, 2, v, generator=g) > 0.3
    x = PreferenceInputs(
        logprobs=torch.randn(n, 2, 4, generator=g), mask=torch.ones(n, 2, 4),
        ref_logprobs=torch.randn(n, 2, 4, generator=g), variant_logps=vl,
        variant_ref_logps=torch.randn(n, 2, v, generator=g), variant_valid=valid,
    )  # fmt: skip
    loss = make_loss("spo", beta=beta, lam=1.0, removals=v)
    deg, _, _ = loss.degree_loss(x)
    intact = beta * x.log_ratios  # [n, 2]
    for i in range(n):
        scores = [
            [intact[i, k].item(), *(beta * (vl[i, k] - x.variant_ref_logps[i, k])).tolist()] for k in (0, 1)
        ]
        oks = [[True, *valid[i, k].tolist()] for k in (0, 1)]
        assert deg[i].item() == pytest.approx(naive_degree_loss(scores, oks), abs=1e-5)


def test_spo_alignment_composition_and_errors():
    x = spo_inputs(torch.zeros(1, 2, 2), [[[False, False], [False, False]]])
    # no copies: the loss is the alignment loss alone; IPO with β = 0.5: (1 − (−1) − 1/(2·0.5))² = 1
    ipo, m = make_loss("spo", beta=0.5, alignment="ipo")(x)
    assert ipo.item() == pytest.approx(1.0) and m["spo/degree_loss"] == 0.0
    ipo2, _ = make_loss("spo", beta=0.5, alignment="ipo", alignment_params={"beta": 0.25})(x)
    assert ipo2.item() == pytest.approx((2.0 - 2.0) ** 2)  # 1/(2·0.25) = 2
    with pytest.raises(ValueError, match=r"spo: alignment must be one of .*dpo.*; got 'lipo'"):
        make_loss("spo", alignment="lipo")
    with pytest.raises(ValueError, match="spo: removals must be >= 1"):
        make_loss("spo", removals=0)
    with pytest.raises(ValueError, match="spo: lam must be >= 0, got -1"):
        make_loss("spo", lam=-1)
    with pytest.raises(ValueError, match="bad alignment_params for 'dpo'"):
        make_loss("spo", alignment_params={"gamma": 1.0})
    plain = PreferenceInputs(logprobs=x.logprobs, mask=x.mask, ref_logprobs=x.ref_logprobs)
    with pytest.raises(ValueError, match=r"needs inputs\.variant_logps"):
        make_loss("spo")(plain)
    preset = get_preset("spo")
    assert "2409.17791" in preset.paper and preset.loss.response_variants == 2
    assert preset.with_params(loss={"removals": 3}).loss.response_variants == 3


@pytest.mark.slow
def test_offline_spo_run_builds_variants(tiny_model_dir, tmp_path):
    from unipo.preference.config import load_preference_config
    from unipo.preference.trainer import PreferenceTrainer

    data = tmp_path / "pairs.jsonl"
    # chosen "Paris, France" has 2 key contents, rejected "Rome" 1: with V = 2, 3 of 4 copies exist
    rows = [{"prompt": f"q{i}", "chosen": "Paris, France", "rejected": "Rome"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_preference_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cpu", f"data.path={data}", "data.chat=false",
        "loss.preset=spo", "optim.batch_size=4", "optim.micro_batch_size=2", "optim.lr=1e-3",
        "train.save_final=false", f"train.output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    trainer = PreferenceTrainer(cfg)
    assert trainer.variants == 2 and all(ex.variants is not None for ex in trainer.offline)
    summary = trainer.train()
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss/total" in r]
    assert summary["steps"] == 1 and steps[0]["spo/variants_per_response"] == pytest.approx(1.5)
    # at the first step π_θ = π_ref: every s = 0, so L_deg = log 3 + log 2 (chosen) + log 2 (rejected)
    assert steps[0]["spo/degree_loss"] == pytest.approx(math.log(3) + 2 * math.log(2), abs=1e-5)
