"""Shared fixtures: a tiny offline model directory built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unipo.models import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    return build_tiny_model(out, hidden_size=32, num_layers=1, num_heads=2, seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path):
    from unipo.models import load_model

    return load_model(tiny_model_dir, dtype="float32")
