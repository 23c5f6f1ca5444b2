"""Offline preference data: formats, chat templates, and the defined handling of bad rows."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from unipo.models import build_tokenizer
from unipo.preference.batch import PreferenceBatch, PreferenceExample
from unipo.preference.config import DataConfig
from unipo.preference.data import load_preference_data, parse_rows, read_rows
from unipo.preference.pairs import expand_list


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), chat=False, **kw)


def test_pairwise_jsonl_tokenized_with_template_and_eos(tmp_path, tok):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1", "chosen": "2", "rejected": "3"}])
    examples, stats = load_preference_data(cfg(p, template="Q: {question} A:"), tok)
    (ex,) = examples
    assert tok.decode(ex.prompt_ids) == "Q: 1+1 A:"
    assert ex.responses == [
        tok("2")["input_ids"] + [tok.eos_token_id],
        tok("3")["input_ids"] + [tok.eos_token_id],
    ]
    assert ex.scores == [1.0, 0.0] and stats["data/examples"] == 1.0


def test_chat_template_and_message_prompts(tmp_path, tok):
    rows = [
        {"prompt": "hi", "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "yo"}], "chosen": [{"role": "assistant", "content": "c"}],
         "rejected": "d"},
    ]  # fmt: skip
    examples, _ = load_preference_data(DataConfig(path=str(write_jsonl(tmp_path / "c.jsonl", rows))), tok)
    assert tok.decode(examples[0].prompt_ids) == "<|user|>hi\n<|assistant|>"
    assert tok.decode(examples[1].prompt_ids) == "<|user|>yo\n<|assistant|>"
    assert tok.decode(examples[1].responses[0][:-1]) == "c"


def test_missing_column_names_row_and_columns(tmp_path, tok):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "x", "wrong": "y"}]
    with pytest.raises(
        ValueError, match=r"d.jsonl line 2: missing column\(s\) \['rejected'\]; columns present"
    ):
        load_preference_data(cfg(write_jsonl(tmp_path / "d.jsonl", rows)), tok)
    with pytest.raises(ValueError, match="cannot tell the data kind"):
        load_preference_data(cfg(write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "x": 1}])), tok)


def test_empty_response_names_row(tmp_path, tok):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "  ", "rejected": "y"}]
    with pytest.raises(ValueError, match=r"d\.jsonl line 2: empty response in column 'chosen'"):
        load_preference_data(cfg(write_jsonl(tmp_path / "d.jsonl", rows)), tok)
    lists = [{"prompt": "a", "responses": ["x", ""], "scores": [1, 0]}]
    with pytest.raises(ValueError, match="line 1 item 1: empty response in column 'responses'"):
        load_preference_data(cfg(write_jsonl(tmp_path / "l.jsonl", lists)), tok)


def test_identical_pairs_dropped_counted_warned_or_error_if_all(tmp_path, tok):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "x"}, {"prompt": "b", "chosen": "x", "rejected": "y"}]
    with pytest.warns(UserWarning, match="dropped 1 of 2 preference rows"):
        examples, stats = load_preference_data(cfg(write_jsonl(tmp_path / "d.jsonl", rows)), tok)
    assert len(examples) == 1 and stats["data/identical_pairs"] == 1.0
    with pytest.raises(ValueError, match="no usable preference rows: 1 of 1 have chosen == rejected"):
        load_preference_data(cfg(write_jsonl(tmp_path / "e.jsonl", rows[:1])), tok)


def test_lists_sorted_ties_kept_all_tied_dropped(tmp_path, tok):
    rows = [
        {"prompt": "a", "responses": ["lo", "hi", "mid", "mid2"], "scores": [0, 3, 1, 1]},
        {"prompt": "b", "responses": ["p", "q"], "scores": [2, 2]},  # all tied: no pair at all
        {"prompt": "c", "responses": ["r1", "r3", "r2"], "ranks": [1, 3, 2]},  # ranks: 1 = best
    ]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        examples, stats = load_preference_data(cfg(write_jsonl(tmp_path / "l.jsonl", rows)), tok)
    assert stats["data/tied_lists"] == 1.0 and "lists with all scores tied" in str(w[0].message)
    first, third = examples
    assert first.metadata["responses"] == ["hi", "mid", "mid2", "lo"] and first.scores == [3.0, 1.0, 1.0, 0.0]
    assert third.metadata["responses"] == ["r1", "r2", "r3"]
    # ties give no pair: all_pairs of scores [3, 1, 1, 0] is 5 pairs, not 6
    pairs = expand_list(first, "all_pairs")
    assert len(pairs) == 5 and all(p.scores[0] > p.scores[1] for p in pairs)
    assert [p.scores for p in expand_list(first, "best_worst")] == [[3.0, 0.0]]


def test_list_length_mismatch_and_chosen_score_order(tmp_path, tok):
    bad = [{"prompt": "a", "responses": ["x", "y"], "scores": [1]}]
    with pytest.raises(ValueError, match="2 responses but 1 scores"):
        parse_rows(read_rows(write_jsonl(tmp_path / "b.jsonl", bad)), cfg(tmp_path))
    scored = [{"prompt": "a", "chosen": "x", "rejected": "y", "cs": 0.2, "rs": 0.9}]
    c = cfg(tmp_path, chosen_score_column="cs", rejected_score_column="rs")
    with pytest.raises(ValueError, match=r"chosen score 0\.2 is below the rejected score 0\.9"):
        parse_rows(read_rows(write_jsonl(tmp_path / "s.jsonl", scored)), c)


def test_parquet_and_saved_dataset(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    rows = {"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["y", "x"]}
    ds = datasets.Dataset.from_dict(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "d.parquet", tmp_path / "saved"):
        examples, _ = load_preference_data(cfg(path), tok)
        assert [tok.decode(e.prompt_ids) for e in examples] == ["a", "b"]
    bad = datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["x"]})
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"bad row 0: missing column\(s\) \['rejected'\]"):
        load_preference_data(cfg(tmp_path / "bad", kind="pairwise"), tok)


def test_truncation_keeps_prompt_end_and_eos(tmp_path, tok):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "abcdef", "chosen": "xyz", "rejected": "q"}])
    examples, stats = load_preference_data(cfg(p, max_prompt_tokens=3, max_response_tokens=2), tok)
    assert tok.decode(examples[0].prompt_ids) == "def"
    assert examples[0].responses[0] == [*tok("x")["input_ids"], tok.eos_token_id]
    assert stats["data/truncated_prompts"] == 1.0 and stats["data/truncated_responses"] == 1.0


def test_batch_collate_shapes_and_round_trip():
    a = PreferenceExample([5, 6], [[1, 2, 3], [4]], [1.0, 0.0])
    b = PreferenceExample([7], [[8], [9, 10], [11]], [2.0, 1.0, 1.0])
    batch = PreferenceBatch.collate([a, b], pad_id=0)
    assert batch.response_ids.shape == (2, 3, 3) and batch.prompt_ids.shape == (2, 2)
    assert batch.valid.tolist() == [[True, True, False], [True, True, True]]
    assert batch.prompt_ids[1].tolist() == [0, 7]  # left-padded
    ids, _, rmask, index = batch.flat_rows()
    assert ids.shape == (5, 5) and index.tolist() == [0, 1, 3, 4, 5]
    back = batch.unflatten(rmask, index)
    assert torch.equal(back, batch.response_mask)
    assert batch.margins.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="sorted best first"):
        PreferenceExample([1], [[1], [2]], [0.0, 1.0])
    with pytest.raises(ValueError, match="K=2"):
        _ = batch.chosen_ids
