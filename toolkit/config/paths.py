"""Relative paths in config data made absolute: against the file's folder, or the current directory."""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from toolkit.config.fields import ConfigPath, config_fields, field_shape, path_marker

_EXPLICIT_PATH = ("./", "../", "~", ".\\", "..\\")


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def _resolve_value(marker: ConfigPath, value: Any, base: Path, siblings: dict[str, Any]) -> Any:
    """A path value made absolute against base; names and non-path values unchanged."""
    if isinstance(value, PurePath):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return value  # true/false (resume_from_checkpoint), null
    if marker.when is not None and siblings.get(marker.when[0]) != marker.when[1]:
        return value
    if not marker.name_or_path:
        return _absolute(value, base)
    path = Path(value).expanduser()
    if (
        path.is_absolute()
        or value.startswith(_EXPLICIT_PATH)
        or path.suffix.lower() in marker.suffixes
        or (base / path).exists()
    ):
        return _absolute(value, base)
    return value  # a name: a built-in schema, a hub id, an architecture


def _with_defaults(cls: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """data plus the defaults of the keys it leaves out (for `ConfigPath.when`)."""
    merged = {}
    for key, info in config_fields(cls).items():
        if not info.is_required() and info.default_factory is None:
            merged[key] = info.default
    return {**merged, **data}


def resolve_paths(cls: type[BaseModel], data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of config data with every relative path (nested ones too) made absolute."""
    base = Path(os.path.abspath(base))
    fields = config_fields(cls)
    siblings = _with_defaults(cls, data)
    resolved = dict(data)
    for key, value in data.items():
        info = fields.get(key)
        if info is not None:
            resolved[key] = resolve_field(info, value, base, siblings)
    return resolved


def resolve_field(info: FieldInfo, value: Any, base: Path, siblings: dict[str, Any]) -> Any:
    """One field's value with its paths (nested ones too) made absolute against base."""
    shape = field_shape(info.annotation)
    if shape.kind == "model" and isinstance(value, dict):
        return resolve_paths(shape.section, value, base)
    if shape.kind == "list" and isinstance(value, list):
        return [resolve_paths(shape.section, v, base) if isinstance(v, dict) else v for v in value]
    if shape.kind == "dict" and isinstance(value, dict):
        return {
            k: resolve_paths(shape.section, v, base) if isinstance(v, dict) else v
            for k, v in value.items()
        }
    marker = path_marker(info)
    return value if marker is None else _resolve_value(marker, value, base, siblings)
