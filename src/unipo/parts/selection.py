"""Selections: ``sel(batch) -> (smaller or reweighted batch, metrics)``."""
