"""Metric loggers: the run's ``metrics.jsonl`` (always) plus TensorBoard, W&B, MLflow, Trackio.

Every logger has the same two methods (``log(metrics, step)``, ``close()``) and writes inside the
run directory or offline by default, so a run needs no network and no account:

- ``jsonl``: ``run_dir/metrics.jsonl`` (``unipo report`` reads it; always on).
- ``tensorboard``: ``run_dir/tensorboard`` (``tensorboard --logdir run_dir/tensorboard``).
- ``wandb``: offline run under ``run_dir/wandb`` (upload later with ``wandb sync``).
- ``mlflow``: file store ``run_dir/mlruns`` (``mlflow ui --backend-store-uri run_dir/mlruns``).
- ``trackio``: trackio's local store (``$TRACKIO_DIR``, default under the HF cache; ``trackio show``).

The optional ones import their package only when asked for. ``check_loggers`` finds an unknown
name or a missing package before a run starts (the CLI calls it before the run directory is made);
both are ``ValueError``s (the missing package a ``LoggerUnavailable``, also an ``ImportError``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from unipo.train.run_dir import MetricsLog


@runtime_checkable
class Logger(Protocol):
    """Receives one dict of metrics per step; ``close`` flushes and releases files or processes."""

    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` as floats (strings, None, bools and lists are skipped)."""
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class LoggerUnavailable(ImportError, ValueError):
    """An optional logger's package is not installed (the message says what to install)."""


REQUIRES: dict[str, tuple[str, str]] = {  # logger → (module it imports, pip install argument)
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "unipo[wandb]"),
    "mlflow": ("mlflow", "unipo[mlflow]"),
    "trackio": ("trackio", "unipo[trackio]"),
}


def _missing_message(logger: str, module: str, install: str) -> str:
    return (
        f"train.loggers has {logger!r}, which needs the '{module}' package, not installed here: "
        f"pip install {install} (or remove {logger} from train.loggers)"
    )


def _require(module: str, install: str) -> ModuleType:
    """Import ``module`` or say how to install it (``install``: the pip argument)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        logger = next((k for k, (m, _) in REQUIRES.items() if m == module), module)
        raise LoggerUnavailable(_missing_message(logger, module, install)) from e


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_loggers(names: list[str]) -> None:
    """Raise for an unknown logger name (``ValueError``) or a missing package (``LoggerUnavailable``)
    without importing or creating anything: call it before a run directory is made."""
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; choose from {list(FACTORIES)}")
    for name in names:
        if name in REQUIRES and not _installed(REQUIRES[name][0]):
            raise LoggerUnavailable(_missing_message(name, *REQUIRES[name]))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for trackers that take flat parameters)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class JsonlLogger:
    """Appends ``{"step": step, **metrics}`` to ``run_dir/metrics.jsonl`` (fsynced; keeps every value)."""

    def __init__(self, run_dir: str | Path, filename: str = "metrics.jsonl") -> None:
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log = MetricsLog(self.path)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._log.write({"step": step, **metrics})

    def close(self) -> None:
        self._log.close()


class TensorBoardLogger:
    """Scalars to ``run_dir/tensorboard`` via ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        _require("tensorboard", "tensorboard")  # a core dependency
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        if config:
            import yaml

            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "))  # markdown code block

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in numeric(metrics).items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Weights & Biases, offline by default: the run lands in ``run_dir/wandb`` (``wandb sync`` it)."""

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        project: str = "unipo",
        mode: str = "offline",
        **init_kwargs: Any,
    ) -> None:
        wandb = _require("wandb", "unipo[wandb]")
        run_dir = Path(run_dir)
        init_kwargs.setdefault("name", run_dir.name)
        self.run = wandb.init(
            project=project, dir=str(run_dir), mode=mode, config=config or {}, **init_kwargs
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(numeric(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


_MLFLOW_BAD = re.compile(r"[^\w\-. /]")  # MLflow keys: alphanumerics, _ - . space /


class MlflowLogger:
    """MLflow, by default a file store at ``run_dir/mlruns``; the flattened config becomes parameters.

    MLflow ≥ 3.7 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set; this sets it to
    ``true`` when unset (the store works, it only gets no new features). Pass ``tracking_uri``
    (e.g. ``sqlite:///path/mlflow.db``, which needs the full ``mlflow`` package) to log elsewhere.
    Keys with characters MLflow refuses (``eval/pass@4``) are logged with ``_`` in their place.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        experiment: str = "unipo",
        tracking_uri: str | None = None,
    ) -> None:
        _require("mlflow", "unipo[mlflow]")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        if tracking_uri is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            tracking_uri = (run_dir / "mlruns").resolve().as_uri()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
        params = [Param(self._key(k), str(v)[:500]) for k, v in flatten(config or {}).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    @staticmethod
    def _key(key: str) -> str:
        return _MLFLOW_BAD.sub("_", key)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(self._key(k), v, now, step) for k, v in numeric(metrics).items()]
        for i in range(0, len(batch), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioLogger:
    """Trackio, local (no Space): writes to trackio's local store; view with ``trackio show``."""

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        project: str = "unipo",
        **init_kwargs: Any,
    ) -> None:
        trackio = _require("trackio", "unipo[trackio]")
        init_kwargs.setdefault("name", Path(run_dir).name)
        self.run = trackio.init(project=project, config=config or {}, **init_kwargs)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(numeric(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MultiLogger:
    """Fans ``log``/``close`` out to several loggers (``close`` reaches every one, then re-raises)."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        errors = []
        for lg in self.loggers:
            try:
                lg.close()
            except Exception as e:  # close the rest before reporting
                errors.append(e)
        if errors:
            raise errors[0]


FACTORIES: dict[str, Callable[[Path, dict[str, Any]], Logger]] = {
    "jsonl": lambda run_dir, config: JsonlLogger(run_dir),
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
    "mlflow": MlflowLogger,
    "trackio": TrackioLogger,
}


def make_loggers(names: list[str], run_dir: str | Path, config: dict[str, Any]) -> list[Logger]:
    """Build the named loggers for ``run_dir``; ``jsonl`` comes first and is always included.

    Raises ``ValueError`` for an unknown name and ``ImportError`` (with the pip command) for an
    optional logger whose package is missing; nothing is left open when either happens.
    """
    check_loggers(names)
    run_dir = Path(run_dir)
    wanted = ["jsonl", *dict.fromkeys(n for n in names if n != "jsonl")]
    built: list[Logger] = []
    try:
        for name in wanted:
            built.append(FACTORIES[name](run_dir, config))
    except BaseException:
        MultiLogger(built).close()
        raise
    return built
