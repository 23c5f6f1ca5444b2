"""Every shipped comparison spec (examples/compare/*.yaml) plans: each (variant, seed) cell's config
loads and its algorithm builds, as `unipo compare` checks before it starts any run."""

from __future__ import annotations

from pathlib import Path

import pytest

from unipo.diagnostics.compare import load_spec, plan_cells

SPECS = sorted((Path(__file__).resolve().parents[1] / "examples" / "compare").glob("*.yaml"))


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_comparison_spec_plans(spec_path, tmp_path, monkeypatch):
    spec = load_spec(spec_path)
    model = spec.base.get("model", {}).get("path")
    monkeypatch.chdir(tmp_path)  # the specs name runs/demo/warm_start relative to the checkout
    if model:
        Path(model).mkdir(parents=True)
    cells = plan_cells(spec)
    assert len(cells) == len(spec.variants) * len(spec.seeds)
    assert {c.variant for c in cells} == set(spec.variants)


def test_the_specs_are_found():
    assert {"entropy", "t2", "t2_adv", "t2_lr1e-4", "label_free"} <= {p.stem for p in SPECS}
