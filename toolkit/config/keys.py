"""Unknown config keys found and named, with the closest key (nested too) or where a key moved."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from toolkit.config.docs import config_keys
from toolkit.config.fields import config_fields, field_shape


def _all_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config, list entries as KEY[]."""
    return [k.key for k in config_keys(cls, prefix)]


def suggestion(cls: type[BaseModel], key: str, prefix: str) -> str:
    """' (did you mean ...?)' for a misspelt key, ' (where it went)' for a moved one, or ''."""
    moved: dict[str, str] = getattr(cls, "moved_keys", {})
    if key in moved:
        return f" ({moved[key]})"
    names = list(config_fields(cls))
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix + close[0]!r}?)"
    # A nested key written at the top (policy=union for fusion.policy) or misspelt there.
    nested = [k for k in _all_keys(cls) if "." in k]
    leaves = {k.rsplit(".", 1)[-1]: k for k in reversed(nested)}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {prefix + leaves[close[0]]!r}?)"
    return ""


def unknown_keys(cls: type[BaseModel], data: dict[str, Any], prefix: str = "") -> list[str]:
    """Each key of data (nested ones too) that the config does not have, with a suggestion."""
    problems = []
    fields = config_fields(cls)
    for key, value in data.items():
        info = fields.get(str(key))
        if info is None:
            problems.append(repr(f"{prefix}{key}") + suggestion(cls, str(key), prefix))
            continue
        problems += unknown_nested(info, value, f"{prefix}{key}")
    return problems


def unknown_nested(info: FieldInfo, value: Any, dotted: str) -> list[str]:
    """The unknown keys inside a section, list or dict value of one field (dotted from there)."""
    shape = field_shape(info.annotation)
    if shape.kind == "model" and isinstance(value, dict):
        return unknown_keys(shape.section, value, f"{dotted}.")
    if shape.kind == "list" and isinstance(value, list):
        return [
            problem
            for index, entry in enumerate(value)
            if isinstance(entry, dict)
            for problem in unknown_keys(shape.section, entry, f"{dotted}[{index}].")
        ]
    if shape.kind == "dict" and isinstance(value, dict):
        return [
            problem
            for name, entry in value.items()
            if isinstance(entry, dict)
            for problem in unknown_keys(shape.section, entry, f"{dotted}.{name}.")
        ]
    return []


def config_name(cls: type[BaseModel], stage: str | None) -> str:
    """What messages call a config: "train config", "endpoint config", or its class name."""
    # A stage's second config (evaluate's endpoint YAML) says what it is: "endpoint config".
    named = {"EndpointConfig": "endpoint", "JudgeConfig": "judge", "TeacherConfig": "teacher"}
    if cls.__name__ in named:
        return f"{named[cls.__name__]} config"
    return f"{stage} config" if stage else cls.__name__


def show_hint(stage: str | None) -> str:
    """The message tail pointing at `croptune config show STAGE` ("" without a stage)."""
    return f"; `croptune config show {stage}` lists every key" if stage else ""
