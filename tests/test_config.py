"""Config validation: unknown keys, wrong types, bad algorithms produce clear messages."""

from __future__ import annotations

import pytest

from unipo.config import ConfigError, build_algorithm, load_config


def test_defaults_and_override_types():
    cfg = load_config(None, ["rollout.group_size=4", "optim.lr=1e-5", "task.config={min_terms: 2}"])
    assert cfg.rollout.group_size == 4 and cfg.optim.lr == 1e-5 and cfg.task.config == {"min_terms": 2}


def test_unknown_key_lists_allowed():
    with pytest.raises(ConfigError, match=r"unknown key 'rollout.groupsize'; allowed here: .*group_size"):
        load_config(None, ["rollout.groupsize=4"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"rollout.group_size: .*\(got 'many'\)"):
        load_config(None, ["rollout.group_size=many"])


def test_negative_value_rejected():
    with pytest.raises(ConfigError, match=r"optim.lr"):
        load_config(None, ["optim.lr=-1"])


def test_same_train_and_eval_seed_rejected():
    with pytest.raises(ConfigError, match="eval_seed must differ"):
        load_config(None, ["task.train_seed=3", "task.eval_seed=3"])


def test_template_needs_question():
    with pytest.raises(ConfigError, match=r"template"):
        load_config(None, ["task.template=hello"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_algorithm_lists_presets():
    cfg = load_config(None, ["algorithm.name=nope"])
    with pytest.raises(ValueError, match=r"unknown algorithm 'nope'; allowed: .*grpo"):
        build_algorithm(cfg.algorithm)


def test_part_swap_and_params():
    cfg = load_config(None, ["algorithm.aggregate=token_mean", "algorithm.params={kl: {coef: 0.1}}"])
    algo = build_algorithm(cfg.algorithm)
    assert type(algo.aggregate).__name__ == "TokenMean"
    assert algo.regularizers[0].coef == 0.1


def test_unknown_part_param_rejected():
    cfg = load_config(None, ["algorithm.params={kl: {beta: 0.1}}"])
    with pytest.raises(ConfigError, match=r"algorithm.params.kl: unknown \['beta'\]; allowed: .*coef"):
        build_algorithm(cfg.algorithm)


def test_params_for_absent_part_rejected():
    cfg = load_config(None, ["algorithm.params={entropy: {coef: 0.1}}"])
    with pytest.raises(ConfigError, match="not parts of 'grpo'"):
        build_algorithm(cfg.algorithm)
