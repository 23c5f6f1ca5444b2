"""The demo's testbed: column addition (``unipo.tasks.addition``) and a warm start that has
learned the skill partially, cached by its recipe.

A warm start is a tiny model (``build_tiny_model``, character tokenizer, built offline) given
``sft_steps`` of supervised fine-tuning on worked solutions from the task's warm-start pool.
Stopped part-way up its learning curve, it writes the worked format and gets most columns
right, so greedy decoding often solves a problem while a sample at T = 1 often slips on one
column: RL has room to sharpen, and what it sharpens (one-digit sums with a carry) transfers to
the evaluation pool, which no warm-start or RL problem is in.

Cache: ``<cache root>/warmstart/<key>/`` with ``key = recipe_key(recipe, device)``, a hash of the
recipe's every field, the device type, the torch and transformers versions and the source text
of the modules that build it (this one, ``tasks/addition.py``, ``train/sft.py``,
``models/tiny.py``): any change to them builds a new one. The cache root is ``$UNIPO_CACHE``,
else ``~/.cache/unipo``. An entry is written to a temporary sibling and renamed, so a crash
never leaves half a warm start under its key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unipo.tasks.addition import AdditionTask

BUILDER_VERSION = 1
"""Bumped by hand when the warm start changes in a way the hashed sources do not show."""


@dataclass(frozen=True)
class WarmStartRecipe:
    """Everything that determines a warm start (all of it goes into the cache key)."""

    task: dict[str, Any] = field(default_factory=lambda: {"digits": 3})
    """``AdditionTask`` keyword arguments (digits, worked, pool_weights)."""
    model: dict[str, Any] = field(
        default_factory=lambda: {"hidden_size": 128, "num_layers": 2, "num_heads": 4}
    )
    """``build_tiny_model`` keyword arguments."""
    examples: int = 20_000
    """Problems drawn from the warm-start pool (SFT samples minibatches from them with replacement)."""
    sft_steps: int = 360
    """Optimizer steps of supervised fine-tuning: where on its learning curve the model stops."""
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    """Seed of the model's initialization, the problems drawn and the minibatch order."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_BUILDER_SOURCES = ("tasks/testbed.py", "tasks/addition.py", "train/sft.py", "models/tiny.py")


def builder_fingerprint() -> str:
    """SHA-256 of the source text of the modules that build a warm start, and BUILDER_VERSION."""
    root = Path(__file__).resolve().parents[1]  # src/unipo
    h = hashlib.sha256(f"builder {BUILDER_VERSION}\n".encode())
    for rel in _BUILDER_SOURCES:
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


def recipe_key(recipe: WarmStartRecipe, device: str = "cpu") -> str:
    """The cache key: 16 hex digits of SHA-256 over the recipe, the device type, the library
    versions and ``builder_fingerprint()``."""
    import torch
    import transformers

    payload = {
        "recipe": recipe.as_dict(),
        "device": device.split(":")[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "builder": builder_fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> Path:
    """``$UNIPO_CACHE`` if set, else ``~/.cache/unipo``."""
    env = os.environ.get("UNIPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unipo"


@dataclass
class WarmStart:
    """A warm start in the cache: its model directory and how it was obtained."""

    path: Path
    """Loadable model directory (``<cache>/warmstart/<key>/model``)."""
    key: str
    cached: bool
    """True when it was found in the cache (nothing was trained)."""
    info: dict[str, Any]
    """``warm_start.json``: the recipe, key, SFT losses (first, last), build seconds."""


def warm_start_problems(recipe: WarmStartRecipe) -> list[dict[str, Any]]:
    """The problems the warm start trains on (from the task's warm-start pool)."""
    return AdditionTask(**recipe.task).warm_start_examples(recipe.examples, recipe.seed)


def build_warm_start(
    recipe: WarmStartRecipe, out_dir: Path, device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Build the base model in ``out_dir/base``, fine-tune it on the recipe's worked solutions and
    save it to ``out_dir/model``; returns the losses and timing."""
    from unipo.models import build_tiny_model, load_model, save_model
    from unipo.train.sft import sft, sft_rows

    t0 = time.perf_counter()
    base = build_tiny_model(out_dir / "base", seed=recipe.seed, overwrite=True, **recipe.model)
    model, tok = load_model(base, dtype="float32", device=device)
    problems = warm_start_problems(recipe)
    ids = [tok(ex["question"], add_special_tokens=False)["input_ids"] for ex in problems]
    rows = sft_rows(tok, ids, [ex["demonstration"] for ex in problems])
    losses = sft(model, rows, steps=recipe.sft_steps, batch_size=recipe.batch_size, lr=recipe.lr,
                 seed=recipe.seed, pad_id=tok.pad_token_id, on_step=on_step)  # fmt: skip
    save_model(model, tok, out_dir / "model")
    shutil.rmtree(out_dir / "base")
    return {"loss_first": losses[0], "loss_last": losses[-1], "seconds": time.perf_counter() - t0,
            "problems": len(problems)}  # fmt: skip


def cached_warm_start(
    recipe: WarmStartRecipe, *, device: str = "cpu", root: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
    builder: Callable[..., dict[str, Any]] = build_warm_start,
) -> WarmStart:  # fmt: skip
    """The warm start of ``recipe`` from the cache, built (by ``builder``) and stored first on a miss."""
    key = recipe_key(recipe, device)
    final = (root or cache_root()) / "warmstart" / key
    info_path = final / "warm_start.json"
    if info_path.is_file() and (final / "model").is_dir():
        return WarmStart(final / "model", key, True, json.loads(info_path.read_text()))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=final.parent))
    try:
        built = builder(recipe, tmp, device=device, on_step=on_step)
        info = {"key": key, "recipe": recipe.as_dict(), "device": device, **built}
        (tmp / "warm_start.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():  # another process built it meanwhile: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WarmStart(final / "model", key, False, json.loads(info_path.read_text()))
