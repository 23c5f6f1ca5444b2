"""Tasks: where examples come from, how they become prompts, and which reward scores them."""

from unipo.tasks.addition import AdditionTask
from unipo.tasks.sources import (
    LABEL_COLUMNS,
    TASK_SOURCES,
    TRAIN_PROMPT_OVERLAP,
    JsonlTask,
    ReasoningGymTask,
    Task,
    demonstration,
    hide_labels,
    make_task,
    overlap_record,
    prompt_overlap,
    split_overlap,
    task_from_config,
)
from unipo.tasks.templates import render_prompt

__all__ = [
    "LABEL_COLUMNS",
    "TASK_SOURCES",
    "TRAIN_PROMPT_OVERLAP",
    "AdditionTask",
    "JsonlTask",
    "ReasoningGymTask",
    "Task",
    "demonstration",
    "hide_labels",
    "make_task",
    "overlap_record",
    "prompt_overlap",
    "render_prompt",
    "split_overlap",
    "task_from_config",
]
