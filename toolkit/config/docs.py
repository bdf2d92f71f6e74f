"""A config documented from its fields: `croptune config show`'s key list, starter YAML, packaged configs."""

from __future__ import annotations

import textwrap
import types
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from toolkit.config.fields import ConfigPath, config_fields, field_shape, is_model


@dataclass(frozen=True)
class ConfigKey:
    """One key of a config as `croptune config show` lists it."""

    key: str  # dotted, e.g. fusion.policy, teachers[].model, prices.<model>.input
    type: str
    default: str  # YAML text of the default; "" for a required key or a section
    help: str
    required: bool = False


def _constraints(info: FieldInfo) -> str:
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = []
    for item in info.metadata:
        for attr, symbol in symbols.items():
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
    return ", ".join(parts)


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    if is_model(annotation):
        return "section"
    if origin is list:
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is tuple:
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    if origin is dict:
        return "mapping"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def field_type(info: FieldInfo) -> str:
    """A field's type as `config show` writes it: int, >= 1; png | jpeg; name or path; ..."""
    shape = field_shape(info.annotation)
    if shape.kind == "list":
        text = f"list of {shape.section.__name__} entries"
    elif shape.kind == "dict":
        text = f"mapping of NAME to {shape.section.__name__}"
    elif any(isinstance(m, ConfigPath) for m in info.metadata):
        text = "name or path"
    else:
        text = _type_text(info.annotation)
    bounds = _constraints(info)
    return f"{text}, {bounds}" if bounds else text


def _inline_yaml(value: Any) -> str:
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _default(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True)


def config_keys(cls: type[BaseModel], prefix: str = "") -> list[ConfigKey]:
    """Every key of a config with its type, default and help, nested keys dotted."""
    keys = []
    for key, info in config_fields(cls).items():
        shape = field_shape(info.annotation)
        dotted = prefix + key
        required = info.is_required()
        default = "" if required or shape.kind == "model" else _inline_yaml(_default(info))
        keys.append(ConfigKey(dotted, field_type(info), default, info.description or "", required))
        if shape.kind == "model":
            keys += config_keys(shape.section, f"{dotted}.")
        elif shape.kind == "list":
            keys += config_keys(shape.section, f"{dotted}[].")
        elif shape.kind == "dict":
            keys += config_keys(shape.section, f"{dotted}.<name>.")
    return keys


def missing_help(cls: type[BaseModel]) -> list[str]:
    """The dotted keys of a config (nested ones too) that have no help text."""
    return [k.key for k in config_keys(cls) if not k.help.strip()]


def describe_config(cls: type[BaseModel], width: int = 100) -> str:
    """Every key of a config, one block each: key, type, default, then the help text."""
    lines = []
    for key in config_keys(cls):
        default = "required" if key.required else (f"default {key.default}" if key.default else "")
        facts = "; ".join(part for part in (key.type, default) if part)
        lines.append(f"{key.key}  ({facts})")
        lines += textwrap.wrap(key.help, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def starter_yaml(cls: type[BaseModel], width: int = 96) -> str:
    """A commented YAML file holding every key of a config at its default."""
    return "\n".join(_starter_lines(cls, "", width)) + "\n"


def _comment(info: FieldInfo, indent: str, width: int) -> list[str]:
    return textwrap.wrap(
        info.description or "",
        max(40, width - len(indent)),
        initial_indent=f"{indent}# ",
        subsequent_indent=f"{indent}# ",
    )


def _starter_lines(cls: type[BaseModel], indent: str, width: int, first: str = "") -> list[str]:
    """YAML lines of every key at its default; `first` starts a list entry (`  - `).

    A required key has no default: it is written commented out (`# key:`), so the file still
    loads and validation names what is missing.
    """
    lines: list[str] = []
    for key, info in config_fields(cls).items():
        shape = field_shape(info.annotation)
        kind = field_type(info) + (", required" if info.is_required() else "")
        lines += _comment(info, indent, width)
        if info.is_required() and shape.kind not in ("model", "list"):
            lines.append(f"{indent}# {key}:  # {kind}")
            continue
        lead, first = (first or indent), ""
        if shape.kind == "model":
            lines.append(f"{lead}{key}:")
            lines += _starter_lines(shape.section, indent + "  ", width)
        elif shape.kind == "list" and info.is_required():
            lines.append(f"{lead}{key}:  # {kind}; the keys of one entry:")
            lines += _starter_lines(shape.section, indent + "    ", width, first=indent + "  - ")
        elif shape.kind == "dict":
            names = ", ".join(f"{name}: ..." for name in config_fields(shape.section))
            lines.append(f"{lead}{key}: {_inline_yaml(_default(info))}  # {kind}")
            lines.append(f"{indent}#   e.g. {key}: {{NAME: {{{names}}}}}")
        else:
            lines.append(f"{lead}{key}: {_inline_yaml(_default(info))}  # {kind}")
    if first:  # every key of the entry was required (commented out): an empty entry
        lines.append(f"{first}{{}}")
    return lines


def packaged_configs() -> dict[str, str]:
    """The starter configs installed with croptune (toolkit/configs/*.yaml): name -> text."""
    folder = resources.files("toolkit") / "configs"
    entries = sorted(
        (e for e in folder.iterdir() if e.name.endswith(".yaml")), key=lambda e: e.name
    )
    return {entry.name: entry.read_text(encoding="utf-8") for entry in entries}
