"""Offline preference data: pairwise or ranked-list rows from JSONL, parquet, or a ``datasets`` folder.

Row formats (column names are configurable, ``data.*_column``):

    pairwise   {"prompt": ..., "chosen": ..., "rejected": ...}   (+ optional chosen/rejected scores)
    listwise   {"prompt": ..., "responses": [...], "scores": [...]}   or   "ranks": [...] (1 = best)

A prompt is a string (rendered with ``unipo.tasks.render_prompt``: template, chat template, system
prompt) or a list of chat messages ``[{"role", "content"}, ...]`` (rendered with the tokenizer's
chat template). A response is a string or a list of messages (its last message's content).

Bad data, handled the same way for every source:
    missing column           ValueError naming the row and listing the columns present
    empty response           ValueError naming the row and the column
    chosen == rejected       the row is dropped and counted, with a warning; ValueError if all are
    a list whose scores all tie   dropped and counted the same way (it gives no pair)
    ties inside a list       kept; tied responses give no pair (pair expansion, LiPO's Σ_{ψi>ψj})
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipo.preference.batch import PreferenceExample
from unipo.tasks.sources import read_jsonl

Row = tuple[str, dict[str, Any]]  # (where the row came from, e.g. "pairs.jsonl line 3", the row)


def read_rows(path: str | Path, fmt: str = "auto", split: str | None = None) -> list[Row]:
    """Every row of a ``.jsonl`` file, a ``.parquet`` file, or a ``datasets.save_to_disk`` folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"preference data not found: {str(p)!r}")
    if fmt == "auto":
        fmt = "disk" if p.is_dir() else "parquet" if p.suffix == ".parquet" else "jsonl"
    if fmt == "jsonl":
        return [(f"{p.name} line {lineno}", row) for lineno, row in read_jsonl(p)]
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("reading parquet needs pyarrow: pip install pyarrow (or datasets)") from e
        return [(f"{p.name} row {i}", row) for i, row in enumerate(pq.read_table(p).to_pylist())]
    if fmt == "disk":
        try:
            import datasets
        except ImportError as e:
            raise ImportError(
                "reading a saved dataset needs the datasets package: pip install datasets"
            ) from e
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            name = split or ("train" if "train" in ds else None)
            if name not in ds:
                raise ValueError(f"{p} holds splits {sorted(ds)}; choose one with data.split")
            ds = ds[name]
        return [(f"{p.name} row {i}", dict(row)) for i, row in enumerate(ds)]
    raise ValueError(f"unknown data format {fmt!r}; allowed: auto, jsonl, parquet, disk")


@dataclass
class RawPreference:
    """One parsed row before tokenization; responses sorted best first."""

    location: str
    prompt: str | list[dict[str, Any]]
    responses: list[str]
    scores: list[float]


def _response_text(value: Any, where: str, column: str) -> str:
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: empty response in column {column!r}")
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: column {column!r} must hold text or chat messages, got {type(value).__name__}"
        )
    return value


def _check_prompt(value: Any, where: str, column: str) -> str | list[dict[str, Any]]:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(m, dict) for m in value)):
        return value
    raise ValueError(
        f"{where}: column {column!r} must hold text or chat messages, got {type(value).__name__}"
    )


def detect_kind(row: dict[str, Any], cfg: Any) -> str:
    """``pairwise`` if the chosen/rejected columns are present, ``listwise`` if the responses column is."""
    if cfg.chosen_column in row and cfg.rejected_column in row:
        return "pairwise"
    if cfg.responses_column in row:
        return "listwise"
    raise ValueError(
        f"cannot tell the data kind: neither {cfg.chosen_column!r}/{cfg.rejected_column!r} (pairwise) nor "
        f"{cfg.responses_column!r} (listwise) is a column; columns present: {sorted(row)}"
    )


def parse_rows(rows: list[Row], cfg: Any) -> tuple[list[RawPreference], dict[str, int]]:
    """Validate rows (see the module docstring) into ``RawPreference`` items; returns (items, counts)."""
    if not rows:
        raise ValueError("the preference data has no rows")
    kind = cfg.kind if cfg.kind != "auto" else detect_kind(rows[0][1], cfg)
    out: list[RawPreference] = []
    counts = {"rows": len(rows), "identical_pairs": 0, "tied_lists": 0}
    for where, row in rows:
        needed = [cfg.prompt_column]
        if kind == "pairwise":
            needed += [cfg.chosen_column, cfg.rejected_column]
        else:
            needed.append(cfg.responses_column)
        missing = [c for c in needed if c not in row]
        if kind == "listwise" and cfg.scores_column not in row and cfg.ranks_column not in row:
            missing.append(f"{cfg.scores_column} (or {cfg.ranks_column})")
        if missing:
            raise ValueError(f"{where}: missing column(s) {missing}; columns present: {sorted(row)}")
        prompt = _check_prompt(row[cfg.prompt_column], where, cfg.prompt_column)
        if kind == "pairwise":
            chosen = _response_text(row[cfg.chosen_column], where, cfg.chosen_column)
            rejected = _response_text(row[cfg.rejected_column], where, cfg.rejected_column)
            if chosen == rejected:
                counts["identical_pairs"] += 1
                continue
            scores = [1.0, 0.0]
            if cfg.chosen_score_column and cfg.chosen_score_column in row:
                scores = [float(row[cfg.chosen_score_column]), float(row[cfg.rejected_score_column])]
                if scores[0] < scores[1]:
                    raise ValueError(
                        f"{where}: chosen score {scores[0]} is below the rejected score {scores[1]}"
                    )
            out.append(RawPreference(where, prompt, [chosen, rejected], scores))
            continue
        responses = row[cfg.responses_column]
        if not isinstance(responses, list) or len(responses) < 2:
            raise ValueError(
                f"{where}: column {cfg.responses_column!r} must be a list of at least 2 responses"
            )
        texts = [
            _response_text(r, f"{where} item {i}", cfg.responses_column) for i, r in enumerate(responses)
        ]
        if cfg.scores_column in row:
            scores = [float(s) for s in row[cfg.scores_column]]
        else:
            scores = [-float(r) for r in row[cfg.ranks_column]]  # rank 1 = best → highest score
        if len(scores) != len(texts):
            raise ValueError(f"{where}: {len(texts)} responses but {len(scores)} scores/ranks")
        if max(scores) == min(scores):
            counts["tied_lists"] += 1
            continue
        order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: ties keep file order
        out.append(RawPreference(where, prompt, [texts[i] for i in order], [scores[i] for i in order]))
    dropped = counts["identical_pairs"] + counts["tied_lists"]
    if not out:
        raise ValueError(
            f"no usable preference rows: {counts['identical_pairs']} of {len(rows)} have chosen == rejected "
            f"and {counts['tied_lists']} are lists whose scores all tie"
        )
    if dropped:
        warnings.warn(
            f"dropped {dropped} of {len(rows)} preference rows ({counts['identical_pairs']} with chosen == "
            f"rejected, {counts['tied_lists']} lists with all scores tied)",
            stacklevel=2,
        )
    return out, counts


def tokenize(
    raw: list[RawPreference], tokenizer: Any, cfg: Any
) -> tuple[list[PreferenceExample], dict[str, int]]:
    """Render prompts, tokenize prompts and responses (+ EOS), truncate (prompt from the left)."""
    from unipo.tasks import render_prompt

    eos = tokenizer.eos_token_id
    counts = {"truncated_prompts": 0, "truncated_responses": 0}
    out = []
    has_template = bool(getattr(tokenizer, "chat_template", None))
    for r in raw:
        if isinstance(r.prompt, list):
            text = tokenizer.apply_chat_template(r.prompt, tokenize=False, add_generation_prompt=True)
            chat = True
        else:
            text = render_prompt(tokenizer, r.prompt, cfg.template, cfg.chat, cfg.system_prompt)
            chat = cfg.chat if cfg.chat is not None else has_template
        ids = tokenizer(text, add_special_tokens=not chat)["input_ids"]  # chat templates add BOS
        if cfg.max_prompt_tokens and len(ids) > cfg.max_prompt_tokens:
            ids = ids[-cfg.max_prompt_tokens :]
            counts["truncated_prompts"] += 1
        responses = []
        for resp in r.responses:
            rid = tokenizer(resp, add_special_tokens=False)["input_ids"]
            if cfg.max_response_tokens and len(rid) + 1 > cfg.max_response_tokens:
                rid = rid[: cfg.max_response_tokens - 1]
                counts["truncated_responses"] += 1
            responses.append(rid + ([eos] if eos is not None else []))
        meta = {"source": r.location, "prompt": text, "responses": r.responses}
        out.append(PreferenceExample(prompt_ids=ids, responses=responses, scores=r.scores, metadata=meta))
    return out, counts


def load_preference_data(cfg: Any, tokenizer: Any) -> tuple[list[PreferenceExample], dict[str, float]]:
    """``data.path`` → tokenized examples (best first) and counts (``data/rows``, ``data/...``)."""
    rows = read_rows(cfg.path, cfg.format, cfg.split)
    if cfg.limit:
        rows = rows[: cfg.limit]
    raw, counts = parse_rows(rows, cfg)
    examples, tcounts = tokenize(raw, tokenizer, cfg)
    stats = {f"data/{k}": float(v) for k, v in {**counts, **tcounts}.items()}
    stats["data/examples"] = float(len(examples))
    return examples, stats
