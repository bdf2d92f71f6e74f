"""Writing YAML people read: plain YAML without anchors, and a config as croptune saves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from toolkit.config.paths import resolve_paths


class _PlainDumper(yaml.SafeDumper):
    """A SafeDumper that writes a value shared by two keys twice, never as &anchor/*alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any, width: int = 100) -> str:
    """Plain YAML for files people read (configs, croptune.yaml): keys in order, no anchors."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=width)


def config_data(config: BaseModel, base: Path | None = None) -> dict[str, Any]:
    """A config as the plain mapping croptune saves: YAML keys, every path absolute."""
    data = config.model_dump(mode="json", by_alias=True)
    return resolve_paths(type(config), data, base or Path.cwd())


def dump_config(config: BaseModel) -> str:
    """A config as the YAML croptune saves next to what it produced (absolute paths)."""
    return dump_yaml(config_data(config))
