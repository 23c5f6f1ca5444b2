"""Environment tokens never get gradient, under every preset, and the model reads them when it scores the
tokens that follow (multi-turn rows as ``RolloutBatch``es: completion_mask = loss mask, context_mask =
attention)."""

from __future__ import annotations

import copy

import pytest
import torch

from unipo.algorithms import get_algorithm, list_algorithms
from unipo.batch import RolloutBatch
from unipo.envs import Calculator, EnvRollout, EpisodeLimits, ToolEpisode
from unipo.envs.scripted import ScriptedEngine
from unipo.models import build_tiny_model, load_model
from unipo.rollout.base import SamplingParams
from unipo.train import update as update_module
from unipo.train.logprobs import completion_logprobs
from unipo.train.update import UpdateSettings, update_policy

calculator_script = Calculator.oracle

NAMES = sorted(a.name for a in list_algorithms())


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("mask") / "m"
    build_tiny_model(out, arch="llama", hidden_size=32, num_layers=1, num_heads=4, seed=3)
    return load_model(out, dtype="float32")


def episode_batch(tok, varied: bool = False, one_group: bool = False) -> RolloutBatch:
    """Two prompts × 4 episodes of the calculator; every other episode gives a wrong final answer
    (``varied``: rewards drawn in [0, 1) instead; ``one_group``: the 8 rows as one group), so that every
    estimator has a nonzero advantage on one of them."""
    count = {"n": 0}

    def script(ctx: str) -> str:
        out = calculator_script(ctx)
        if out.endswith("</s>"):
            count["n"] += 1
            return out if count["n"] % 2 else "7</s>"
        return out

    examples = [Calculator.problem(37, 48, 15), Calculator.problem(21, 13, 4)]
    prompts = [tok(ex["question"], add_special_tokens=False)["input_ids"] for ex in examples]
    gen = EnvRollout(lambda: ToolEpisode(Calculator()), tok, EpisodeLimits(4, 64))(
        ScriptedEngine(tok, script), examples, prompts, 4, SamplingParams(max_new_tokens=12)
    )
    n = gen.completion_ids.shape[0]
    g = torch.Generator().manual_seed(0)
    mask = gen.completion_mask
    noise = 0.3 * torch.randn(mask.shape, generator=g) * mask
    meta = [
        m
        | {
            "turn_terms": {"igpo": [0.1 * (k + 1) for k in range(m["turns"])]},
            "completion": c,
            "prompt": "q",
            "answer": examples[i // 4]["answer"],
            "remax_baseline": 0.5,
        }
        for i, (m, c) in enumerate(zip(gen.row_metadata, gen.completions))
    ]  # as collect() stores them
    return RolloutBatch(
        prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask, completion_ids=gen.completion_ids,
        completion_mask=mask, context_mask=gen.context_mask, turn_index=gen.turn_index,
        group_ids=torch.zeros(8, dtype=torch.long) if one_group else torch.arange(2).repeat_interleave(4),
        truncated=gen.truncated,
        rewards=torch.tensor(gen.columns["env_reward"]) if not varied else torch.rand(n, generator=g),
        metadata=meta, old_stats={"sum_pi_squared": torch.rand(mask.shape, generator=g) * mask},
        old_logprobs=(-1.5 + noise) * mask, ref_logprobs=(-1.6 + 0.5 * noise) * mask,
        entropies=(1.0 + torch.rand(mask.shape, generator=g)) * mask,
        values=torch.randn(n, mask.shape[1]) * mask,
        token_rewards=0.1 * torch.randn(mask.shape, generator=g) * mask,  # RTO's, as its prepare hook fills
        rollout_logprobs=gen.logprobs, weight_version=gen.weight_version,
    )  # fmt: skip


def test_the_batch_has_environment_tokens_inside_rows(model_and_tok):
    batch = episode_batch(model_and_tok[1])
    inside = (batch.context_mask.bool() & ~batch.completion_mask.bool()).sum(1)  # env tokens per row
    # "=1776\n" "=1791\n" (6 + 6 tokens) for 37*48+15, "=273\n" "=277\n" (5 + 5) for 21*13+4
    assert inside.tolist() == [12] * 4 + [10] * 4
    assert batch.rewards.tolist() == [1.0, 0.0] * 4
    assert bool((batch.turn_index[~batch.completion_mask.bool()] == -1).all())


@pytest.mark.parametrize("name", NAMES)
def test_no_environment_token_gets_gradient(model_and_tok, monkeypatch, name: str):
    model, tok = model_and_tok
    algo = copy.deepcopy(get_algorithm(name))
    if algo.any_part("needs_demonstrations"):
        pytest.skip("needs demonstration rows; not an environment rollout")
    for varied, one in ((True, False), (False, False), (True, True)):  # set advantages need groups > sets
        batch = episode_batch(tok, varied=varied, one_group=one)
        if algo.old_sequence_stats:  # per-row π_old features (G2RL), as the trainer's π_old pass fills them
            g = torch.Generator().manual_seed(0)
            feats = {k: torch.randn(batch.size, 4, generator=g) for k in algo.old_sequence_stats}  # [B, K]
            batch = batch.replace(old_sequence_stats=feats)
        for sel in copy.deepcopy(algo).selections:
            batch, _ = sel(batch)
        adv, _ = algo.advantage(batch)
        if bool((adv != 0).any()):
            break
    batch = batch.replace(advantages=adv)
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = update_module.completion_logprobs_with_stats

    def recording(m, ids, attn, cmask, **kw):
        logp, ent, stats = original(m, ids, attn, cmask, **kw)
        if logp.requires_grad:
            logp.register_hook(
                lambda g, mask=cmask.detach().clone(): grads.append((g.detach().clone(), mask))  # noqa: B008
            )
        return logp, ent, stats

    monkeypatch.setattr(update_module, "completion_logprobs_with_stats", recording)
    settings = UpdateSettings(
        epochs=1, minibatches=1, micro_batch_size=4, max_grad_norm=1e9, temperature=1.0, max_len=64,
        shared_prompt=True, length_grouped=True,
    )  # fmt: skip
    update_policy(copy.deepcopy(model), torch.optim.SGD(model.parameters(), lr=0.0), None, algo, batch,
                  settings, step=0, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert grads, f"{name}: no gradient reached the log-probs"
    env_grad = torch.cat([g[mask == 0] for g, mask in grads])
    assert env_grad.numel() > 0
    assert bool((env_grad == 0).all()), f"{name}: environment tokens / padding received gradient"
    model_grad = torch.cat([g[mask == 1] for g, mask in grads])
    assert bool((model_grad != 0).any()), (
        f"{name}: no model token received gradient (the check would be empty)"
    )


def test_model_tokens_after_an_observation_are_scored_on_it(model_and_tok):
    """The update's log-probs of every model token equal a plain forward over prompt + whole trajectory:
    the observation tokens are attended to although they carry no loss."""
    model, tok = model_and_tok
    batch = episode_batch(tok).select([0])
    logp, _ = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    full = torch.cat([batch.prompt_ids, batch.completion_ids], 1)[batch.attention_mask.bool()][None]
    with torch.no_grad():
        logits = model(full).logits.log_softmax(-1)[0]  # [L, V]
    p = int(batch.prompt_mask.sum())
    targets = full[0, p:]
    plain = logits[p - 1 : -1].gather(1, targets[:, None])[:, 0]  # [T]
    loss_tok = batch.completion_mask[0][: targets.numel()].bool()
    assert torch.allclose(logp[0][: targets.numel()][loss_tok], plain[loss_tok], atol=1e-5)
    # without the context mask the model would not see the observations, and the log-probs would differ
    blind = torch.cat([batch.prompt_mask, batch.completion_mask.long()], 1)
    logp_blind, _ = completion_logprobs(model, batch.input_ids, blind, batch.completion_mask)
    after = loss_tok & (torch.arange(targets.numel()) > 8)  # model tokens after the first observation
    assert not torch.allclose(logp_blind[0][: targets.numel()][after], plain[after], atol=1e-3)
