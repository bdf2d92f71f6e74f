"""A bundle's croptune.yaml as `croptune export` writes it, for tests of what reads it."""

from __future__ import annotations

from pathlib import Path

import yaml

from toolkit.crops import CropConfig
from toolkit.schema import extraction_prompt, load_schema


def manifest_data(
    *,
    base_model: str = "croptune:tiny",
    crop: CropConfig | None = None,
    strategy: str = "originals+crops",
    budget: int = 9,
    box_source: str = "none",
    **extra: object,
) -> dict:
    """A croptune.yaml's data with every key predict reads (compliance schema, 16 image tokens)."""
    schema = load_schema("compliance")
    crop = crop if crop is not None else CropConfig()
    return {
        "croptune_version": "test",
        "base_model": base_model,
        "lora_name": "croptune-tiny",
        "prompt": {
            "instructions": extraction_prompt(schema),
            "originals_max_side": 1024,
            "decoding": {"temperature": 0, "max_new_tokens": 64},
        },
        "schema": schema.model_dump(mode="json"),
        "crop": crop.model_dump(mode="json"),
        "dataset": {"strategy": strategy, "max_image_side": 1024},
        "image_budget": budget,
        "image_tokens": 16,
        "box_source": box_source,
        "detector": None,
        **extra,
    }


def write_manifest(folder: Path, data: dict) -> Path:
    """folder/croptune.yaml holding data (keys in their order); the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "croptune.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder
