"""No-grad log-prob pass (π_old / π_ref / re-score) on completions of varying length:
length-grouped trimmed micro-batches vs row order at the batch's full width.

    python benchmarks/nograd_pass.py                 # 25m model, 16 prompts × 8, lengths up to 256
    python benchmarks/nograd_pass.py --preset demo --reps 2      # smoke run
    python benchmarks/nograd_pass.py --show          # table of the JSON

One process, one model, the same batch for both modes; the modes alternate (A B A B ...) for
``--reps`` rounds and each reports its median. The batch is P prompts × G = 8 completions
whose lengths are drawn per row from a log-normal distribution (median ``--median``, σ
``--sigma``), clipped to [4, ``--max-len``]: the long tail of a reasoning model's lengths, where
one long row sets the width of every micro-batch it shares. Both modes' outputs are checked to
agree (max |Δ| reported). Results are merged into ``benchmarks/results/nograd_pass.json`` by
``preset/device``; ``speedup`` = row-order time / grouped time, ``tokens_computed`` the
completion columns each mode runs (rows × width summed over micro-batches).
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
DEFAULT_OUT = HERE / "results" / "nograd_pass.json"


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


def columns_computed(parts, cmask, grouped: bool) -> int:
    from unipo.train.nograd import completion_widths

    t = cmask.shape[1]
    return sum(len(idx) * (int(completion_widths(cmask[idx]).max()) if grouped else t) for idx in parts)


def run(a: argparse.Namespace) -> dict:
    import torch

    from unipo.models import build_tiny_model, load_model
    from unipo.models.tiny import TINY_PRESETS
    from unipo.train.nograd import batched_logprobs_with_stats, length_grouped_micro_batches

    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(Path(tmp) / "m", **TINY_PRESETS[a.preset], seed=0)
        model, _ = load_model(Path(tmp) / "m", dtype="float32", device=a.device)
    ids, attn, cmask = (x.to(a.device) for x in make_batch(
        a.prompts, 8, a.prompt_len, a.max_len, a.median, a.sigma, a.seed))  # fmt: skip
    p = a.prompt_len
    grouped_parts = length_grouped_micro_batches(ids[:, :p], attn[:, :p], cmask, a.micro)
    row_parts = list(torch.arange(ids.shape[0]).split(a.micro))
    kw = dict(micro_batch=a.micro, shared_prompt=True)
    times: dict[str, list[float]] = {"grouped": [], "row_order": []}
    outs = {}
    for r in range(a.reps + 1):  # round 0 warms up both
        for mode in ("grouped", "row_order") if r % 2 == 0 else ("row_order", "grouped"):
            t0 = time.perf_counter()
            outs[mode] = batched_logprobs_with_stats(
                model, ids, attn, cmask, length_grouped=mode == "grouped", **kw
            )
            if r:
                times[mode].append(time.perf_counter() - t0)
    diff = max(float((outs["grouped"][i] - outs["row_order"][i]).abs().max()) for i in (0, 1))
    med = {m: statistics.median(v) for m, v in times.items()}
    lengths = cmask.sum(1)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {k: v for k, v in vars(a).items() if k not in ("out", "show")},
        "rows": int(ids.shape[0]),
        "completion_len": {
            "min": int(lengths.min()),
            "median": float(lengths.median()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "grouped_s": med["grouped"],
        "row_order_s": med["row_order"],
        "speedup": med["row_order"] / med["grouped"],
        "tokens_computed": {
            "grouped": columns_computed(grouped_parts, cmask, True),
            "row_order": columns_computed(row_parts, cmask, False),
            "completion_tokens": int(lengths.sum()),
        },
        "max_abs_diff": diff,
        "times_s": times,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__},
    }


def show(results: dict) -> None:
    print("| preset/device | rows | completion len (median / max) | row order s | grouped s | speedup "
          "| completion columns run (row order → grouped; real tokens) | max abs diff |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, e in results.items():
        c, t = e["completion_len"], e["tokens_computed"]
        print(f"| {key} | {e['rows']} | {c['median']:.0f} / {c['max']} | {e['row_order_s']:.2f} | "
              f"{e['grouped_s']:.2f} | **{e['speedup']:.2f}×** | {t['row_order']:,} → {t['grouped']:,}; "
              f"{t['completion_tokens']:,} | {e['max_abs_diff']:.1e} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="25m", help="unipo.models.tiny.TINY_PRESETS name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompts", type=int, default=16, help="prompts (× 8 completions)")
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
    sys.path.insert(0, str(ROOT / "src"))
    results[f"{a.preset}/{a.device}"] = run(a)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    show({f"{a.preset}/{a.device}": results[f"{a.preset}/{a.device}"]})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
