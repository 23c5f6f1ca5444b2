"""Reading configs: YAML files (UTF-8, no duplicate keys) and dotted ``key=value`` overrides.

``unipo.config`` validates what these return; everything here raises ``ConfigError`` with one line
that names the file or the override.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel


class ConfigError(ValueError):
    """A configuration problem, phrased for the user."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first given at line {first_line[key]})",
                    key_node.start_mark,
                )  # fmt: skip
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line: 'line L, column C: problem' for a marked YAML error, else the error's text."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (``yaml.YAMLError`` naming the key and line)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file. ``ConfigError`` (one line, naming the file) for
    a missing file, a file that is not UTF-8, invalid YAML, a duplicate key or a non-mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is fine
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        loaded = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: {_yaml_problem(e)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return loaded


def _field_annotation(model: type[BaseModel] | None, parts: list[str]) -> Any:
    """The annotation of the field a dotted key names in ``model`` (None when it is not a field:
    a key inside a dict-valued field such as ``task.config.x``, or an unknown key)."""
    cur: Any = model
    for i, part in enumerate(parts):
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        field = cur.model_fields.get(part)
        if field is None:
            return None
        if i == len(parts) - 1:
            return field.annotation
        args = typing.get_args(field.annotation) if _is_union(field.annotation) else (field.annotation,)
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        cur = models[0] if len(models) == 1 else None
    return None


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _parse_override_value(dotted: str, raw: str, ann: Any) -> Any:
    """The value of ``key=raw``: YAML, except that a ``str`` field takes the raw text when YAML would
    read something else (``task.template={question}`` is text, not a mapping); a ``str | None``
    field does the same but reads ``null`` / ``~`` as None. Quoted YAML strings lose their quotes."""
    if raw == "":
        return ""
    str_field = ann is str
    optional_str = _is_union(ann) and set(typing.get_args(ann)) == {str, type(None)}
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError as e:
        if str_field or optional_str:
            return raw
        raise ConfigError(f"override {dotted!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    if (str_field or optional_str) and not isinstance(value, str):
        return None if optional_str and value is None else raw
    return value


def apply_override(data: dict[str, Any], dotted: str, model: type[BaseModel] | None = None) -> None:
    """``a.b.c=value`` sets data['a']['b']['c'] to the YAML value (raw text for ``str`` fields of
    ``model``: see ``_parse_override_value``)."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    value = _parse_override_value(dotted, raw, _field_annotation(model, parts))
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: '{p}' is a value, not a section")
        cur = nxt
    cur[parts[-1]] = value
