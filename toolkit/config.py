"""Stage configs: a YAML file sets the values, `key=value` arguments override them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from toolkit.errors import CroptuneError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def parse_override(text: str) -> tuple[list[str], Any]:
    """('a.b' -> ['a', 'b'], YAML-parsed value) from a `key=value` argument."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise CroptuneError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of data with each `key=value` (dotted keys reach into nested mappings) applied."""
    merged = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        target = merged
        for part in path[:-1]:
            nested = target.get(part)
            target[part] = dict(nested) if isinstance(nested, dict) else {}
            target = target[part]
        target[path[-1]] = value
    return merged


def read_yaml_config(path: Path | None) -> dict[str, Any]:
    """The mapping in a YAML config file ({} without a file)."""
    if path is None:
        return {}
    if not path.is_file():
        raise CroptuneError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CroptuneError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CroptuneError(f"config file {path} must hold a mapping of keys to values")
    return data


def load_stage_config(cls: type[ConfigT], path: Path | None, overrides: list[str]) -> ConfigT:
    """A stage config from YAML defaults and key=value overrides, validated."""
    data = apply_overrides(read_yaml_config(path), overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        origin = f" in {path}" if path else ""
        raise CroptuneError(f"{cls.__name__}{origin} is not valid: {problems}") from exc


class _PlainDumper(yaml.SafeDumper):
    """A SafeDumper that writes a value shared by two keys twice, never as &anchor/*alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any, width: int = 100) -> str:
    """Plain YAML for files people read (configs, croptune.yaml): keys in order, no anchors."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=width)
