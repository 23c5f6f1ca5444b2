"""ETMR (ETTRL's entropy-fork tree rollout, unipo.rollout.tree): fork points and the tree's rows on a
scripted engine whose entropies are known, then on the tiny model, where every branch must be a
real sample of the engine continuing the root's prefix with the same sampling settings."""

from __future__ import annotations

import pytest
import torch

from unipo.config import AlgorithmConfig, ConfigError, build_algorithm
from unipo.rollout.base import Generation, SamplingParams
from unipo.rollout.hf import HFEngine
from unipo.rollout.tree import EntropyForkTree, fork_positions
from unipo.train.logprobs import completion_logprobs

PAD = 0


def test_fork_positions_by_hand():
    h = torch.tensor([0.1, 0.9, 0.3, 0.9, 0.5, 7.0])  # position 5 is padding (length 5)
    assert fork_positions(h, 5, 3) == [1, 3, 4]  # the three highest among the first 5, position order
    assert fork_positions(h, 5, 1) == [1]  # a tie (0.9 at 1 and 3) goes to the earlier position
    assert fork_positions(h, 2, 3) == [0, 1, 1]  # shorter than N: again in entropy order (1, 0, 1)
    assert fork_positions(h, 0, 2) == [0, 0]  # an empty root forks at the prompt


class Scripted:
    """An engine whose roots and branches are fixed: root r of prompt p is [10p + r + 1]·L with the
    entropies given; the k-th branch call returns continuations [100 + 10·call + j, 2(EOS)]."""

    pad_id = PAD

    def __init__(self, root_entropies: list[list[float]]) -> None:
        self.root_entropies = root_entropies
        self.calls: list[tuple[list[list[int]], int, SamplingParams]] = []

        class Tok:
            def batch_decode(self, ids, skip_special_tokens=True):
                return [" ".join(str(int(i)) for i in row if int(i) != PAD) for row in ids]

        self.tokenizer = Tok()

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        call = len(self.calls)
        self.calls.append((prompts, n, params))
        rows, ents = [], []
        for p_i, _ in enumerate(prompts):
            for j in range(n):
                if call == 0:  # roots
                    h = self.root_entropies[p_i * n + j]
                    rows.append([10 * p_i + j + 1] * len(h))
                    ents.append(h)
                else:
                    rows.append([100 + 10 * call + j, 2])
                    ents.append([0.25, 0.5])
        t = max(len(r) for r in rows)
        ids = torch.tensor([r + [PAD] * (t - len(r)) for r in rows])
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (t - len(r)) for r in rows])
        b = len(rows)
        return Generation(
            torch.ones(b, 1, dtype=torch.long), torch.ones(b, 1, dtype=torch.long), ids, mask,
            torch.tensor([call == 0] * b), [""] * b,
            logprobs=-ids.float() / 1000 * mask,  # log μ = −id/1000: traceable through the assembly
            weight_version=torch.full((b,), 3),
            entropies=torch.tensor([e + [0.0] * (t - len(e)) for e in ents]),
        )  # fmt: skip


def test_tree_rows_on_a_scripted_engine():
    # one prompt, M = 2 trees of 1 + B·N = 1 + 2·2 = 5 leaves (G = 10); max_new_tokens 6
    # root 0 (tokens 1 1 1 1): H = (0.1, 0.8, 0.2, 0.9) → forks at 1 and 3
    # root 1 (tokens 2 2 2):   H = (0.7, 0.1, 0.3)      → forks at 0 and 2
    engine = Scripted([[0.1, 0.8, 0.2, 0.9], [0.7, 0.1, 0.3]])
    params = SamplingParams(max_new_tokens=6, min_new_tokens=2, temperature=0.7, top_p=0.9, stop=["#"])
    gen = EntropyForkTree(forks=2, branches=2).generate(engine, [[5, 6]], 10, params)
    # calls: the roots (2 samples, with entropies), then one call per fork depth t = 0, 1, 2, 3
    prompts0, n0, p0 = engine.calls[0]
    assert (prompts0, n0, p0.return_entropy) == ([[5, 6]], 2, True)
    depths = {1: [[5, 6, 1]], 3: [[5, 6, 1, 1, 1]], 0: [[5, 6]], 2: [[5, 6, 2, 2]]}
    assert [c[0] for c in engine.calls[1:]] == [depths[t] for t in (0, 1, 2, 3)]  # prompt + root[:t]
    for (_, n, p), t in zip(engine.calls[1:], (0, 1, 2, 3), strict=True):
        assert n == 2 and p.max_new_tokens == 6 - t and p.min_new_tokens == max(2 - t, 0)
        assert (p.temperature, p.top_p, p.stop, p.greedy) == (0.7, 0.9, ["#"], False)  # same settings
    # rows: tree 0 = root, 2 branches at t=1 (call 2), 2 at t=3 (call 4);
    # tree 1 = root, 2 at t=0 (call 1), 2 at t=2 (call 3)
    want = [
        [1, 1, 1, 1], [1, 120, 2], [1, 121, 2], [1, 1, 1, 140, 2], [1, 1, 1, 141, 2],
        [2, 2, 2], [110, 2], [111, 2], [2, 2, 130, 2], [2, 2, 131, 2],
    ]  # fmt: skip
    assert _rows(gen) == want
    assert gen.shared_prefix.tolist() == [0, 1, 1, 3, 3, 0, 0, 0, 2, 2]
    assert [m["etmr_tree"] for m in gen.row_metadata] == [0] * 5 + [1] * 5
    assert [m["etmr_fork_at"] for m in gen.row_metadata] == [-1, 1, 1, 3, 3, -1, 0, 0, 2, 2]
    assert gen.row_metadata[3]["etmr_fork_entropy"] == pytest.approx(0.9)
    # log μ and entropies: the root's for the shared prefix, the branch's after it
    assert gen.logprobs[3, :5].tolist() == pytest.approx([-0.001, -0.001, -0.001, -0.140, -0.002])
    assert gen.entropies[3, :5].tolist() == pytest.approx([0.1, 0.8, 0.2, 0.25, 0.5])
    # roots keep the root call's flags (truncated here), branches the branch call's
    assert gen.truncated.tolist() == [True, False, False, False, False] * 2
    assert gen.weight_version.tolist() == [3] * 10 and gen.prompt_ids.shape == (10, 2)
    assert gen.completions[1] == "1 120 2"


def test_group_size_and_engine_are_checked():
    with pytest.raises(ValueError, match="multiple of the 5 leaves"):
        EntropyForkTree(forks=2, branches=2).generate(Scripted([[1.0]]), [[5]], 4, SamplingParams())
    with pytest.raises(ValueError, match="forks"):
        EntropyForkTree(forks=0)
    with pytest.raises(ConfigError, match=r"'ettrl'.*rollout\.engine=vllm"):  # names the preset and engine
        build_algorithm(AlgorithmConfig(name="ettrl"), 7, "vllm")
    with pytest.raises(ConfigError, match="group_size=8 is not a multiple of the 7"):
        build_algorithm(AlgorithmConfig(name="ettrl"), 8, "hf")
    small = AlgorithmConfig(name="ettrl", params={"etmr": {"forks": 1, "branches": 3}})
    algo = build_algorithm(small, 4, "hf")
    assert algo.rollout == EntropyForkTree(forks=1, branches=3)

    class NoEntropy(Scripted):  # an engine that cannot return entropies (vLLM's case)
        def generate(self, prompts, n, params):
            return Generation(**{**super().generate(prompts, n, params).__dict__, "entropies": None})

    with pytest.raises(ValueError, match="NoEntropy returned no per-token entropies"):
        EntropyForkTree(forks=1, branches=1).generate(NoEntropy([[1.0], [1.0]]), [[5]], 2, SamplingParams())


def _prompts(tok):
    return [tok(text, add_special_tokens=False)["input_ids"] for text in ("12+7=", "3+4=")]


def _rows(gen: Generation) -> list[list[int]]:  # each row's valid completion tokens
    return [row[m.bool()].tolist() for row, m in zip(gen.completion_ids, gen.completion_mask, strict=True)]


def test_tree_on_the_tiny_model_is_made_of_real_samples(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    part = EntropyForkTree(forks=2, branches=2)
    params = SamplingParams(max_new_tokens=6, temperature=0.9)
    prompts = _prompts(tok)
    torch.manual_seed(5)
    gen = part.generate(engine, prompts, 5, params)
    # 1. the same seed replays it as plain engine calls: the roots, then each fork depth's branches
    torch.manual_seed(5)
    roots = engine.generate(prompts, 1, params.model_copy(update={"return_entropy": True}))
    lengths = roots.completion_mask.sum(1).long().tolist()
    forks = [fork_positions(roots.entropies[r], lengths[r], 2) for r in range(2)]
    depth: dict[int, list[tuple[int, int]]] = {}
    for r in range(2):
        for k, t in enumerate(forks[r]):
            depth.setdefault(t, []).append((r, k))
    expect: dict[tuple[int, int], list[list[int]]] = {}
    for t in sorted(depth):
        budget = params.model_copy(update={"max_new_tokens": 6 - t, "return_entropy": True})
        forked = [prompts[r] + roots.completion_ids[r, :t].tolist() for r, _ in depth[t]]
        branch = _rows(engine.generate(forked, 2, budget))
        for i, key in enumerate(depth[t]):
            expect[key] = branch[2 * i : 2 * i + 2]
    rows = _rows(gen)
    for r in range(2):
        root = roots.completion_ids[r][roots.completion_mask[r].bool()].tolist()
        assert rows[5 * r] == root
        for k, t in enumerate(forks[r]):
            assert gen.shared_prefix[5 * r + 1 + 2 * k].item() == t
            for j in (0, 1):
                assert rows[5 * r + 1 + 2 * k + j] == root[:t] + expect[(r, k)][j]
    # 2. the recorded entropies and log μ are the model's at temperature 0.9 on the assembled rows
    ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
    attn = torch.cat([gen.prompt_mask, gen.completion_mask.long()], 1)
    lp, ent = completion_logprobs(model, ids, attn, gen.completion_mask, temperature=0.9)
    torch.testing.assert_close(gen.logprobs, lp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gen.entropies, ent, atol=1e-4, rtol=1e-4)
    # 3. the fork points are the roots' highest-entropy positions
    for r in range(2):
        h = ent[5 * r, : lengths[r]]
        top = sorted(torch.sort(-h, stable=True).indices[: min(2, lengths[r])].tolist())
        assert set(forks[r]) == set(top)


def test_greedy_branches_continue_as_the_root(tiny):
    # greedy decoding: a continuation of the root's own prefix is the root's own rest
    model, tok = tiny
    gen = EntropyForkTree(forks=2, branches=1).generate(
        HFEngine(model, tok), _prompts(tok), 3, SamplingParams(max_new_tokens=5, greedy=True)
    )
    for r in range(6):
        assert torch.equal(gen.completion_ids[r], gen.completion_ids[3 * (r // 3)])


@pytest.mark.slow
def test_ettrl_trains_without_labels_on_trees(tiny_model_dir, tmp_path):
    import json

    from unipo.config import load_config
    from unipo.train.trainer import Trainer

    seen: list[set[str]] = []

    def spy(prompts, completions, **columns):
        seen.append(set(columns))
        return [0.0] * len(completions)

    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cpu", "algorithm.name=ettrl",
        "algorithm.params={etmr: {forks: 3, branches: 1}}", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=20",
        "task.eval_size=4", "task.eval_seed=1000000", "task.chat=false",  # no task.hide_labels: ettrl hides
        "rollout.prompts_per_step=2", "rollout.group_size=8", "rollout.sampling.max_new_tokens=4",
        "optim.micro_batch_size=8", "eval.samples=2", "eval.ks=[1,2]", "train.steps=1",
        f"train.output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    trainer = Trainer(cfg, extra_rewards=[("spy", spy, 0.0)])
    assert [name for name, _, _ in trainer.reward_set.rewards] == ["ttrl_vote", "spy"]  # no task verifier
    summary = trainer.train()
    assert seen and all(not ({"answer", "entry"} & cols) for cols in seen)  # no label reached a reward
    assert all(len(c) for c in seen)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "loss/total" in r)
    assert 0 < step["rollout/shared_prefix_frac"] < 1  # branches took over their roots' prefixes
    assert step["rollout/completions"] == 16.0  # 2 prompts × 2 trees × (1 + 1·3) leaves
    assert "after/accuracy" in summary  # evaluation still scores against the labels
