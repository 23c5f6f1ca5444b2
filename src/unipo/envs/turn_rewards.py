"""Per-turn reward terms computed at rollout time: IGPO's information gain.

IGPO (Wang et al., "Information Gain-based Policy Optimization", arXiv 2510.14967) rewards a turn by
how much it raised the policy's probability of the ground-truth answer:

    P_k = exp( mean_{y ∈ answer} log π_θ(y | prompt, trajectory up to the end of turn k's observation) )
    r_k = P_k − P_{k−1}     for every turn k followed by an observation (P_{−1}: the prompt alone)

and the last turn gets no information gain (the outcome reward is its reward; the ``igpo`` advantage
puts ``batch.rewards`` there). Source: GuoqingWang1/IGPO@bff163b scrl/llm_agent/generation.py
(``run_llm_loop``: ``cur_prob − gt_probs[i]`` from the mean log-prob of the ground-truth tokens appended
as a pseudo response; ``info_gain.py:compute_score`` puts the gains on each turn's last token and the
F1 on the final one). Deviations: the ground truth is scored as the environment's final-answer text
(``template``, default "{answer}", then EOS) appended directly to the context, where the authors append
it inside ``<answer>…</answer>`` after a ``<think>`` prefix of a chat turn; π_θ is the policy that
sampled (the trainer's weights at collect time), as the authors' ``compute_log_prob`` on the actor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from unipo.envs.rollout import Trajectory


class PolicyScorer:
    """Mean log-prob of target token ids after context token ids under the trainer's policy, no grad."""

    def __init__(self, model: nn.Module, device: torch.device | str, micro_batch: int = 64,
                 temperature: float = 1.0) -> None:  # fmt: skip
        self.model, self.device, self.micro_batch, self.temperature = model, device, micro_batch, temperature

    def mean_logprob(self, contexts: list[list[int]], targets: list[list[int]], pad_id: int) -> list[float]:
        from unipo.rollout.hf import left_pad
        from unipo.train.nograd import batched_logprobs
        from unipo.train.sharding import full_params

        if not contexts:
            return []
        p_ids, p_mask = left_pad(contexts, pad_id, "cpu")  # [N, P]
        width = max(len(t) for t in targets)
        t_ids = torch.full((len(targets), width), pad_id, dtype=torch.long)
        t_mask = torch.zeros(len(targets), width)
        for i, t in enumerate(targets):
            t_ids[i, : len(t)], t_mask[i, : len(t)] = torch.tensor(t), 1.0
        ids, attn = torch.cat([p_ids, t_ids], 1), torch.cat([p_mask, t_mask.long()], 1)
        with full_params(self.model):
            lp, _ = batched_logprobs(
                self.model, ids.to(self.device), attn.to(self.device), t_mask.to(self.device),
                micro_batch=self.micro_batch, temperature=self.temperature,
            )  # fmt: skip
        lp = lp.cpu()  # [N, W]
        return [float((lp[i] * t_mask[i]).sum() / t_mask[i].sum().clamp(min=1)) for i in range(len(targets))]


class InformationGain:
    """``r_k = P_k − P_{k−1}`` (see the module docstring); 0 for the last turn."""

    name = "igpo"

    def __init__(self, scorer: PolicyScorer | None, tokenizer: Any, answer_column: str = "answer",
                 template: str = "{answer}") -> None:  # fmt: skip
        if scorer is None:
            raise ValueError("the igpo turn reward scores with the policy: build it with a PolicyScorer")
        self.scorer, self.tokenizer, self.column, self.template = scorer, tokenizer, answer_column, template

    def target(self, example: dict[str, Any]) -> list[int]:
        if self.column not in example:
            raise ValueError(
                f"the igpo turn reward reads the example column {self.column!r}, which is missing"
            )
        text = self.template.format(answer=example[self.column])
        eos = self.tokenizer.eos_token_id
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + (
            [eos] if eos is not None else []
        )

    def __call__(self, trajs: list[Trajectory], examples: list[dict[str, Any]]) -> list[list[float]]:
        contexts, targets, owners = [], [], []
        for i, (traj, ex) in enumerate(zip(trajs, examples, strict=True)):
            target = self.target(ex)
            for k in range(traj.num_turns):  # P_{k−1} for k = 0..K−1: the context before turn k
                contexts.append(traj.context_before(k))
                targets.append(target)
                owners.append(i)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        probs = [math.exp(v) for v in self.scorer.mean_logprob(contexts, targets, pad)]
        before: list[list[float]] = [[] for _ in trajs]
        for i, p in zip(owners, probs, strict=True):
            before[i].append(p)
        out = []
        for traj, p in zip(trajs, before, strict=True):
            k = traj.num_turns  # gain of turn j: P before turn j+1 − P before turn j; the last turn: 0
            out.append([p[j + 1] - p[j] for j in range(k - 1)] + [0.0] * min(k, 1))
        return out


TURN_REWARDS = {"igpo": InformationGain}


def make_turn_reward(name: str, scorer: PolicyScorer | None, tokenizer: Any, **params: Any) -> Any:
    if name not in TURN_REWARDS:
        raise ValueError(f"env.turn_rewards: unknown {name!r}; allowed: {', '.join(sorted(TURN_REWARDS))}")
    try:
        return TURN_REWARDS[name](scorer, tokenizer, **params)
    except TypeError as e:
        raise ValueError(f"env.turn_rewards {name!r}: bad params: {e}") from None
