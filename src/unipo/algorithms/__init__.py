"""Algorithms: frozen presets of parts, and the registry that names them."""

from unipo.algorithms.base import Algorithm, policy_loss
from unipo.algorithms.registry import get_algorithm, list_algorithms, register_algorithm

__all__ = ["Algorithm", "get_algorithm", "list_algorithms", "policy_loss", "register_algorithm"]
