"""Reward shaping terms that an algorithm adds to the task reward (e.g. DAPO overlong punishment)."""
