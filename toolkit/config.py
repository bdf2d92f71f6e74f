"""Stage configs: a YAML file sets the values, `key=value` arguments override them.

The one loader of every config croptune reads. A relative path written in a config file is
resolved against that file's folder (so a config works from any current directory); a
relative path given as a `key=value` override is resolved against the current directory, as
any path on a command line is. Configs croptune writes hold absolute paths.
"""

from __future__ import annotations

import copy
import difflib
import os
import textwrap
import types
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from toolkit.errors import CroptuneError

ConfigT = TypeVar("ConfigT", bound=BaseModel)

_EXPLICIT_PATH = ("./", "../", "~", ".\\", "..\\")


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
class _Shape:
    kind: Literal["model", "list", "dict", "mapping", "path", "value"]
    model: type[BaseModel] | None = None

    @property
    def section(self) -> type[BaseModel]:
        """The nested config class a model, list or dict shape holds."""
        if self.model is None:
            raise TypeError(f"a {self.kind!r} config field holds no nested config class")
        return self.model


@dataclass(frozen=True)
class ConfigKey:
    """One key of a config as `croptune config show` lists it."""

    key: str  # dotted, e.g. fusion.policy, teachers[].model, prices.<model>.input
    type: str
    default: str  # YAML text of the default; "" for a required key or a section
    help: str
    required: bool = False


# ------------------------------------------------------------------------- field shapes


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _shape(annotation: Any) -> _Shape:
    """What a field holds: a nested config, a list or mapping of them, a path, or a value."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if any(isinstance(a, type) and issubclass(a, PurePath) for a in members):
            return _Shape("path")
        return _shape(members[0]) if len(members) == 1 else _Shape("value")
    if _is_model(annotation):
        return _Shape("model", annotation)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return _Shape("path")
    if origin is list and args and _is_model(args[0]):
        return _Shape("list", args[0])
    if origin is dict:
        return (
            _Shape("dict", args[1]) if len(args) == 2 and _is_model(args[1]) else _Shape("mapping")
        )
    return _Shape("value")


def _fields(cls: type[BaseModel]) -> dict[str, FieldInfo]:
    """The keys a config file uses (aliases where set) -> their fields."""
    return {info.alias or name: info for name, info in cls.model_fields.items()}


def _path_marker(info: FieldInfo) -> ConfigPath | None:
    """How a field's value is resolved as a path: a marker, or None for no path at all."""
    for item in info.metadata:
        if isinstance(item, ConfigPath):
            return item
    return _PLAIN_PATH if _shape(info.annotation).kind == "path" else None


# ------------------------------------------------------------------------------- paths


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
    for key, info in _fields(cls).items():
        if not info.is_required() and info.default_factory is None:
            merged[key] = info.default
    return {**merged, **data}


def resolve_paths(cls: type[BaseModel], data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of config data with every relative path (nested ones too) made absolute."""
    base = Path(os.path.abspath(base))
    fields = _fields(cls)
    siblings = _with_defaults(cls, data)
    resolved = dict(data)
    for key, value in data.items():
        info = fields.get(key)
        if info is not None:
            resolved[key] = _resolve_field(info, value, base, siblings)
    return resolved


def _resolve_field(info: FieldInfo, value: Any, base: Path, siblings: dict[str, Any]) -> Any:
    shape = _shape(info.annotation)
    if shape.kind == "model" and isinstance(value, dict):
        return resolve_paths(shape.section, value, base)
    if shape.kind == "list" and isinstance(value, list):
        return [resolve_paths(shape.section, v, base) if isinstance(v, dict) else v for v in value]
    if shape.kind == "dict" and isinstance(value, dict):
        return {
            k: resolve_paths(shape.section, v, base) if isinstance(v, dict) else v
            for k, v in value.items()
        }
    marker = _path_marker(info)
    return value if marker is None else _resolve_value(marker, value, base, siblings)


def config_data(config: BaseModel, base: Path | None = None) -> dict[str, Any]:
    """A config as the plain mapping croptune saves: YAML keys, every path absolute."""
    data = config.model_dump(mode="json", by_alias=True)
    return resolve_paths(type(config), data, base or Path.cwd())


def dump_config(config: BaseModel) -> str:
    """A config as the YAML croptune saves next to what it produced (absolute paths)."""
    return dump_yaml(config_data(config))


# -------------------------------------------------------------------------- key checks


def _all_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config, list entries as KEY[]."""
    return [k.key for k in config_keys(cls, prefix)]


def _suggestion(cls: type[BaseModel], key: str, prefix: str) -> str:
    """' (did you mean ...?)' for a misspelt key, ' (where it went)' for a moved one, or ''."""
    moved: dict[str, str] = getattr(cls, "moved_keys", {})
    if key in moved:
        return f" ({moved[key]})"
    names = list(_fields(cls))
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


def _unknown_keys(cls: type[BaseModel], data: dict[str, Any], prefix: str = "") -> list[str]:
    """Each key of data (nested ones too) that the config does not have, with a suggestion."""
    problems = []
    fields = _fields(cls)
    for key, value in data.items():
        info = fields.get(str(key))
        if info is None:
            problems.append(repr(f"{prefix}{key}") + _suggestion(cls, str(key), prefix))
            continue
        problems += _unknown_nested(info, value, f"{prefix}{key}")
    return problems


def _unknown_nested(info: FieldInfo, value: Any, dotted: str) -> list[str]:
    shape = _shape(info.annotation)
    if shape.kind == "model" and isinstance(value, dict):
        return _unknown_keys(shape.section, value, f"{dotted}.")
    if shape.kind == "list" and isinstance(value, list):
        return [
            problem
            for index, entry in enumerate(value)
            if isinstance(entry, dict)
            for problem in _unknown_keys(shape.section, entry, f"{dotted}[{index}].")
        ]
    if shape.kind == "dict" and isinstance(value, dict):
        return [
            problem
            for name, entry in value.items()
            if isinstance(entry, dict)
            for problem in _unknown_keys(shape.section, entry, f"{dotted}.{name}.")
        ]
    return []


def _what(cls: type[BaseModel], stage: str | None) -> str:
    # A stage's second config (evaluate's endpoint YAML) says what it is: "endpoint config".
    named = {"EndpointConfig": "endpoint", "JudgeConfig": "judge", "TeacherConfig": "teacher"}
    if cls.__name__ in named:
        return f"{named[cls.__name__]} config"
    return f"{stage} config" if stage else cls.__name__


def _hint(stage: str | None) -> str:
    return f"; `croptune config show {stage}` lists every key" if stage else ""


# --------------------------------------------------------------------------- overrides


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
    shape = _Shape("model", cls)
    info: FieldInfo | None = None
    key: str | int  # a mapping key, or a list index
    done: list[str] = []
    where = f"in override {text!r}"
    for depth, part in enumerate(path):
        dotted = ".".join([*done, part])
        if shape.kind == "model":
            fields = _fields(shape.section)
            if part not in fields:
                prefix = ".".join(done) + "." if done else ""
                raise CroptuneError(
                    f"unknown {_what(cls, stage)} key {dotted!r} {where}"
                    f"{_suggestion(shape.section, part, prefix)}{_hint(stage)}"
                )
            info, key = fields[part], part
            child_shape = _shape(info.annotation)
        elif shape.kind == "list":
            if not part.isdigit() or int(part) >= len(node):
                raise CroptuneError(
                    f"override {text!r}: {'.'.join(done)} has {len(node)} entr"
                    f"{'y' if len(node) == 1 else 'ies'}; index them 0..{len(node) - 1}, or "
                    f"set the whole list ({'.'.join(done)}=[...])"
                )
            info, key, child_shape = None, int(part), _Shape("model", shape.section)
        elif shape.kind == "dict":
            info, key, child_shape = None, part, _Shape("model", shape.section)
        else:  # a free mapping (sft_args)
            info, key, child_shape = None, part, _Shape("value")
        if depth == len(path) - 1:
            # A whole section or list as the value (teachers=[{...}]): its keys checked too.
            unknown = (
                _unknown_nested(info, value, dotted)
                if info is not None
                else _unknown_keys(child_shape.section, value, f"{dotted}.")
                if child_shape.kind == "model" and isinstance(value, dict)
                else []
            )
            if unknown:
                raise CroptuneError(
                    f"unknown {_what(cls, stage)} key{'s' if len(unknown) > 1 else ''} {where}: "
                    f"{', '.join(unknown)}{_hint(stage)}"
                )
            node[key] = _override_value(info, child_shape, value, node)
            return
        if child_shape.kind in ("path", "value"):
            level = shape.section if shape.kind == "model" else cls
            nested = [
                k
                for k, f in _fields(level).items()
                if _shape(f.annotation).kind not in ("path", "value")
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


def _override_value(info: FieldInfo | None, shape: _Shape, value: Any, siblings: Any) -> Any:
    """An override's value with its paths resolved against the current directory."""
    cwd = Path.cwd()
    if shape.kind == "model" and isinstance(value, dict):
        return resolve_paths(shape.section, value, cwd)
    if info is None:
        return value
    siblings = siblings if isinstance(siblings, dict) else {}
    return _resolve_field(info, value, cwd, siblings)


# ----------------------------------------------------------------------------- loading


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
    unknown = _unknown_keys(cls, data)
    if unknown:
        raise CroptuneError(
            f"unknown {_what(cls, stage)} key{'s' if len(unknown) > 1 else ''} in {origin}: "
            f"{', '.join(unknown)}{_hint(stage)}"
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
        raise config_error(exc, f"{_what(cls, stage)}{origin}") from exc


# -------------------------------------------------------------------- documentation


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
    if _is_model(annotation):
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
    shape = _shape(info.annotation)
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
    for key, info in _fields(cls).items():
        shape = _shape(info.annotation)
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
    for key, info in _fields(cls).items():
        shape = _shape(info.annotation)
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
            names = ", ".join(f"{name}: ..." for name in _fields(shape.section))
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


# ------------------------------------------------------------------------ YAML writing


class _PlainDumper(yaml.SafeDumper):
    """A SafeDumper that writes a value shared by two keys twice, never as &anchor/*alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any, width: int = 100) -> str:
    """Plain YAML for files people read (configs, croptune.yaml): keys in order, no anchors."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=width)
