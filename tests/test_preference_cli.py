"""`unipo train` runs preference presets (by name or from a preference config); `unipo preference` too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unipo.cli import app, route_train
from unipo.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.device=cpu", "task.train_size=20", "task.eval_size=2", "pairs.prompts_per_round=2",
    "pairs.group_size=4", "pairs.sampling.max_new_tokens=4", "optim.lr=1e-3", "optim.micro_batch_size=4",
    "eval.samples=2", "eval.ks=[1,2]", "eval.greedy=false", "train.rounds=1", "train.save_final=false",
]  # fmt: skip


def flat(output: str) -> str:  # rich wraps long lines: compare with single spaces
    return " ".join(output.split())


def offline_config(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"path": str(data), "chat": False},
        "loss": {"preset": "ipo"},
        "optim": {"lr": 1e-3, "batch_size": 4, "micro_batch_size": 4},
        "train": {"output_dir": str(out), "save_final": False},
    }
    path = tmp_path / "pref.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_route_train_picks_the_trainer():
    assert route_train(None, ["model.path=m"]) == ("rl", ["model.path=m"])
    assert route_train(None, ["algorithm.name=dapo"]) == ("rl", ["algorithm.name=dapo"])
    # a preference preset as algorithm.name becomes loss.preset (the last override wins)
    assert route_train(None, ["algorithm.name=grpo", "model.path=m", "algorithm.name=spo"]) == (
        "preference", ["model.path=m", "loss.preset=spo"],
    )  # fmt: skip
    assert route_train(None, ["loss.preset=dpo"]) == ("preference", ["loss.preset=dpo"])
    assert route_train(str(ROOT / "examples/preference/dpo_demo.yaml"), [])[0] == "preference"
    assert route_train(str(ROOT / "examples/grpo_chain_sum.yaml"), [])[0] == "rl"


def test_route_train_errors_name_both_registries():
    with pytest.raises(ConfigError) as e:
        route_train(None, ["algorithm.name=nope"])
    msg = str(e.value)
    assert "unknown algorithm 'nope': neither an RL algorithm (" in msg
    assert "grpo" in msg and "nor a preference preset (" in msg and "dpo" in msg and "spo" in msg
    with pytest.raises(ConfigError, match=r"'dpo' is a preference preset, but the config has RL sections"):
        route_train(str(ROOT / "examples/grpo_chain_sum.yaml"), ["algorithm.name=dpo"])
    with pytest.raises(
        ConfigError, match=r"'grpo' is an RL algorithm, but the config has preference sections"
    ):
        route_train(str(ROOT / "examples/preference/dpo_demo.yaml"), ["algorithm.name=grpo"])


def test_train_cli_rejects_unknown_name_listing_both(tiny_model_dir, tmp_path):
    args = [
        "train",
        f"model.path={tiny_model_dir}",
        "algorithm.name=nope",
        f"train.output_dir={tmp_path / 'x'}",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    text = flat(result.output)
    assert "unknown algorithm 'nope'" in text and "grpo" in text and "curry_dpo" in text
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_train_cli_runs_preference_preset_by_name(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(ROOT / "examples/preference/dpo_demo.yaml"), f"model.path={tiny_model_dir}",
            "algorithm.name=ipo", f"train.output_dir={out}", *TINY]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    assert summary(out)["preset"] == "ipo" and summary(out)["rounds"] == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"]["preset"] == "ipo"
    assert (out / "metrics.jsonl").exists() and (out / "plots").is_dir()


@pytest.mark.slow
def test_train_and_preference_cli_run_an_offline_preference_config(tiny_model_dir, tmp_path):
    cfg = offline_config(tmp_path, tiny_model_dir, tmp_path / "a")
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == 0, result.output[-3000:]
    assert summary(tmp_path / "a")["preset"] == "ipo" and summary(tmp_path / "a")["steps"] == 1
    # the same file through `unipo preference`, and a refused non-empty run directory
    result = CliRunner().invoke(app, ["preference", str(cfg), f"train.output_dir={tmp_path / 'b'}"])
    assert result.exit_code == 0, result.output[-3000:]
    assert summary(tmp_path / "b")["steps"] == 1
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2 and "--overwrite" in flat(result.output)


def test_preference_presets_listing_includes_spo():
    result = CliRunner().invoke(app, ["preference", "--presets"])
    assert result.exit_code == 0
    assert "spo" in result.output and "2409.17791" in flat(result.output)
