"""Model folders under the published checkpoints' weight names (what vLLM's loaders expect)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Weight-name prefixes as the published checkpoints have them, per model_type: what vLLM's
# loaders expect. transformers 5 loads google/gemma-3-*'s vision_tower.vision_model.* into a
# flattened SigLIP and writes that layout back, but a Gemma 3 built from a config saves
# vision_tower.* bare, which vLLM 0.32 refuses ("no module or parameter named
# 'vision_tower.embeddings'").
_CHECKPOINT_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "gemma3": (("vision_tower.", "vision_tower.vision_model."),),
}


def save_model_folder(model: Any, out_dir: Path) -> Path:
    """Save a model with the weight names of its family's published checkpoints."""
    model.save_pretrained(out_dir)
    restore_checkpoint_names(Path(out_dir))
    return Path(out_dir)


def checkpoint_name_problems(folder: Path) -> list[str]:
    """Weight names in a model folder that the published checkpoints (and vLLM) spell otherwise."""
    renames = _CHECKPOINT_PREFIXES.get(_model_type(folder), ())
    return [
        name
        for shard in sorted(Path(folder).glob("*.safetensors"))
        for name in _tensor_names(shard)
        if _renamed(name, renames) != name
    ]


def restore_checkpoint_names(folder: Path) -> int:
    """Rename a saved model's weights to the published checkpoints' names; how many changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    renames = _CHECKPOINT_PREFIXES.get(_model_type(folder), ())
    changed: dict[str, str] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        names = {name: _renamed(name, renames) for name in _tensor_names(shard)}
        if all(old == new for old, new in names.items()):
            continue
        with safe_open(str(shard), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {names[name]: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        save_file(tensors, str(shard), metadata=metadata)
        changed.update({old: new for old, new in names.items() if old != new})
    index = folder / "model.safetensors.index.json"
    if changed and index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {changed.get(k, k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return len(changed)


def _renamed(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for bare, published in renames:
        if name.startswith(bare) and not name.startswith(published):
            return published + name[len(bare) :]
    return name


def _model_type(folder: Path) -> str:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return ""
    return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))


def _tensor_names(shard: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as handle:
        return list(handle.keys())
