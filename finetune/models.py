"""What a model value names (a bundle, an adapter folder, a model folder or id) and the
in-process student it opens; croptune.pipeline.open_model adds endpoint YAMLs on top."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml

from toolkit.bundle import ADAPTER_DIR, BUNDLE_FILE, MERGED_DIR, read_weights
from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from finetune.infer import TransformersBackend

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
# bundle: a `croptune export` folder; adapter: a `croptune train` LoRA folder; model: a
# transformers model (hub id, local folder, croptune:tiny).
ModelKind = Literal["bundle", "adapter", "model"]


@dataclass(frozen=True)
class StudentWeights:
    """What to load in-process: a model (hub id, folder, croptune:tiny) and maybe an adapter."""

    kind: ModelKind
    model: str
    adapter: Path | None = None


def model_kind(value: str | Path) -> ModelKind:
    """What a model value names, from its marker files (nothing is loaded).

    A path that does not exist, or a folder that is no model, adapter or bundle, is a
    CroptuneError now, not after the models before it have run.
    """
    text, path = str(value), Path(value)
    if (path / BUNDLE_FILE).is_file():
        return "bundle"
    if (path / ADAPTER_CONFIG).is_file():
        return "adapter"
    # Hub ids and croptune:tiny never start so.
    if text.startswith(("/", ".", "~")) and not path.exists():
        raise CroptuneError(f"model {text} does not exist")
    if path.is_dir() and not (path / MODEL_CONFIG).is_file():
        raise CroptuneError(
            f"{text} is not a model folder (no config.json), an adapter folder "
            "(adapter_config.json) or a bundle (croptune.yaml)"
        )
    return "model"


def student_weights(value: str | Path, base_model: str | None = None) -> StudentWeights:
    """The weights a model value names: a bundle's merged/ model (exported with --merge),
    else its base + adapter/; an adapter folder's base + itself; a model as it is.

    base_model: load the base from here (a local folder, a hub id, croptune:tiny) instead of
    the one the bundle or adapter names; the adapter then always goes on top of it.
    """
    kind, path = model_kind(value), Path(value)
    if kind == "model":
        if base_model is not None:
            raise CroptuneError(f"{value} is a model, not a bundle or adapter: no base to replace")
        return StudentWeights(kind, str(value))
    if kind == "adapter":
        return StudentWeights(kind, base_model or base_model_of(path), path)
    merged = path / MERGED_DIR
    if base_model is None and (merged / MODEL_CONFIG).is_file():
        return StudentWeights(kind, str(merged))
    base = base_model or read_weights(path).base_model
    if not base:
        raise CroptuneError(
            f"bundle {path} names no base_model in {BUNDLE_FILE}; export it again (with "
            "--base-model HUB_ID when it was trained from a local folder), or pass --base-model"
        )
    if not (path / ADAPTER_DIR / ADAPTER_CONFIG).is_file():
        raise CroptuneError(f"bundle {path} holds no {ADAPTER_DIR}/{ADAPTER_CONFIG}")
    return StudentWeights(kind, base, path / ADAPTER_DIR)


def open_student(
    value: str | Path,
    *,
    name: str | None = None,
    base_model: str | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 256,
) -> TransformersBackend:
    """The in-process answer backend of a bundle, adapter folder or model (see
    student_weights); named `name`, else the value itself. Weights load on first use."""
    from finetune.infer import TransformersBackend

    weights = student_weights(value, base_model)
    return TransformersBackend(
        weights.model,
        weights.adapter,
        name=name or str(value),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )


# --------------------------------------------------------------------------- an adapter's base


def read_yaml(path: Path) -> dict:
    """The mapping in a YAML file croptune wrote ({} when it is absent)."""
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def is_local_path(name: str) -> bool:
    """Whether a model name is a path of this machine (not a hub id or croptune:tiny)."""
    return (
        Path(name).is_absolute()
        or name.startswith(("./", "../", "~", ".\\"))
        or "\\" in name
        or Path(name).exists()
    )


def base_model_of(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, as loadable here (hub id, path or tiny name)."""
    train_config = read_yaml(Path(adapter_dir) / "train_config.yaml")
    base = train_config.get("model") or preset_model(train_config.get("student"))
    if base:
        return str(base)
    adapter_config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    return adapter_config.get("base_model_name_or_path") or ""


def local_base(adapter_dir: Path) -> str:
    """Where an adapter's base sits on this machine (a tiny student's cache folder), or its id."""
    from finetune.students import resolve_student

    return resolve_student(base_model_of(adapter_dir))


def preset_model(student: str | None) -> str | None:
    """The model a student preset names (a path or hub id given directly: itself)."""
    if not student:
        return None
    from finetune.students import load_preset

    try:
        return load_preset(student).model
    except CroptuneError:
        return student
