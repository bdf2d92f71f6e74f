"""`key=value` overrides: parsed as YAML, dotted keys and list indexes, keys checked, paths resolved."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from toolkit.config.fields import Shape, config_fields, field_shape
from toolkit.config.keys import config_name, show_hint, suggestion, unknown_keys, unknown_nested
from toolkit.config.paths import resolve_field, resolve_paths
from toolkit.errors import CroptuneError


def parse_override(text: str) -> tuple[list[str], Any]:
    """('a.b' -> ['a', 'b'], YAML-parsed value) from a `key=value` argument."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        if text.startswith("-"):
            raise CroptuneError(
                f"{text!r} is neither an option of this command nor a key=value override"
            )
        raise CroptuneError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(
    data: dict[str, Any],
    overrides: list[str],
    cls: type[BaseModel] | None = None,
    stage: str | None = None,
) -> dict[str, Any]:
    """A copy of data with each `key=value` applied (dotted keys reach nested keys, numbers
    index lists: teachers.0.model=...); with cls, keys are checked and paths resolved
    against the current directory."""
    merged = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        if cls is None:
            _set_plain(merged, path, value)
        else:
            _set_checked(cls, merged, path, value, text, stage)
    return merged


def _set_plain(data: dict[str, Any], path: list[str], value: Any) -> None:
    target = data
    for part in path[:-1]:
        nested = target.get(part)
        target[part] = nested if isinstance(nested, dict) else {}
        target = target[part]
    target[path[-1]] = value


def _set_checked(
    cls: type[BaseModel],
    data: dict[str, Any],
    path: list[str],
    value: Any,
    text: str,
    stage: str | None,
) -> None:
    """Set one override in data, naming an unknown key or a dotted key that reaches nothing."""
    node: Any = data
    shape = Shape("model", cls)
    info: FieldInfo | None = None
    key: str | int  # a mapping key, or a list index
    done: list[str] = []
    where = f"in override {text!r}"
    for depth, part in enumerate(path):
        dotted = ".".join([*done, part])
        if shape.kind == "model":
            fields = config_fields(shape.section)
            if part not in fields:
                prefix = ".".join(done) + "." if done else ""
                raise CroptuneError(
                    f"unknown {config_name(cls, stage)} key {dotted!r} {where}"
                    f"{suggestion(shape.section, part, prefix)}{show_hint(stage)}"
                )
            info, key = fields[part], part
            child_shape = field_shape(info.annotation)
        elif shape.kind == "list":
            if not part.isdigit() or int(part) >= len(node):
                raise CroptuneError(
                    f"override {text!r}: {'.'.join(done)} has {len(node)} entr"
                    f"{'y' if len(node) == 1 else 'ies'}; index them 0..{len(node) - 1}, or "
                    f"set the whole list ({'.'.join(done)}=[...])"
                )
            info, key, child_shape = None, int(part), Shape("model", shape.section)
        elif shape.kind == "dict":
            info, key, child_shape = None, part, Shape("model", shape.section)
        else:  # a free mapping (sft_args)
            info, key, child_shape = None, part, Shape("value")
        if depth == len(path) - 1:
            # A whole section or list as the value (teachers=[{...}]): its keys checked too.
            unknown = (
                unknown_nested(info, value, dotted)
                if info is not None
                else unknown_keys(child_shape.section, value, f"{dotted}.")
                if child_shape.kind == "model" and isinstance(value, dict)
                else []
            )
            if unknown:
                raise CroptuneError(
                    f"unknown {config_name(cls, stage)} key{'s' if len(unknown) > 1 else ''} {where}: "
                    f"{', '.join(unknown)}{show_hint(stage)}"
                )
            node[key] = _override_value(info, child_shape, value, node)
            return
        if child_shape.kind in ("path", "value"):
            level = shape.section if shape.kind == "model" else cls
            nested = [
                k
                for k, f in config_fields(level).items()
                if field_shape(f.annotation).kind not in ("path", "value")
            ]
            reachable = ", ".join(f"{k}.<key>" for k in nested) or "none"
            raise CroptuneError(
                f"override {text!r}: {dotted} takes no dotted keys (only {reachable} do)"
            )
        child = node.get(key) if isinstance(node, dict) else node[key]
        if child_shape.kind == "list":
            if not isinstance(child, list):
                raise CroptuneError(
                    f"override {text!r}: {dotted} has no entries to index yet; set the whole "
                    f"list ({dotted}=[...])"
                )
        elif not isinstance(child, dict):
            child = {}
            node[key] = child
        node, shape = child, child_shape
        done.append(part)


def _override_value(info: FieldInfo | None, shape: Shape, value: Any, siblings: Any) -> Any:
    """An override's value with its paths resolved against the current directory."""
    cwd = Path.cwd()
    if shape.kind == "model" and isinstance(value, dict):
        return resolve_paths(shape.section, value, cwd)
    if info is None:
        return value
    siblings = siblings if isinstance(siblings, dict) else {}
    return resolve_field(info, value, cwd, siblings)
