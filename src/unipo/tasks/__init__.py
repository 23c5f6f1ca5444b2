"""Tasks: where examples come from, how they become prompts, and which reward scores them."""

from unipo.tasks.addition import AdditionTask
from unipo.tasks.pools import held_out_examples
from unipo.tasks.sources import (
    TASK_SOURCES,
    JsonlTask,
    ReasoningGymTask,
    Task,
    demonstration,
    make_task,
    split_overlap,
    task_from_config,
)
from unipo.tasks.templates import render_prompt

__all__ = [
    "TASK_SOURCES",
    "AdditionTask",
    "JsonlTask",
    "ReasoningGymTask",
    "Task",
    "demonstration",
    "held_out_examples",
    "make_task",
    "render_prompt",
    "split_overlap",
    "task_from_config",
]
