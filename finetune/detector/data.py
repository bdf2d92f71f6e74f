"""The detector's training data: the run's boxes to learn, exported as a YOLO dataset under
the run's one recorded item split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.detector.config import FIT_FILE, HELD_OUT, REGION_CLASS, DetectorConfig
from toolkit.boxes import Box
from toolkit.config import dump_yaml
from toolkit.crops import FUSED_SOURCE
from toolkit.dataset import SPLIT_KEYS
from toolkit.errors import CroptuneError
from toolkit.export import YOLO_SPLITS, DetectionExport, export_labels_yolo
from toolkit.store import RunStore

if TYPE_CHECKING:
    from finetune.detector.train import DetectorSummary


BoxSelector = Callable[[list[Box]], list[Box]]


def box_selector(store: RunStore, config: DetectorConfig) -> tuple[BoxSelector, str]:
    """The function picking one image's training boxes from all its stored boxes, and a
    description of the source used."""
    sources = set(store.box_sources())  # one index seek per source, not a read of every box
    if not sources:
        raise CroptuneError(
            f"run {store.run_dir} has no boxes to train a detector on; label it with a box "
            "teacher (role: boxes or both) first"
        )
    teachers = sorted(sources - {FUSED_SOURCE})
    if config.boxes == FUSED_SOURCE:
        # The same boxes crops are cut from (toolkit.crops.crop_boxes): fused when fused.
        keep = {FUSED_SOURCE} if FUSED_SOURCE in sources else set(teachers)
        described = FUSED_SOURCE if FUSED_SOURCE in sources else ", ".join(teachers)
    elif config.boxes in teachers:
        keep, described = {config.boxes}, config.boxes
    else:
        raise CroptuneError(
            f"run {store.run_dir} has no boxes from {config.boxes!r}; its box sources are "
            f"{sorted(sources)} (use boxes=fused or one of these)"
        )

    def select(boxes: list[Box]) -> list[Box]:
        chosen = [b for b in boxes if b.source in keep and b.is_valid()]
        if config.classes == REGION_CLASS:
            return [replace(b, label=REGION_CLASS) for b in chosen]
        return chosen

    return select, described


def detector_dataset(
    store: RunStore, out_dir: Path, config: DetectorConfig, summary: DetectorSummary
) -> DetectionExport:
    """Export the boxes to learn as a YOLO dataset split by the run's one item split.

    The split is the run store's recorded one (`toolkit.dataset.splits.item_splits`), so no
    item the student is validated or tested on is trained on; config's validation_ratio, test_ratio
    and seed make it only when the run has none recorded yet. Fills summary's box source,
    classes, split and items.
    """
    select, summary.box_source = box_selector(store, config)
    export = export_labels_yolo(
        store, out_dir, select=select, **{key: getattr(config, key) for key in SPLIT_KEYS}
    )
    summary.skipped = export.skipped
    summary.classes = export.classes
    summary.shared_photos, summary.merged_boxes = export.shared_photos, export.merged_boxes
    summary.split, summary.split_status = export.split_settings, export.split_status
    summary.splits = export.split_counts()
    exported = {item_id for photo in export.photos for item_id, _ in photo.owners}
    summary.train_items = sorted(i for i in exported if export.item_splits[i] == "train")
    summary.held_out_items = sorted(i for i in exported if export.item_splits[i] in HELD_OUT)
    return export


def write_fit_yaml(dataset_dir: Path, classes: list[str]) -> Path:
    """The data file ultralytics trains with: train = the train split, val = the held-out.

    ultralytics requires a val key and validates on it once at the end (numbers croptune
    does not report); with nothing held out that is the train split.
    """
    present = {path.name for path in (dataset_dir / "images").iterdir() if path.is_dir()}
    held = [f"images/{YOLO_SPLITS[s]}" for s in HELD_OUT if YOLO_SPLITS[s] in present]
    data = {
        "path": str(dataset_dir.resolve()),
        "train": f"images/{YOLO_SPLITS['train']}",
        "val": held or f"images/{YOLO_SPLITS['train']}",
        "nc": len(classes),
        "names": list(classes),
    }
    fit_yaml = dataset_dir / FIT_FILE
    fit_yaml.write_text(dump_yaml(data), "utf-8")
    return fit_yaml
