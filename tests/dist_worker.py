"""Worker of tests/test_distributed.py, run under torchrun with 2 processes (not a test module).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py \
        MODE MODEL_DIR OUT.json {rl|preference|weights} [DATA.jsonl]

For every registered preset it computes one optimizer step twice on the same fixed global batch:
once as one process on the whole batch (``Dist()``), once data-parallel under MODE (``ddp`` |
``fsdp2``, each rank holding its share), and rank 0 writes the largest relative differences of
the loss, of every gradient (gathered to full tensors) and of the parameters after an SGD step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from pathlib import Path

import torch

from unipo.algorithms import get_algorithm, list_algorithms
from unipo.batch import RolloutBatch
from unipo.models import load_model
from unipo.train.dist import Dist, init_dist
from unipo.train.nograd import batched_logprobs_with_stats
from unipo.train.sharding import shard_policy
from unipo.train.update import UpdateSettings, update_policy


class Capture(torch.optim.SGD):
    """SGD that keeps the (full) gradients it steps with."""

    def step(self, closure=None):  # type: ignore[override]
        self.grads = [
            (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
            for group in self.param_groups
            for p in group["params"]
        ]
        return super().step(closure)


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (a.abs().max() + 1e-12))


def norm_ratio(dist_grads: list[torch.Tensor], one_grads: list[torch.Tensor]) -> float:
    """|g_dist| / |g_one| (1 when both are 0, e.g. an all-zero advantage): 2 if ranks summed."""
    a = torch.sqrt(sum((g.double() ** 2).sum() for g in dist_grads))
    b = torch.sqrt(sum((g.double() ** 2).sum() for g in one_grads))
    return 1.0 if float(a) == float(b) == 0.0 else float(a / b)


def fixed_batch(b_groups: int = 4, g: int = 4, p: int = 4, t: int = 6) -> RolloutBatch:
    gen = torch.Generator().manual_seed(0)
    b = b_groups * g
    prompt = torch.randint(3, 20, (b_groups, p), generator=gen).repeat_interleave(g, 0)
    lens = torch.randint(1, t + 1, (b,), generator=gen)
    return RolloutBatch(
        prompt_ids=prompt, prompt_mask=torch.ones(b, p, dtype=torch.long),
        completion_ids=torch.randint(3, 20, (b, t), generator=gen),
        completion_mask=(torch.arange(t)[None] < lens[:, None]).float(),
        group_ids=torch.arange(b_groups).repeat_interleave(g), truncated=lens == t,
        rewards=torch.randint(0, 2, (b,), generator=gen).float(),
        metadata=[{"completion": f"the answer is {i % 3}", "remax_baseline": 0.5} for i in range(b)],
    )  # fmt: skip


def rl_step(
    model_dir: str, name: str, d: Dist, settings: UpdateSettings, lora: bool = False
) -> tuple[dict, list, list]:
    from unipo.models import LoraSettings

    algo = copy.deepcopy(get_algorithm(name))
    torch.manual_seed(0)  # the LoRA adapters start the same in every process
    model, _ = load_model(model_dir, dtype="float32", lora=LoraSettings(r=4, alpha=8) if lora else None)
    if lora:  # peft starts B at 0: move it, so that A gets a gradient too
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    base = fixed_batch()
    with torch.no_grad():
        lp, ent, st = batched_logprobs_with_stats(
            model, base.input_ids, base.attention_mask, base.completion_mask, micro_batch=64,
            stats=algo.old_token_stats, sequence_stats=algo.old_sequence_stats,
        )  # fmt: skip
    seq = {k: st.pop(k) for k in algo.old_sequence_stats}  # [B, K] per-row features (G2RL)
    batch = base.replace(old_logprobs=lp, entropies=ent, ref_logprobs=lp - 0.1, old_stats=st,
                         values=torch.zeros_like(lp), token_rewards=0.01 * lp,
                         old_sequence_stats=seq)  # fmt: skip
    adv, _ = algo.advantage(batch)  # the whole batch, identical on every rank
    batch = batch.replace(advantages=adv)
    scorer = shard_policy(model, torch.device("cpu")) if d.sharded else model
    opt = Capture([p for p in model.parameters() if p.requires_grad], lr=0.1)
    metrics, _ = update_policy(
        scorer, opt, None, algo, batch, copy.copy(settings), step=0,
        generator=torch.Generator().manual_seed(3), old_stats=st or None, dist=d,
    )  # fmt: skip
    return metrics, opt.grads, [full(p) for p in model.parameters()]


def compare_rl(model_dir: str, d: Dist) -> dict:
    out = {}
    one = UpdateSettings(epochs=1, minibatches=1, micro_batch_size=64, max_grad_norm=1e9, temperature=1.0,
                         max_len=6)  # fmt: skip
    # several micro-batches, minibatches and epochs: per rank 2 rows a micro-batch (4 in one process)
    many = UpdateSettings(epochs=2, minibatches=2, micro_batch_size=2, max_grad_norm=1e9, temperature=1.0,
                          max_len=6)  # fmt: skip
    cases = [(a.name, one, False) for a in list_algorithms()]
    several = ("grpo", "dapo", "ppo", "hpt", "clip_cov", "lp_reg", "forking_tokens")
    cases += [(n, many, False) for n in several]
    cases += [(n, many, True) for n in ("grpo", "dapo")]  # LoRA (peft) adapters, replicated or sharded
    for name, settings, lora in cases:
        single = copy.copy(settings)
        single.micro_batch_size = settings.micro_batch_size * d.world  # the same global micro-batches
        m1, g1, p1 = rl_step(model_dir, name, Dist(), single, lora)
        m2, g2, p2 = rl_step(model_dir, name, d, settings, lora)
        key = name + ("/many" if settings is many else "") + ("/lora" if lora else "")
        out[key] = {
            "loss": abs(m1["loss/total"] - m2["loss/total"]) / max(1.0, abs(m1["loss/total"])),
            "grad": max(rel(a, b) for a, b in zip(g1, g2)),
            "param": max(rel(a, b) for a, b in zip(p1, p2)),
            "grad_norm_ratio": norm_ratio(g2, g1),
        }
    return out


@contextlib.contextmanager
def one_process_env():
    """Build a one-process objective inside a torchrun worker (its Dist sees WORLD_SIZE=1)."""
    saved = os.environ["WORLD_SIZE"]
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        os.environ["WORLD_SIZE"] = saved


def preference_step(
    model_dir: str, data: str, preset: str, parallel: str, out: Path, sft: bool = False
) -> tuple[dict, list]:
    from unipo.preference import load_preference_config
    from unipo.preference.trainer import PreferenceTrainer

    cfg = load_preference_config(None, [
        f"model.path={model_dir}", "model.device=cpu", f"data.path={data}", "data.chat=false",
        f"loss.preset={preset}", "optim.batch_size=8", "optim.micro_batch_size=2", "train.rounds=1",
        f"train.parallel={parallel}", f"train.output_dir={out}", "train.save_final=false",
    ])  # fmt: skip
    trainer = PreferenceTrainer(cfg)
    trainer.optimizer = Capture([p for p in trainer.model.parameters() if p.requires_grad], lr=0.1)
    examples = trainer._stages(trainer.offline)[0][:8]  # Curry-DPO: its first stage's pairs
    trainer._attach_reference(examples)
    torch.manual_seed(0)
    metrics = trainer.optimizer_step(examples, sft=sft)
    return metrics, trainer.optimizer.grads


def compare_preference(model_dir: str, data: str, d: Dist, root: Path) -> dict:
    from unipo.preference import list_presets

    out = {}
    for p in list_presets():
        # a preset that builds its own on-policy pairs (OPA-DPO) is DPO's loss after an SFT alignment
        # stage: its step on these offline pairs is DPO's, plus the SFT stage's step
        on_policy = p.any_part("needs_on_policy")
        name, sft = ("dpo", True) if on_policy else (p.name, False)
        with one_process_env():
            m1, g1 = preference_step(model_dir, data, name, "none", root / f"{p.name}-one-{d.rank}", sft)
        m2, g2 = preference_step(model_dir, data, name, d.mode, root / f"{p.name}-dist", sft)
        out[p.name] = {
            "loss": abs(m1["loss/total"] - m2["loss/total"]) / max(1.0, abs(m1["loss/total"])),
            "grad": max(rel(a, b) for a, b in zip(g1, g2)),
            "grad_norm_ratio": norm_ratio(g2, g1),
        }
    return out


def write_sharded_weights(model_dir: str, d: Dist, out_dir: Path) -> dict:
    """Under FSDP2 (``d.sharded``): the weights a vLLM sync writes (``policy_weights`` inside
    ``full_params``, then ``write_safetensors``) against the unsharded model's, largest difference."""
    from safetensors.torch import load_file

    from unipo.rollout.weights import policy_weights, write_safetensors
    from unipo.train.sharding import full_params

    model, _ = load_model(model_dir, dtype="float32")
    want = {k: v.detach().clone() for k, v in policy_weights(model, untie=True)}
    root = shard_policy(model, torch.device("cpu")) if d.sharded else model
    with full_params(root):
        written = write_safetensors(policy_weights(model, untie=True), out_dir / f"rank{d.rank}")
    got = load_file(str(written / "model.safetensors"))
    return {"names": sorted(got) == sorted(want), "diff": max(rel(got[k], want[k]) for k in want)}


def main() -> None:
    mode, model_dir, out_path, part = sys.argv[1:5]
    d = init_dist(mode)
    torch.manual_seed(0)
    if part == "rl":
        result = compare_rl(model_dir, d)
    elif part == "weights":
        result = write_sharded_weights(model_dir, d, Path(out_path).parent / "weights")
    else:
        result = compare_preference(model_dir, sys.argv[5], d, Path(out_path).parent / "runs")
    if d.is_main:
        Path(out_path).write_text(json.dumps(result, indent=1))
    d.barrier()


if __name__ == "__main__":
    main()
