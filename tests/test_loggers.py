"""Loggers: metrics.jsonl and TensorBoard always; W&B, MLflow, Trackio offline when installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from unipo.train.loggers import (
    JsonlLogger,
    Logger,
    MultiLogger,
    TensorBoardLogger,
    make_loggers,
    numeric,
)

CONFIG = {"algorithm": {"name": "grpo", "clip": {"low": 0.2}}, "train": {"steps": 2}}
STEPS = [
    {"reward/mean": 0.25, "eval/pass@4": 0.5, "policy/entropy": 1.5},
    {"reward/mean": 0.75, "note": "text is skipped", "flag": True, "policy/entropy": 1.25},
]


def log_steps(logger: Logger) -> None:
    for i, m in enumerate(STEPS, start=1):
        logger.log(m, step=i)
    logger.close()


def test_numeric_skips_non_numbers():
    assert numeric({"a": 1, "b": 2.5, "c": "x", "d": None, "e": True, "f": [1]}) == {"a": 1.0, "b": 2.5}


def test_jsonl_logger_keeps_every_value(tmp_path):
    lg = JsonlLogger(tmp_path)
    assert isinstance(lg, Logger)
    log_steps(lg)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 1, **STEPS[0]}, {"step": 2, **STEPS[1]}]


def test_tensorboard_logger_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_steps(TensorBoardLogger(tmp_path, CONFIG))
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"reward/mean", "eval/pass@4", "policy/entropy"}
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]


def test_make_loggers_always_includes_jsonl(tmp_path):
    loggers = make_loggers(["tensorboard", "jsonl", "tensorboard"], tmp_path, CONFIG)
    assert [type(lg).__name__ for lg in loggers] == ["JsonlLogger", "TensorBoardLogger"]
    log_steps(MultiLogger(loggers))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    only = make_loggers([], tmp_path / "b", CONFIG)
    assert [type(lg).__name__ for lg in only] == ["JsonlLogger"]
    MultiLogger(only).close()


def test_unknown_logger_lists_the_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"unknown logger\(s\) \['neptune'\].*'jsonl'.*'trackio'"):
        make_loggers(["jsonl", "neptune"], tmp_path, CONFIG)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing built before validation


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_missing_package_says_what_to_install(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match=rf"pip install unipo\[{name}\]"):
        make_loggers([name], tmp_path, CONFIG)


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from unipo.train.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    log_steps(WandbLogger(tmp_path, CONFIG, settings={"console": "off"}))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_mlflow_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the logger sets when unset
    from unipo.train.loggers import MlflowLogger

    lg = MlflowLogger(tmp_path, CONFIG)
    log_steps(lg)
    run = lg.client.get_run(lg.run_id)
    assert run.data.metrics["reward/mean"] == 0.75 and run.data.metrics["eval/pass_4"] == 0.5
    assert run.data.params["algorithm.clip.low"] == "0.2" and run.info.status == "FINISHED"
    history = lg.client.get_metric_history(lg.run_id, "reward/mean")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (2, 0.75)]
    assert Path(lg.tracking_uri.removeprefix("file://")) == (tmp_path / "mlruns").resolve()


def test_trackio_local(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
    monkeypatch.delenv("TRACKIO_SERVER_URL", raising=False)
    pytest.importorskip("trackio")
    from unipo.train.loggers import TrackioLogger

    log_steps(TrackioLogger(tmp_path / "run", CONFIG))
    assert any(p.is_file() for p in (tmp_path / "trackio").rglob("*"))
