"""``unipo_task.json``: the prompt format and task a saved model was trained with.

unipo writes it beside the weights wherever it saves a model (``save_model(..., task=...)``: a
run's ``final/``, a preference run's ``final/``, the demo's warm start). It holds dotted config
keys, spelled as ``unipo eval`` overrides::

    {"unipo_task": 1, "settings": {"task.name": "chain_sum", "task.config": {...},
     "task.template": "{question}", "task.chat": false, "rollout.sampling.max_new_tokens": 8, ...}}

``task.chat`` is stored resolved (true/false, never null), since null means "whatever the
tokenizer has", and ``task.path`` as an absolute path.

* ``unipo eval MODEL`` takes every saved key the user does not set (in ``--config`` or as an
  override) from this file, and prints the keys the user set to another value (``eval_settings``).
  A user who names another task (``task.name``, ``task.source`` or ``task.path``) keeps the
  model's prompt format but not its task keys (dataset options, seeds, sizes).
* A training run whose prompt format (template, chat, system prompt) differs from the model's
  warns (``prompt_format_warning``), since a model scored on prompts it never saw is
  measured on a format, not on the task.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

TASK_FILE = "unipo_task.json"
VERSION = 1
FORMAT_KEYS = ("task.template", "task.chat", "task.system_prompt", "rollout.sampling.max_new_tokens")
"""Keys of the prompt format (how a question becomes the text the model sees, and how long it may answer)."""
IDENTITY_KEYS = ("task.source", "task.name", "task.path")
"""A user who sets one of these to another value evaluates another task: the task keys are not taken."""
PROMPT_KEYS = ("task.template", "task.chat", "task.system_prompt")
"""The keys a training run warns about when they differ from the model's."""


class UnipoWarning(UserWarning):
    """A warning of unipo's own (the CLI prints these as one ``warning: ...`` line)."""


class PromptFormatWarning(UnipoWarning):
    """A run formats prompts otherwise than the model was trained with."""


def task_settings(task: Any, tokenizer: Any, max_new_tokens: int | None = None) -> dict[str, Any]:
    """The settings to save with a model trained on ``task`` (a ``TaskConfig``), as dotted keys.

    ``task.chat`` is resolved with ``tokenizer`` (None → whether it has a chat template).
    """
    fields = task.model_dump(mode="json")
    if fields.get("chat") is None:
        fields["chat"] = bool(getattr(tokenizer, "chat_template", None))
    if fields.get("path"):
        fields["path"] = str(Path(fields["path"]).resolve())
    out = {f"task.{k}": v for k, v in fields.items()}
    if max_new_tokens is not None:
        out["rollout.sampling.max_new_tokens"] = int(max_new_tokens)
    return out


def format_settings(
    template: str, chat: bool | None, system_prompt: str | None, tokenizer: Any
) -> dict[str, Any]:
    """Prompt-format keys alone (a preference run on offline data: its ``data.template`` etc.)."""
    resolved = bool(getattr(tokenizer, "chat_template", None)) if chat is None else bool(chat)
    return {"task.template": template, "task.chat": resolved, "task.system_prompt": system_prompt}


def write_task_file(model_dir: str | Path, settings: dict[str, Any]) -> Path:
    path = Path(model_dir) / TASK_FILE
    text = json.dumps({"unipo_task": VERSION, "settings": settings}, indent=2, sort_keys=True)
    path.write_text(text + "\n")
    return path


def read_task_file(model_dir: str | Path) -> dict[str, Any] | None:
    """The saved settings of ``model_dir`` (None when it has no ``unipo_task.json``)."""
    path = Path(model_dir) / TASK_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); delete it or fix it") from None
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} has no 'settings' mapping; delete it or fix it")
    return settings


def _paths(data: Any, prefix: str = "") -> set[str]:
    """Every dotted path of a nested mapping, inner nodes included: {"a": {"b": 1}} → {a, a.b}."""
    out: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}{k}"
            out.add(key)
            out |= _paths(v, key + ".")
    return out


def _get(data: Any, dotted: str) -> Any:
    cur = data
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else getattr(cur, part, None)
    return cur


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "task.path" and a and b:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    return a == b


def eval_settings(saved: dict[str, Any], user: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(overrides that fill in the saved settings, the keys the user set to another value).

    ``user`` is the raw config mapping (the ``--config`` file with the user's overrides applied).
    Saved keys the user set are left to the user; the others become ``key=value`` overrides. When
    the user names another task, only the format keys are taken.
    """
    explicit = _paths(user)
    other_task = any(
        k in explicit and k in saved and not _same(k, _get(user, k), saved[k]) for k in IDENTITY_KEYS
    )
    fill = [
        f"{k}={json.dumps(v)}"
        for k, v in saved.items()
        if k not in explicit and (k in FORMAT_KEYS or not other_task)
    ]
    differ = [
        f"{k}: trained with {json.dumps(saved[k])}, now {json.dumps(_get(user, k))}"
        for k in saved
        if k in explicit and not _same(k, _get(user, k), saved[k])
    ]
    return fill, differ


def prompt_format_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """``key: model trained with X, this run uses Y`` for the prompt keys that differ."""
    if not saved:
        return []
    return [
        f"{k}: the model was trained with {json.dumps(saved[k])}, this run uses {json.dumps(current[k])}"
        for k in PROMPT_KEYS
        if k in saved and k in current and saved[k] != current[k]
    ]


def prompt_format_warning(model_dir: str | Path, current: dict[str, Any]) -> list[str]:
    """Warn (``PromptFormatWarning``) when a run's prompt format differs from ``model_dir``'s saved one.

    ``current``: the run's settings (``task_settings`` or ``format_settings``). Returns the differences.
    """
    try:
        saved = read_task_file(model_dir)
    except ValueError as e:
        warnings.warn(str(e), UnipoWarning, stacklevel=2)
        return []
    diffs = prompt_format_differences(saved, current)
    if diffs:
        warnings.warn(
            f"the prompt format differs from the one {model_dir} was trained with "
            f"({Path(model_dir) / TASK_FILE}): " + "; ".join(diffs)
            + ". Its scores then measure an unfamiliar format; set these keys to the trained values "
            "unless the change is intended.",
            PromptFormatWarning,
            stacklevel=2,
        )
    return diffs
