"""build_dataset: a run's labeled items -> a saved DatasetDict, and its DatasetSummary."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from toolkit.crops.config import CropConfig
from toolkit.dataset.config import DatasetConfig
from toolkit.dataset.rows import answer_text, dataset_features, example_row, item_example
from toolkit.dataset.splits import (
    SPLITS,
    ItemSplit,
    item_splits,
    settings_text,
    shared_photo_groups,
    split_input,
)
from toolkit.errors import CroptuneError
from toolkit.images import ImageLoadError
from toolkit.schema import AttributeSchema
from toolkit.store import RunStore


@dataclass
class DatasetSummary:
    """Examples per split, items left out and why, and image statistics."""

    examples: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    images_per_example: list[int] = field(default_factory=list)
    image_tokens: int = 256
    # Items that share a photo with another item, grouped (each group stays in one split).
    shared_photo_groups: list[list[str]] = field(default_factory=list)
    split: ItemSplit | None = None  # the run's split the examples follow

    def shared_photos(self) -> dict[str, Any]:
        """How many items were grouped by shared photos, in how many groups, the largest."""
        groups = self.shared_photo_groups
        return {
            "items": sum(len(g) for g in groups),
            "groups": len(groups),
            "largest": len(groups[0]) if groups else 0,
            "largest_items": groups[0][:5] if groups else [],
        }

    def stats(self) -> dict[str, Any]:
        """JSON-ready statistics (saved next to the dataset)."""
        counts = self.images_per_example or [0]
        return {
            "examples": self.examples,
            "left_out": self.left_out,
            "shared_photos": self.shared_photos(),
            "images_per_example": {
                "median": statistics.median(counts),
                "mean": round(statistics.fmean(counts), 2),
                "max": max(counts),
            },
            "image_tokens_per_example": {
                "median": statistics.median(counts) * self.image_tokens,
                "max": max(counts) * self.image_tokens,
            },
        }


def _check_train_left(splits: dict[str, str], summary: DatasetSummary) -> None:
    """CroptuneError (nothing written) when the split leaves no item for train."""
    if any(split == "train" for split in splits.values()):
        return
    shared = summary.shared_photos()
    held = {s: list(splits.values()).count(s) for s in ("validation", "test")}
    why = (
        f"{shared['items']} of the {len(splits)} items share photos with another item "
        f"({shared['groups']} group(s), the largest {shared['largest']} items: "
        f"{', '.join(shared['largest_items'])}...), and items sharing a photo stay in one "
        "split so that no photo is in two"
        if shared["items"]
        else f"the catalog has only {len(splits)} items"
    )
    recorded = (
        f" (the split recorded in the run, made by {settings_text(summary.split.settings)}: "
        "add --resplit to split with the new settings)"
        if summary.split is not None and summary.split.status == "recorded"
        else ""
    )
    raise CroptuneError(
        f"no item is left for train (validation {held['validation']}, test {held['test']}): "
        f"{why}. Remove the photos several listings share (stock images, logos) from the "
        f"catalog, or lower validation_ratio/test_ratio{recorded}; nothing was written"
    )


def build_dataset(
    store: RunStore,
    out_dir: Path,
    schema: AttributeSchema,
    config: DatasetConfig,
    crop_config_hash: str | None = None,
    progress: bool = False,
    resplit: bool = False,
) -> DatasetSummary:
    """Write a DatasetDict (train/validation/test) of the run's labeled items to out_dir.

    Items are split by the run's recorded split (item_splits: recorded by the first stage
    that splits the run, with its settings); resplit: split again with config's settings.
    """
    from datasets import Dataset, DatasetDict

    from toolkit.progress import track

    if not progress:
        import datasets

        datasets.disable_progress_bars()
    summary = DatasetSummary(image_tokens=config.image_tokens)
    crop_config_hash = crop_config_hash or store.get_meta("crop_config_hash")
    candidates = {}
    for item in store.items():
        attributes = store.final_attributes(item.item_id)
        if not attributes:
            summary.left_out["no final attributes"] = (
                summary.left_out.get("no final attributes", 0) + 1
            )
            continue
        candidates[item.item_id] = {"item": item, "attributes": attributes,
                                    **split_input(store, item)}  # fmt: skip
    if not candidates:
        raise CroptuneError("no item of this run has final attributes; run `croptune label` first")
    split = item_splits(
        store, config.validation_ratio, config.test_ratio, config.seed, resplit=resplit
    )
    summary.split = split
    splits = {item_id: split.splits[item_id] for item_id in candidates}
    summary.shared_photo_groups = shared_photo_groups(candidates)
    _check_train_left(splits, summary)
    split.record(store)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for item_id in track(list(candidates), "dataset", progress):
        entry = candidates[item_id]
        item = entry["item"]
        try:
            images, prompt = item_example(store, item, schema, config, crop_config_hash)
        except ImageLoadError as exc:
            summary.left_out["image unreadable"] = summary.left_out.get("image unreadable", 0) + 1
            store.log_event("dataset", str(exc), item_id=item_id)
            continue
        # Stored losslessly: `datasets` re-encodes an image that still carries its source
        # format (a JPEG photo, a JPEG crop) in that format at quality 75, which would give
        # training pixels that `predict` (and evaluation of a served model) never sees.
        images = [_lossless(image) for image in images]
        row = example_row(images, prompt, answer_text(entry["attributes"]))
        row.update(item_id=item_id, category=item.category or "")
        rows[splits[item_id]].append(row)
        summary.images_per_example.append(len(images))
    if not rows["train"]:
        raise CroptuneError(
            f"no train example could be built: every train item's images were unreadable "
            f"({summary.left_out.get('image unreadable', 0)} items left out; see "
            "`croptune report`); nothing was written"
        )
    features = dataset_features()
    # Column-wise, so that an empty split still gets its columns.
    dataset = DatasetDict(
        {
            name: Dataset.from_dict(
                {key: [row[key] for row in rows[name]] for key in features}, features=features
            )
            for name in SPLITS
            if rows[name]  # datasets cannot reload an empty saved split
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(out_dir))
    summary.examples = {name: len(rows[name]) for name in SPLITS}
    crop_config = store.get_meta("crop_config")
    facts = {
        "config": config.model_dump(mode="json"),
        "schema": schema.model_dump(mode="json"),
        # Runs cropped by an older croptune recorded the image budget in it too: dropped.
        "crop_config": CropConfig.from_saved(json.loads(crop_config)).model_dump(mode="json")
        if crop_config
        else None,
        # The split the examples follow: the run's recorded one (its settings may differ
        # from config's when the run was split before).
        "split": {**split.settings, "status": split.status},
        "stats": summary.stats(),
    }
    (out_dir / "croptune_dataset.json").write_text(json.dumps(facts, indent=2))
    return summary


def _lossless(image: Image.Image) -> Image.Image:
    """The image without its source format, so `datasets` stores it as PNG (lossless)."""
    return image.copy() if image.format is not None else image
