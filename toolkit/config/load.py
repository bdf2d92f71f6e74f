"""The one config loader: a YAML file plus `key=value` overrides -> a validated stage config.

A relative path written in a config file is resolved against that file's folder (so a config
works from any current directory); a relative path given as a `key=value` override is resolved
against the current directory, as any path on a command line is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from toolkit.config.keys import config_name, show_hint, unknown_keys
from toolkit.config.overrides import apply_overrides
from toolkit.config.paths import resolve_paths
from toolkit.errors import CroptuneError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


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


def prepare_config_data(
    cls: type[BaseModel],
    data: dict[str, Any],
    base: Path,
    origin: str,
    stage: str | None = None,
) -> dict[str, Any]:
    """Config data checked for unknown keys (named, with the closest key) and with its
    relative paths resolved against base (the config file's folder)."""
    unknown = unknown_keys(cls, data)
    if unknown:
        raise CroptuneError(
            f"unknown {config_name(cls, stage)} key{'s' if len(unknown) > 1 else ''} in {origin}: "
            f"{', '.join(unknown)}{show_hint(stage)}"
        )
    return resolve_paths(cls, data, base)


def config_error(exc: ValidationError, what: str) -> CroptuneError:
    """One readable message (key: problem; ...) for a config that fails validation."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        loc = ".".join(str(p) for p in error["loc"])
        problems.append(f"{loc}: {message}" if loc else message)
    return CroptuneError(f"{what} is not valid: {'; '.join(problems)}")


def load_stage_config(
    cls: type[ConfigT],
    path: Path | None,
    overrides: list[str],
    stage: str | None = None,
) -> ConfigT:
    """A stage config from YAML defaults and key=value overrides, validated.

    Relative paths in the file resolve against its folder, those in overrides against the
    current directory; `stage` names the config in messages (`croptune config show STAGE`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = prepare_config_data(
            cls, read_yaml_config(path), Path(os.path.abspath(path)).parent, str(path), stage
        )
    data = apply_overrides(data, overrides, cls, stage)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        origin = f" {path}" if path else ""
        raise config_error(exc, f"{config_name(cls, stage)}{origin}") from exc
