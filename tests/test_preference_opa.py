"""OPA-DPO (preference/opa.py): the verifier-guided edit, the corrected pairs of a round, the alignment
(SFT) stage before DPO with π_ref reset to the aligned policy, and the model corrector."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from unipo.preference.batch import PreferenceExample
from unipo.preference.opa import OPAPairing, alignment_set, sft_loss, verifier_edit


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("so <answer> 5 </answer>.", "so <answer>7</answer>."),  # the inside of the last answer tag
        ("<answer>1</answer> then <answer>5</answer>", "<answer>1</answer> then <answer>7</answer>"),
        ("x \\boxed{\\frac{1}{2}} y", "x \\boxed{7} y"),  # nested braces
        ("5", "7"),  # no tag: the whole completion is its answer (extract_answer), so it is replaced
    ],
)
def test_verifier_edit(completion, expected):
    assert verifier_edit(completion, "7") == expected


def exact(examples, prompts, completions, lengths):  # the verifier: exact match with the answer
    return [float(c.strip() == ex["answer"]) for ex, c in zip(examples, completions)]


def test_build_pairs_each_sample_with_its_correction(tiny):
    _, tok = tiny
    examples = [{"question": "3+4=", "answer": "7"}]
    ids = [[5, 6]]
    groups = [[(tok(c)["input_ids"], s, False, {"completion": c})
               for c, s in [("5", 0.0), ("7", 1.0), ("<answer>2</answer>", 0.0)]]]  # fmt: skip
    out, m = OPAPairing().build(examples, ids, ["3+4="], groups, score=exact, tokenizer=tok, device="cpu")
    eos = [tok.eos_token_id]
    # "5" → corrected "7" (= the ground truth "7": one pair, kept once); "7" is already right: no pair;
    # "<answer>2</answer>" → "<answer>7</answer>" scores 0 under exact match: only the ground-truth pair
    text = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    got = [(text(e.responses[0]), text(e.responses[1]), e.metadata["chosen_kind"]) for e in out]
    assert got == [("7", "5", "corrected"), ("7", "<answer>2</answer>", "ground_truth")]
    assert all(e.scores == [1.0, 0.0] and e.responses[0][-1:] == eos for e in out)
    assert m["opa/corrected_pairs"] == 1 and m["opa/ground_truth_pairs"] == 1
    assert m["opa/correction_better_frac"] == pytest.approx(1 / 3)
    assert m["opa/unpaired_frac"] == pytest.approx(1 / 3)
    no_gt, _ = OPAPairing(ground_truth_pair=False).build(examples, ids, ["3+4="], groups, score=exact,
                                                         tokenizer=tok, device="cpu")  # fmt: skip
    assert len(no_gt) == 1


def test_alignment_set_and_sft_loss(tiny):
    model, _ = tiny
    a = PreferenceExample(prompt_ids=[5, 6], responses=[[7, 8], [9]], scores=[1.0, 0.0])
    b = PreferenceExample(prompt_ids=[5, 6], responses=[[7, 8], [10]], scores=[1.0, 0.0])  # same preferred
    c = PreferenceExample(prompt_ids=[5], responses=[[7, 8], [9]], scores=[1.0, 0.0])
    assert alignment_set([a, b, c]) == [a, c]
    nll, m = sft_loss(model, [a, c], pad_id=0, device="cpu")
    # independently: −mean_t log π(y_t | x, y_<t) of the preferred response, from the full softmax
    for ex, got in zip([a, c], nll.tolist()):
        seq = torch.tensor([ex.prompt_ids + ex.responses[0]])
        with torch.no_grad():
            logp = model(seq).logits.log_softmax(-1)[0, :-1].gather(1, seq[0, 1:, None])[:, 0]
        assert got == pytest.approx(-float(logp[-len(ex.responses[0]) :].mean()), rel=1e-4)
    assert m["opa/sft_nll"].item() == pytest.approx(float(nll.detach().mean()))


def test_opa_pairing_validation():
    with pytest.raises(ValueError, match="corrector_path"):
        OPAPairing(corrector="model")
    with pytest.raises(ValueError, match="'verifier' or 'model'"):
        OPAPairing(corrector="gpt4v")
    assert OPAPairing().iterative_reference_update
    assert not OPAPairing(alignment_epochs=0).iterative_reference_update


def load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "preference" / "dpo_demo.py"
    spec = importlib.util.spec_from_file_location("dpo_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "model.device=cpu", "task.train_size=20", "task.eval_size=0", "pairs.prompts_per_round=2",
    "pairs.group_size=4", "pairs.sampling.max_new_tokens=4", "optim.lr=1e-3", "optim.micro_batch_size=8",
    "optim.batch_size=8", "train.rounds=1", "train.save_final=false",
]  # fmt: skip


@pytest.mark.slow
def test_round_aligns_then_trains_dpo_against_the_aligned_policy(tiny_model_dir, tmp_path):
    from unipo.preference.trainer import PreferenceTrainer

    cfg = load_example().demo_config(tiny_model_dir, tmp_path / "run", "opa_dpo", True, *TINY,
                                     "loss.pairing={alignment_epochs: 1}")  # fmt: skip
    t = PreferenceTrainer(cfg)
    initial = [p.detach().clone() for p in t.model.parameters()]
    snap: dict[str, list[torch.Tensor]] = {}
    step = t.optimizer_step

    def spy(examples, sft=False):  # the weights when the first preference step starts
        if not sft and "pref" not in snap:
            snap["pref"] = [p.detach().clone() for p in t.model.parameters()]
            snap["ref"] = [p.detach().clone() for p in t.ref_model.parameters()]
        return step(examples, sft)

    t.optimizer_step = spy
    t.train()
    assert snap, "no preference step ran (no pair was built)"
    # π_ref was reset to the policy after the alignment (SFT) stage, which had moved it
    assert all(torch.equal(a, b) for a, b in zip(snap["pref"], snap["ref"]))
    assert any(not torch.equal(a, b) for a, b in zip(initial, snap["ref"]))
    with pytest.raises(ValueError, match="builds its pairs from this run's own samples"):
        data = tmp_path / "p.jsonl"
        data.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n')
        PreferenceTrainer(load_example().demo_config(tiny_model_dir, tmp_path / "off", "opa_dpo", True, *TINY,
                                                     f"data.path={data}"))  # fmt: skip


@pytest.mark.slow
def test_model_corrector_runs_and_keeps_only_improvements(tiny, tiny_model_dir):
    _, tok = tiny
    examples = [{"question": "3+4=", "answer": "7"}]
    groups = [[(tok("5")["input_ids"], 0.0, False, {"completion": "5"})]]
    pairing = OPAPairing(corrector="model", corrector_path=str(tiny_model_dir), max_new_tokens=3,
                         ground_truth_pair=False)  # fmt: skip
    out, m = pairing.build(examples, [[5, 6]], ["3+4="], groups, score=exact, tokenizer=tok, device="cpu")
    assert all(e.scores[0] > e.scores[1] for e in out)  # a correction enters only if the verifier prefers it
    assert m["opa/corrected_pairs"] == len(out)
