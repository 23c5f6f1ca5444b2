"""Preference optimization: the DPO family and the seed papers' variants on one core.

PreferenceExample / PreferenceBatch   typed data (a pair is a ranked list of K = 2), batch.py
PreferenceInputs, PREFERENCE_LOSSES   one loss signature, losses.py + losses_t2.py
PRESETS, get_preset, list_presets     name → loss + defaults + paper, presets.py
load_preference_data                  JSONL / parquet / datasets folders, data.py
sample_preferences, CurriculumOrdering   on-policy pairs from a verifier, pairs.py
add_variants, variant_inputs          SPO's key-content-removed copies of responses, variants.py
PreferenceTrainer, load_preference_config   the loop and its config, trainer.py / config.py
"""

from unipo.preference.batch import PreferenceBatch, PreferenceExample
from unipo.preference.config import PreferenceConfig, load_preference_config
from unipo.preference.losses import PREFERENCE_LOSSES, PreferenceInputs, PreferenceLoss, make_loss
from unipo.preference.pairs import CurriculumOrdering, sample_preferences
from unipo.preference.presets import PRESETS, PreferencePreset, get_preset, list_presets

__all__ = [
    "PREFERENCE_LOSSES",
    "PRESETS",
    "CurriculumOrdering",
    "PreferenceBatch",
    "PreferenceConfig",
    "PreferenceExample",
    "PreferenceInputs",
    "PreferenceLoss",
    "PreferencePreset",
    "PreferenceTrainer",
    "get_preset",
    "list_presets",
    "load_preference_config",
    "make_loss",
    "sample_preferences",
]


def __getattr__(name: str) -> object:  # the trainer pulls in models/rollout: import it on first use
    if name == "PreferenceTrainer":
        from unipo.preference.trainer import PreferenceTrainer

        return PreferenceTrainer
    raise AttributeError(f"module 'unipo.preference' has no attribute {name!r}")
