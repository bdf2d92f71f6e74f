"""The training data: the saved dataset's splits, checked, and their example and image counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.errors import CroptuneError


def load_splits(dataset_dir: Path) -> Any:
    """The DatasetDict saved at dataset_dir, checked to have a non-empty train split and columns."""
    from datasets import DatasetDict, load_from_disk

    if not Path(dataset_dir).is_dir():
        raise CroptuneError(
            f"dataset folder {dataset_dir} does not exist; run `croptune dataset build`"
        )
    try:
        data = load_from_disk(str(dataset_dir))
    except FileNotFoundError as exc:
        raise CroptuneError(f"{dataset_dir} is not a saved dataset: {exc}") from exc
    if not isinstance(data, DatasetDict) or "train" not in data:
        raise CroptuneError(f"dataset {dataset_dir} has no 'train' split")
    missing = {"images", "prompt", "completion"} - set(data["train"].column_names)
    if missing:
        raise CroptuneError(f"dataset {dataset_dir} lacks columns {sorted(missing)}")
    if len(data["train"]) == 0:
        raise CroptuneError(f"dataset {dataset_dir} has an empty 'train' split")
    return data


def dataset_stats(splits: Any) -> dict[str, Any]:
    """Examples per split and images per example, read from Arrow without decoding images."""
    import pyarrow.compute as pc

    stats: dict[str, Any] = {}
    for name, split in splits.items():
        table = split.with_format("arrow")[:]  # honours any indices mapping; no image decoding
        counts = pc.list_value_length(table.column("images")).to_pylist() if len(split) else []
        stats[name] = {
            "examples": len(split),
            "images": sum(counts),
            "images_per_example_min": min(counts, default=0),
            "images_per_example_max": max(counts, default=0),
            "images_per_example_mean": round(sum(counts) / len(counts), 3) if counts else 0.0,
        }
    return stats
