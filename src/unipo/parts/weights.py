"""Token weights: ``w(x: LossInputs) -> (weights [B, T] >= 0, metrics)``."""
