"""Preference data from parquet (written with pyarrow and pandas) and `datasets.save_to_disk` folders:
pairwise and ranked lists, chat messages, splits, and the bad-data rules on every source."""

from __future__ import annotations

import warnings

import pytest

from unipo.models import build_tokenizer
from unipo.preference.config import DataConfig
from unipo.preference.data import load_preference_data, read_rows
from unipo.preference.pairs import expand_list

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def cfg(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), chat=False, **kw)


def write_parquet(path, columns: dict) -> str:
    pq.write_table(pa.table(columns), str(path))
    return str(path)


def test_parquet_ranked_lists_with_rank_ties(tmp_path, tok):
    path = write_parquet(tmp_path / "lists.parquet", {
        "prompt": ["p1", "p2", "p3"],
        "responses": [["a", "b", "c"], ["d", "e"], ["f", "g", "h"]],
        "ranks": [[2, 1, 2], [1, 1], [3, 2, 1]],  # ties in the first list; the second all tied
    })  # fmt: skip
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        examples, stats = load_preference_data(cfg(path), tok)
    assert "lists with all scores tied" in str(w[0].message) and stats["data/tied_lists"] == 1.0
    first, third = examples
    # rank 1 = best; tied ranks keep file order: b (1), then a and c (2 each)
    assert first.metadata["responses"] == ["b", "a", "c"] and first.scores == [-1.0, -2.0, -2.0]
    assert third.metadata["responses"] == ["h", "g", "f"]
    # the tied responses a and c never form a pair: all_pairs gives (b, a) and (b, c) only
    b, a, c = first.responses
    assert [p.responses for p in expand_list(first, "all_pairs")] == [[b, a], [b, c]]


def test_parquet_from_pandas_with_chat_messages(tmp_path, tok):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({
        "prompt": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]],
        "chosen": [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "same"}]],
        "rejected": [[{"role": "assistant", "content": "y"}], [{"role": "assistant", "content": "same"}]],
    })  # fmt: skip
    frame.to_parquet(tmp_path / "chat.parquet")
    with pytest.warns(UserWarning, match=r"dropped 1 of 2 preference rows \(1 with chosen == rejected"):
        examples, stats = load_preference_data(DataConfig(path=str(tmp_path / "chat.parquet")), tok)
    (ex,) = examples
    assert tok.decode(ex.prompt_ids) == "<|user|>hi\n<|assistant|>"  # the tokenizer's chat template
    assert tok.decode(ex.responses[0][:-1]) == "x" and stats["data/identical_pairs"] == 1.0


def test_parquet_bad_rows_named(tmp_path, tok):
    empty = write_parquet(
        tmp_path / "e.parquet", {"prompt": ["a", "b"], "chosen": ["x", ""], "rejected": ["y", "z"]}
    )
    with pytest.raises(ValueError, match=r"e\.parquet row 1: empty response in column 'chosen'"):
        load_preference_data(cfg(empty), tok)
    missing = write_parquet(tmp_path / "m.parquet", {"prompt": ["a"], "responses": [["x", "y"]]})
    with pytest.raises(ValueError, match=r"m\.parquet row 0: missing column\(s\) \['scores \(or ranks\)'\]"):
        load_preference_data(cfg(missing), tok)
    same = write_parquet(tmp_path / "s.parquet", {"prompt": ["a"], "chosen": ["x"], "rejected": ["x"]})
    with pytest.raises(ValueError, match="no usable preference rows: 1 of 1 have chosen == rejected"):
        load_preference_data(cfg(same), tok)


def test_saved_dataset_lists_splits_and_errors(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    lists = datasets.Dataset.from_dict({"prompt": ["q"], "responses": [["lo", "hi"]], "scores": [[0.0, 1.0]]})
    pairs = datasets.Dataset.from_dict({"prompt": ["r"], "chosen": ["c"], "rejected": ["d"]})
    lists.save_to_disk(str(tmp_path / "single"))  # a plain Dataset folder
    (ex,), _ = load_preference_data(cfg(tmp_path / "single"), tok)
    assert ex.metadata["responses"] == ["hi", "lo"] and ex.scores == [1.0, 0.0]
    datasets.DatasetDict({"train": pairs, "test": lists}).save_to_disk(str(tmp_path / "dict"))
    (train,), _ = load_preference_data(cfg(tmp_path / "dict"), tok)  # default split: train
    assert train.metadata["responses"] == ["c", "d"]
    (test,), _ = load_preference_data(cfg(tmp_path / "dict", split="test"), tok)
    assert test.metadata["responses"] == ["hi", "lo"]
    datasets.DatasetDict({"dev": pairs}).save_to_disk(str(tmp_path / "nodefault"))
    with pytest.raises(ValueError, match=r"holds splits \['dev'\]; choose one with data\.split"):
        load_preference_data(cfg(tmp_path / "nodefault"), tok)
    bad = datasets.Dataset.from_dict({"prompt": ["a"], "responses": [["x", " "]], "scores": [[1.0, 0.0]]})
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"bad row 0 item 1: empty response in column 'responses'"):
        load_preference_data(cfg(tmp_path / "bad"), tok)


def test_read_rows_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match="unknown data format 'csv'; allowed: auto, jsonl, parquet, disk"):
        read_rows(tmp_path / "d.csv", "csv")
    with pytest.raises(FileNotFoundError, match="preference data not found"):
        read_rows(tmp_path / "nope.jsonl")
