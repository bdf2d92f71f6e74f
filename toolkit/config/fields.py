"""What a config field holds: a nested config, a list or mapping of them, a path, or a value."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class ConfigPath:
    """Marks a str config field that takes a name or a path (as `Annotated` metadata).

    Fields typed `Path` are paths without this marker. A name-or-path value (a built-in
    schema, a hub id, an architecture name) is taken as a path, and resolved, when it is
    written as one (./, ../, ~), ends with one of `suffixes`, or names a file or folder that
    exists relative to the config's folder; otherwise it stays the name it is.
    """

    suffixes: tuple[str, ...] = ()
    when: tuple[str, str] | None = None  # only when this sibling key has this value
    name_or_path: bool = True  # False: always a path (what fields typed Path get)


_PLAIN_PATH = ConfigPath(name_or_path=False)


@dataclass(frozen=True)
class Shape:
    """What one config field holds; `model` is the nested config class of a section."""

    kind: Literal["model", "list", "dict", "mapping", "path", "value"]
    model: type[BaseModel] | None = None

    @property
    def section(self) -> type[BaseModel]:
        """The nested config class a model, list or dict shape holds."""
        if self.model is None:
            raise TypeError(f"a {self.kind!r} config field holds no nested config class")
        return self.model


def is_model(annotation: Any) -> bool:
    """Whether an annotation is a nested config class (a pydantic model)."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def field_shape(annotation: Any) -> Shape:
    """What a field holds: a nested config, a list or mapping of them, a path, or a value."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if any(isinstance(a, type) and issubclass(a, PurePath) for a in members):
            return Shape("path")
        return field_shape(members[0]) if len(members) == 1 else Shape("value")
    if is_model(annotation):
        return Shape("model", annotation)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return Shape("path")
    if origin is list and args and is_model(args[0]):
        return Shape("list", args[0])
    if origin is dict:
        return Shape("dict", args[1]) if len(args) == 2 and is_model(args[1]) else Shape("mapping")
    return Shape("value")


def config_fields(cls: type[BaseModel]) -> dict[str, FieldInfo]:
    """The keys a config file uses (aliases where set) -> their fields."""
    return {info.alias or name: info for name, info in cls.model_fields.items()}


def path_marker(info: FieldInfo) -> ConfigPath | None:
    """How a field's value is resolved as a path: a marker, or None for no path at all."""
    for item in info.metadata:
        if isinstance(item, ConfigPath):
            return item
    return _PLAIN_PATH if field_shape(info.annotation).kind == "path" else None
