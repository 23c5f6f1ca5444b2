"""Config input a careful user gets right or a clear error for: duplicate YAML keys, string fields on
the command line, non-UTF-8 files, a group size the advantage cannot learn from, resume + overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unipo.algorithms import list_algorithms
from unipo.batch import RolloutBatch
from unipo.config import ConfigError, build_algorithm, load_config
from unipo.parts.registry import PARTS, _load_builtin_parts, part_name
from unipo.preference.config import load_preference_config


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ duplicate keys
def test_duplicate_key_in_file_names_key_and_line(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "optim:\n  lr: 1.0e-5\n  epochs: 2\n  lr: 2.0e-5\n")
    message = r"cfg\.yaml: line 4, column 3: duplicate key 'lr' \(first given at line 2\)"
    with pytest.raises(ConfigError, match=message):
        load_config(path)  # before: lr silently became 2e-5


def test_duplicate_top_level_section(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "train: {steps: 5}\nrollout: {group_size: 4}\ntrain: {seed: 3}\n")
    with pytest.raises(ConfigError, match=r"line 3, column 1: duplicate key 'train'"):
        load_config(path)


def test_duplicate_key_in_preference_config_and_overrides(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "data: {path: x.jsonl}\nloss:\n  preset: dpo\n  preset: ipo\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'preset'"):
        load_preference_config(path)
    with pytest.raises(ConfigError, match=r"override 'task.config=\{a: 1, a: 2\}'.*duplicate key 'a'"):
        load_config(None, ["task.config={a: 1, a: 2}"])


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "base: &b {lr: 1.0e-5, epochs: 2}\n")
    text = path.read_text() + "optim:\n  <<: *b\n  lr: 3.0e-5\n"
    from unipo.config import parse_yaml

    assert parse_yaml(text)["optim"] == {"lr": 3.0e-5, "epochs": 2}  # an override, not a duplicate


# ------------------------------------------------------------------ string fields on the command line
@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("task.template={question}", "template", "{question}"),  # before: the mapping {question: None}
        ("task.template={question} Answer:", "template", "{question} Answer:"),
        ("task.template='Q: {question}'", "template", "Q: {question}"),  # YAML quotes are removed
        ("task.system_prompt={x}", "system_prompt", "{x}"),
        ("task.system_prompt=null", "system_prompt", None),  # str | None: null is None
        ("task.name=123", "name", "123"),  # a str field: not the int 123
        ("task.path=yes", "path", "yes"),  # not the bool True
    ],
)
def test_string_fields_take_the_raw_text(override: str, key: str, expected: str | None) -> None:
    assert getattr(load_config(None, [override]).task, key) == expected


def test_non_string_fields_still_parse_yaml() -> None:
    cfg = load_config(None, ["rollout.group_size=4", "task.config={min_terms: 2}", "eval.ks=[1,2]"])
    assert cfg.rollout.group_size == 4 and cfg.task.config == {"min_terms": 2} and cfg.eval.ks == [1, 2]
    overrides = ["data.path=x.jsonl", "data.template={question}!", "task.template={question}"]
    cfg = load_preference_config(None, overrides)  # task is a TaskConfig | None there
    assert cfg.data.template == "{question}!" and cfg.task.template == "{question}"


# ------------------------------------------------------------------ file encoding
def test_non_utf8_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("task:\n  system_prompt: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text \(byte 0xe9 on line 2\)") as err:
        load_config(path)  # before: a UnicodeDecodeError traceback
    assert "\n" not in str(err.value)


def test_utf8_with_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufefftask:\n  system_prompt: café\n".encode())
    assert load_config(path).task.system_prompt == "café"


# ------------------------------------------------------------------ group size
def test_group_size_one_with_group_advantage_is_an_error() -> None:
    cfg = load_config(None, ["rollout.group_size=1"])
    with pytest.raises(ConfigError, match=r"rollout.group_size=1, .*'group_norm' of 'grpo'.*group_size >= 2"):
        build_algorithm(cfg.algorithm, cfg.rollout.group_size)
    cfg = load_config(None, ["rollout.group_size=1", "algorithm.advantage=reinforce_pp"])
    assert part_name(build_algorithm(cfg.algorithm, 1).advantage) == "reinforce_pp"  # no groups: fine


def test_trainer_refuses_group_size_one_before_loading_a_model(tmp_path: Path) -> None:
    from unipo.train.trainer import Trainer

    cfg = load_config(None, [f"model.path={tmp_path / 'no-model'}", "rollout.group_size=1"])
    with pytest.raises(ConfigError, match="group_size"):
        Trainer(cfg)  # before: trained on all-zero advantages without a word


def _lone_completions() -> RolloutBatch:
    b, t = 4, 3
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)  # [B, T]
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.ones(b, t, dtype=torch.long), completion_mask=mask,
        group_ids=torch.arange(b), truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.5]), old_logprobs=torch.full((b, t), -1.0),
        ref_logprobs=torch.full((b, t), -1.2), values=torch.zeros(b, t), entropies=torch.full((b, t), 0.5),
        old_stats={"sum_pi_squared": torch.full((b, t), 0.3)}, token_rewards=torch.zeros(b, t),
        metadata=[{"completion": f"answer {i}", "answer": str(i), "remax_baseline": 0.5} for i in range(b)],
        old_sequence_stats={"lm_head_sensitivity": torch.arange(8.0).reshape(b, 2)},  # G2RL's feature
    )  # fmt: skip


def test_min_group_size_matches_what_each_advantage_does_with_lone_completions() -> None:
    # the attribute the check reads must be true: below it, the advantage carries no reward signal
    # (with one completion per prompt it is the same whatever the rewards: 0 for group-relative
    # estimators, a reward-free shaping term for some, e.g. EMPG's future-clarity bonus)
    _load_builtin_parts()
    batch = _lone_completions()  # every completion its own group (G = 1)
    flipped = batch.replace(rewards=1.0 - batch.rewards)
    # f-DPG's pseudo-reward has a per-sample signal, but its per-prompt normalizer needs G ≥ 2 samples
    needs_samples_not_baseline = {"f_dpg"}
    # SPA-RL's reward reaches the advantage through the progress estimator fitted on it, from the next
    # step on (this step's turn rewards come from the estimator as it was): no groups, but a one-step lag
    reward_through_its_estimator = {"spa"}
    for name, cls in PARTS["advantage"].items():
        if name in needs_samples_not_baseline:
            assert cls().min_group_size == 2
            continue
        need = getattr(cls(), "min_group_size", 2 if getattr(cls(), "uses_groups", True) else 1)
        if name in reward_through_its_estimator:
            assert need == 1 and _next_step_differs(cls, batch, flipped), name
            continue
        adv, _ = cls()(batch)
        adv_flipped, _ = cls()(flipped)
        assert bool(torch.equal(adv, adv_flipped)) == (need > 1), name


def _next_step_differs(cls, batch: RolloutBatch, flipped: RolloutBatch) -> bool:
    """The advantage of the step after one fitted on ``batch`` vs on ``flipped`` (distinct completions,
    so the estimator can tell the rows apart)."""
    ids = torch.arange(batch.size * batch.completion_ids.shape[1]).view_as(batch.completion_ids) + 3
    out = []
    for b in (batch.replace(completion_ids=ids), flipped.replace(completion_ids=ids)):
        part = cls()
        part(b)
        part.on_step_end({})
        out.append(part(b)[0])
    return not bool(torch.equal(out[0], out[1]))


@pytest.mark.parametrize("algo", list_algorithms(), ids=lambda a: a.name)
def test_every_preset_builds_at_group_size_two(algo) -> None:
    assert build_algorithm(load_config(None, [f"algorithm.name={algo.name}"]).algorithm, 2).name == algo.name


# ------------------------------------------------------------------ resume and overwrite
def test_resume_with_overwrite_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"train.resume=true and train.overwrite=true .* give only one"):
        load_config(None, ["train.resume=true", "train.overwrite=true"])  # before: silently resumed
    with pytest.raises(ConfigError, match=r"contradict each other"):
        load_preference_config(None, ["data.path=x.jsonl", "train.resume=true", "train.overwrite=true"])
    assert load_config(None, ["train.resume=true"]).train.resume
