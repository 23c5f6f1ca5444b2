"""Length-grouped micro-batches vs row order on completions of varying length: the no-grad
log-prob pass (π_old / π_ref / re-score) and the update (forward + backward).

    python benchmarks/length_grouping.py             # 25m model, 16 prompts × 8, lengths up to 256
    python benchmarks/length_grouping.py --preset demo --reps 1 --passes nograd   # smoke run
    python benchmarks/length_grouping.py --show      # table of the JSON

One process, one model, the same batch for both modes; the modes alternate (A B A B ...) for
``--reps`` rounds after a warm-up round, and each reports its median. The batch is P prompts ×
G = 8 completions whose lengths are drawn per row from a log-normal distribution (median
``--median``, σ ``--sigma``) clipped to [4, ``--max-len``]: the long tail of a reasoning
model's lengths, where one long row sets the width of every micro-batch it shares.

- ``nograd``: ``nograd.batched_logprobs_with_stats`` with ``length_grouped`` on / off; both
  outputs are compared (max |Δ|).
- ``update``: ``update.update_policy`` (PPO-clip, token mean, one optimizer step of an lr-0 SGD,
  so both modes see the same weights) with ``UpdateSettings.length_grouped`` on / off; the
  gradient norms are compared (relative |Δ|). Its micro-batches are trimmed in both modes (row
  order trims each to its own longest row too), so the gain is the grouping alone.

Results are merged into ``benchmarks/results/length_grouping.json`` by ``preset/device/pass``;
``speedup`` = row-order time / grouped time; ``columns`` the completion columns each mode
runs (rows × micro-batch width, summed) against the real completion tokens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "length_grouping.json"
GROUP = 8


def make_batch(
    prompts: int, group: int, prompt_len: int, max_len: int, median: float, sigma: float, seed: int
):
    """(ids [B, P+T], attention [B, P+T], completion mask [B, T]) with log-normal completion lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b = prompts * group
    lengths = (torch.randn(b, generator=g) * sigma).exp().mul(median).round().clamp(4, max_len).long()  # [B]
    plen = torch.randint(prompt_len // 2, prompt_len + 1, (prompts,), generator=g).repeat_interleave(group)
    ids = torch.randint(10, 90, (b, prompt_len + max_len), generator=g)
    ids[:, :prompt_len] = ids[::group, :prompt_len].repeat_interleave(group, 0)  # a group shares its prompt
    cols = torch.arange(prompt_len + max_len)
    attn = ((cols >= prompt_len - plen[:, None]) & (cols < prompt_len + lengths[:, None])).long()
    ids = ids * attn  # pad id 0 outside the mask
    cmask = (torch.arange(max_len) < lengths[:, None]).float()
    return ids, attn, cmask


def columns_computed(parts, cmask, trimmed: bool) -> int:
    """Completion columns a pass runs: rows × (their micro-batch's longest completion if trimmed, else T)."""
    from unipo.train.nograd import completion_widths

    t = cmask.shape[1]
    return sum(len(idx) * (int(completion_widths(cmask[idx]).max()) if trimmed else t) for idx in parts)


def alternate(reps: int, call) -> dict[str, list[float]]:
    """call(grouped: bool) timed for both modes, alternating, after one untimed round."""
    times: dict[str, list[float]] = {"grouped": [], "row_order": []}
    for r in range(reps + 1):
        for mode in ("grouped", "row_order") if r % 2 == 0 else ("row_order", "grouped"):
            t0 = time.perf_counter()
            call(mode == "grouped")
            if r:
                times[mode].append(time.perf_counter() - t0)
    return times


def run(a: argparse.Namespace, what: str) -> dict:
    import torch

    from unipo.algorithms import Algorithm
    from unipo.batch import RolloutBatch
    from unipo.models import build_tiny_model, load_model
    from unipo.models.tiny import TINY_PRESETS
    from unipo.parts.advantages import GroupNorm
    from unipo.parts.aggregate import TokenMean
    from unipo.parts.surrogates import PPOClip
    from unipo.train.nograd import batched_logprobs_with_stats, length_grouped_micro_batches
    from unipo.train.update import UpdateSettings, update_policy

    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(Path(tmp) / "m", **TINY_PRESETS[a.preset], seed=0)
        model, _ = load_model(Path(tmp) / "m", dtype="float32", device=a.device)
    ids, attn, cmask = (x.to(a.device) for x in make_batch(
        a.prompts, GROUP, a.prompt_len, a.max_len, a.median, a.sigma, a.seed))  # fmt: skip
    p, b = a.prompt_len, ids.shape[0]
    outs: dict[bool, object] = {}
    if what == "nograd":

        def call(grouped: bool) -> None:
            outs[grouped] = batched_logprobs_with_stats(
                model, ids, attn, cmask, micro_batch=a.micro, shared_prompt=True, length_grouped=grouped
            )

        times = alternate(a.reps, call)
        diff = max(float((outs[True][i] - outs[False][i]).abs().max()) for i in (0, 1))
    else:
        g = torch.Generator().manual_seed(a.seed)
        batch = RolloutBatch(
            prompt_ids=ids[:, :p], prompt_mask=attn[:, :p], completion_ids=ids[:, p:], completion_mask=cmask,
            group_ids=torch.arange(b) // GROUP, truncated=cmask[:, -1].bool(),
            rewards=torch.randn(b, generator=g), advantages=torch.randn(b, 1, generator=g) * cmask,
        )  # fmt: skip
        algo = Algorithm(
            name="bench", paper="-", advantage=GroupNorm(), surrogate=PPOClip(), aggregate=TokenMean()
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: both modes see the same

        def call(grouped: bool) -> None:
            settings = UpdateSettings(
                epochs=1, minibatches=1, micro_batch_size=a.micro, max_grad_norm=1e9, temperature=1.0,
                max_len=a.max_len, shared_prompt=True, length_grouped=grouped,
            )  # fmt: skip
            gen = torch.Generator().manual_seed(0)
            outs[grouped] = update_policy(model, opt, None, algo, batch, settings, step=0, generator=gen)[0]

        times = alternate(a.reps, call)
        gn = (outs[True]["optim/grad_norm"], outs[False]["optim/grad_norm"])
        diff = abs(gn[0] - gn[1]) / max(abs(gn[1]), 1e-12)
    med = {m: statistics.median(v) for m, v in times.items()}
    lengths = cmask.sum(1)
    grouped_parts = length_grouped_micro_batches(ids[:, :p], attn[:, :p], cmask, a.micro)
    row_parts = list(torch.arange(b).split(a.micro))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pass": what,
        "config": {k: v for k, v in vars(a).items() if k not in ("out", "show", "passes")},
        "rows": int(b),
        "completion_len": {
            "min": int(lengths.min()),
            "median": float(lengths.median()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "grouped_s": med["grouped"],
        "row_order_s": med["row_order"],
        "speedup": med["row_order"] / med["grouped"],
        "columns": {
            "grouped": columns_computed(grouped_parts, cmask, True),
            "row_order": columns_computed(row_parts, cmask, what == "update"),  # the update trims in both
            "completion_tokens": int(lengths.sum()),
        },
        "max_diff": diff,
        "diff_of": "max |Δ| of log-probs and entropies"
        if what == "nograd"
        else "relative |Δ| of the gradient norm",
        "times_s": times,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__},
    }


def show(results: dict) -> None:
    print("| preset/device/pass | rows | completion len (median / max) | row order s | grouped s | speedup "
          "| completion columns run (row order → grouped; real tokens) | max diff |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, e in results.items():
        c, t = e["completion_len"], e["columns"]
        print(f"| {key} | {e['rows']} | {c['median']:.0f} / {c['max']} | {e['row_order_s']:.2f} | "
              f"{e['grouped_s']:.2f} | **{e['speedup']:.2f}×** | {t['row_order']:,} → {t['grouped']:,}; "
              f"{t['completion_tokens']:,} | {e['max_diff']:.1e} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="25m", help="unipo.models.tiny.TINY_PRESETS name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--passes", default="nograd,update", help="comma-separated: nograd, update")
    p.add_argument("--prompts", type=int, default=16, help=f"prompts (× {GROUP} completions)")
    p.add_argument("--prompt-len", type=int, default=64, help="longest prompt (prompts span half to all)")
    p.add_argument("--max-len", type=int, default=256, help="completion length cap")
    p.add_argument("--median", type=float, default=48.0, help="median completion length")
    p.add_argument("--sigma", type=float, default=0.8, help="log-normal σ of completion lengths")
    p.add_argument("--micro", type=int, default=32, help="rows per micro-batch")
    p.add_argument("--reps", type=int, default=3, help="timed rounds per mode (after one warm-up round)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--show", action="store_true", help="print the table of --out and exit")
    a = p.parse_args(argv)
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if a.show:
        return show(results)
    passes = a.passes.split(",")
    if unknown := [x for x in passes if x not in ("nograd", "update")]:
        p.error(f"--passes: unknown {unknown}; choose from nograd, update")
    sys.path.insert(0, str(ROOT / "src"))
    keys = []
    for what in passes:
        key = f"{a.preset}/{a.device}/{what}"
        results[key] = run(a, what)
        keys.append(key)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    show({k: results[k] for k in keys})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
