"""Your own reward function, named in a config as ``module:function`` or ``path/to/file.py:function``.

    rewards: [{name: "my_pkg.rewards:score", weight: 1.0, params: {scale: 2}}]
    rewards: [{name: "rewards/length.py:short_is_good"}]

The function has the one reward signature ``f(prompts, completions, **columns) ->
list[float | None]`` (see ``unipo.rewards.verifiers``); ``params`` become keyword arguments. A
module is imported as usual (it must be importable: installed, or on ``PYTHONPATH``; the current
directory is not added). A file path (it ends in ``.py`` or contains a path separator) is
relative to the current directory; the file is loaded once per process as its own module. The
term is logged under the function's name (``rewards/score_mean``). A bad module or file, a
missing attribute or a non-callable is a ``RewardSpecError`` with a one-line message.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

_FILE_MODULES: dict[Path, ModuleType] = {}  # resolved path -> module, so a file is executed once


class RewardSpecError(ValueError):
    """A ``module:function`` / ``file.py:function`` reward name that cannot be resolved."""


def is_user_reward(name: str) -> bool:
    """True when ``name`` refers to the user's own function (it contains ``:``)."""
    return ":" in name


def reward_label(name: str) -> str:
    """The name a reward term is logged under: the function's name for ``module:function``."""
    return name.rsplit(":", 1)[1] if is_user_reward(name) else name


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _load_file(spec: str, target: str) -> ModuleType:
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise RewardSpecError(f"reward {spec!r}: file {target!r} not found (looked for {path})")
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"unipo_user_reward_{path.stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise RewardSpecError(f"reward {spec!r}: {target!r} cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickle look a class's module up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise RewardSpecError(
            f"reward {spec!r}: running {target!r} failed: {type(err).__name__}: {err}"
        ) from err
    _FILE_MODULES[path] = module
    return module


def _import(spec: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name is not None and target.startswith(err.name) and target[len(err.name) :][:1] in ("", "."):
            raise RewardSpecError(
                f"reward {spec!r}: no module named {err.name!r} (is it installed or on PYTHONPATH? "
                f"a file is written as path/to/file.py:function)"
            ) from err
        raise RewardSpecError(f"reward {spec!r}: importing {target!r} failed: {err}") from err
    except Exception as err:
        raise RewardSpecError(
            f"reward {spec!r}: importing {target!r} failed: {type(err).__name__}: {err}"
        ) from err


def load_reward_fn(spec: str) -> Any:
    """The callable ``spec`` names (``module:function``, ``module:Class.method``, ``file.py:function``)."""
    target, _, attr_path = spec.rpartition(":")
    if not target or not attr_path:
        raise RewardSpecError(
            f"reward {spec!r}: write it as module:function or path/to/file.py:function"
        )
    module = _load_file(spec, target) if _is_file(target) else _import(spec, target)
    obj: Any = module
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            raise RewardSpecError(
                f"reward {spec!r}: {target!r} has no attribute {attr_path!r}; its callables: "
                f"{', '.join(public) or 'none'}"
            )
        obj = getattr(obj, attr)
    if not callable(obj):
        raise RewardSpecError(
            f"reward {spec!r}: {attr_path!r} is a {type(obj).__name__}, not a function "
            "f(prompts, completions, **columns) -> list[float | None]"
        )
    return obj
